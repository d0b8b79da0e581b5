"""EWC and online EWC: a quadratic penalty keeps parameters near their values after past updates,
weighted by each parameter's diagonal Fisher information.

EWC: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks", with one
penalty per past update, ``λ Σ_t Σ_k F_t,k (θ_k - θ*_t,k)²``. A sum of quadratics is one
quadratic: it equals ``λ Σ_k A_k (θ_k - μ_k)² + const`` with ``A = Σ_t F_t`` and the
Fisher-weighted anchor ``μ = Σ_t F_t θ*_t / A``. We store ``A`` and ``μ`` (memory O(#params),
not O(#updates × #params)) and drop the constant: gradients are exactly those of the original.

Online EWC: Schwarz et al. 2018, "Progress & Compress"; one running Fisher ``F <- γ F + F_new``
and one anchor, the parameters after the latest update.

Penalty scale follows Mammoth (``λ Σ F (θ - θ*)²``, no 1/2; Kirkpatrick writes λ/2), and so
does the default Fisher estimate (``fisher=mammoth``: each row's squared gradient at its label,
weighted by the probability the model gives that label), so that Mammoth's best λ means the same
penalty here. ``fisher=true`` (labels sampled from the model: the Fisher of EWC's Laplace
argument) and ``fisher=empirical`` (the observed labels, unweighted) are the options; see
``ricordo.methods.fisher`` and reference methods.md §9.2 (Kunstner et al. 2019) for how they
differ. New output rows of a grown head get zero Fisher, so new classes are unregularised.

Defaults: Mammoth's best arguments for seq-MNIST (utils/best_args.py; no buffer) for online EWC
(``ewc_on``): ``e_lambda`` 90, ``gamma`` 1. Mammoth has no offline EWC, and Kirkpatrick et al.
state no lambda for their MNIST experiments and published no code, so ``ewc`` takes the same
lambda: with gamma 1 online EWC sums the Fishers as EWC does (it differs in keeping one anchor).
The λ belongs with Mammoth's Fisher estimate, which is therefore the default: the true Fisher is
larger (on digits after one class-incremental update, 6 times at the output layer's largest entry),
and with λ 90 it makes SGD diverge on digits at --lr 0.03 to 0.1 (the update stops with
TrainingDivergedError); with ``fisher=true`` scale λ down. Even so the penalty is stiff: on digits,
updates of 3 epochs at lr 0.05 diverged (10 did not). Mammoth trained at lr 0.03, batch 10, one
epoch; ours are UpdateConfig's. (The defaults were seq-CIFAR-10's λ 10 with the true Fisher.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.data.dataset import ArrayDataset
from ricordo.data.lazy import PASS_ROWS, LazyDataset, batches_in_order
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext, register
from ricordo.methods.fisher import (
    FISHER_KINDS,
    diagonal_fisher,
    grow_to,
    quadratic_penalty,
    split_state,
    unwrap,
)

if TYPE_CHECKING:
    from ricordo.memory import TensorMemory


@dataclass(frozen=True)
class EWCParams:
    ewc_lambda: float = field(
        default=90.0,
        metadata={"doc": "penalty weight; Mammoth best for ewc_on (e_lambda), seq-MNIST"},
    )
    fisher: str = field(
        default="mammoth",
        metadata={
            "doc": (
                '"mammoth" (observed labels, each weighted by its probability: Mammoth\'s ewc_on, '
                'which its λ was tuned with), "true" (sampled labels, the Fisher) or "empirical" '
                "(observed labels)."
            )
        },
    )
    fisher_samples: int | None = field(
        default=None, metadata={"doc": "chunk rows used to estimate the Fisher; None = all"}
    )

    def __post_init__(self) -> None:
        if not self.ewc_lambda >= 0:
            raise ConfigError(f"ewc_lambda={self.ewc_lambda} must be >= 0")
        if self.fisher not in FISHER_KINDS:
            raise ConfigError(f"fisher={self.fisher!r} must be one of {FISHER_KINDS}")
        if self.fisher_samples is not None and self.fisher_samples < 1:
            raise ConfigError(f"fisher_samples={self.fisher_samples} must be >= 1 or None")


@dataclass(frozen=True)
class OnlineEWCParams(EWCParams):
    gamma: float = field(
        default=1.0,
        metadata={"doc": "decay of the running Fisher (Schwarz et al.); Mammoth best, seq-MNIST"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma={self.gamma} must be in [0, 1]")


@register
class EWC(Method):
    name = "ewc"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = EWCParams
    summary = "Quadratic penalty to past parameters weighted by the summed (true) Fisher."
    defaults_from = (
        "Mammoth's best arguments for online EWC (ewc_on), seq-MNIST (no buffer), with its Fisher "
        "estimate; Mammoth has no offline EWC and the paper gives no MNIST lambda"
    )
    online = False
    supports_lazy_data = True

    def __init__(self, params: EWCParams, memory: TensorMemory | None) -> None:
        super().__init__(params, memory)
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        # Move to the device and zero-pad to a grown output layer.
        for name, p in unwrap(ctx.model).named_parameters():
            if name in self.fisher:
                self.fisher[name] = grow_to(self.fisher[name].to(p.device), p.shape)
                self.anchor[name] = grow_to(self.anchor[name].to(p.device), p.shape)

    def penalty(self, ctx: UpdateContext) -> Tensor:
        return self.params.ewc_lambda * quadratic_penalty(ctx.model, self.fisher, self.anchor)

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        loss = F.cross_entropy(ctx.logits(batch.x), batch.y)
        return loss + self.penalty(ctx) if self.fisher else loss

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        if self.params.fisher_samples is not None and self.params.fisher_samples < len(data):
            data = data.subset(
                torch.randperm(len(data), generator=ctx.generator)[: self.params.fisher_samples]
            )
        new = self._fisher(data, ctx)
        for name, p in unwrap(ctx.model).named_parameters():
            if name not in new:
                continue
            theta = p.detach().float().clone()
            old = self.fisher.get(name, torch.zeros_like(theta))
            if self.online:
                self.fisher[name] = self.params.gamma * old + new[name]
                self.anchor[name] = theta
            else:
                # Fisher-weighted mean of the anchors, written so it is exactly θ where old = 0.
                total = old + new[name]
                shift = old * (self.anchor.get(name, theta) - theta) / total.clamp_min(1e-30)
                self.fisher[name], self.anchor[name] = total, theta + shift

    def _fisher(self, data: ArrayDataset | LazyDataset, ctx: UpdateContext) -> dict[str, Tensor]:
        """The chunk's diagonal Fisher; a lazy chunk is read in pieces and their means are
        weighted by their rows (the same mean, summed in another order)."""

        def fisher(x: Tensor, y: Tensor) -> dict[str, Tensor]:
            return diagonal_fisher(
                ctx.model,
                x,
                y,
                kind=self.params.fisher,
                generator=ctx.generator,
                batch_size=ctx.config.batch_size,
            )

        if not isinstance(data, LazyDataset):
            return fisher(data.x, data.y)
        total: dict[str, Tensor] = {}
        for x, y in batches_in_order(data, PASS_ROWS, workers=ctx.config.data_workers):
            for name, value in fisher(x, y).items():
                total[name] = total.get(name, 0) + value * len(y)
        return {name: value / len(data) for name, value in total.items()}

    def state_tensors(self) -> dict[str, Tensor]:
        return {
            **{f"fisher.{n}": t for n, t in self.fisher.items()},
            **{f"anchor.{n}": t for n, t in self.anchor.items()},
        }

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        self.fisher, self.anchor = split_state(tensors, "fisher", "anchor")


@register
class OnlineEWC(EWC):
    name = "online-ewc"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = OnlineEWCParams
    summary = "EWC with one γ-decayed running Fisher anchored at the latest parameters."
    defaults_from = "Mammoth's best arguments for ewc_on, seq-MNIST (no buffer), with its Fisher"
    online = True
