"""Synaptic Intelligence (SI): a quadratic penalty weighted by each parameter's contribution to
the drop of the loss along its training trajectory.

Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence". During an update
every step adds ``ω_k += -g_k Δθ_k`` (the gradient the optimizer stepped with, read in
``before_step``, times the parameter change, read in ``after_step``: a path integral of the loss
decrease). At the end ``Ω_k += ω_k / (Δ_k² + ξ)`` with ``Δ_k`` the parameter's total change in
this update, and the anchor moves to the current parameters. Penalty: ``c Σ_k Ω_k (θ_k - θ*_k)²``
(Mammoth's scale, no 1/2). ``ω`` is not clipped, so a parameter that mostly climbed the loss
(momentum overshoot, the penalty pulling it) can get a slightly negative importance, as in the
paper. Frozen parameters never move and keep zero importance; new output rows of a grown head
start at zero. With fp16 mixed precision the gradients read are loss-scaled: use bf16 or fp32.

Defaults: Mammoth's best arguments for seq-MNIST (utils/best_args.py; no buffer): ``c`` 1.0 and
``xi`` 0.9, on Mammoth's penalty scale, which is ours. (The defaults were seq-CIFAR-10's c 0.5,
xi 1.0.) Mammoth trained at lr 0.1, batch 10, one epoch; ours are UpdateConfig's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext, register
from ricordo.methods.fisher import grow_to, quadratic_penalty, split_state, unwrap

if TYPE_CHECKING:
    from ricordo.memory import TensorMemory


@dataclass(frozen=True)
class SIParams:
    c: float = field(
        default=1.0,
        metadata={
            "doc": ("penalty weight; Mammoth best, seq-MNIST (Zenke et al.: 0.1 on split MNIST)")
        },
    )
    xi: float = field(
        default=0.9, metadata={"doc": "damping ξ of Ω's denominator; Mammoth best, seq-MNIST"}
    )

    def __post_init__(self) -> None:
        if not self.c >= 0:
            raise ConfigError(f"c={self.c} must be >= 0")
        if not self.xi > 0:
            raise ConfigError(f"xi={self.xi} must be > 0")


@register
class SynapticIntelligence(Method):
    name = "si"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = SIParams
    summary = (
        "Quadratic penalty weighted by each parameter's path-integral contribution to the loss."
    )
    defaults_from = "Mammoth's best arguments, seq-MNIST (no buffer)"
    supports_lazy_data = True

    def __init__(self, params: SIParams, memory: TensorMemory | None) -> None:
        super().__init__(params, memory)
        self.importance: dict[str, Tensor] = {}  # Ω, summed over past updates
        self.anchor: dict[str, Tensor] = {}  # θ* after the latest update
        self.omega: dict[str, Tensor] = {}  # ω of the running update
        self.start: dict[str, Tensor] = {}
        self._step: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (gradient, θ before step)

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        for name, p in unwrap(ctx.model).named_parameters():
            if name in self.importance:
                self.importance[name] = grow_to(self.importance[name].to(p.device), p.shape)
                self.anchor[name] = grow_to(self.anchor[name].to(p.device), p.shape)
            self.omega[name] = torch.zeros_like(p, dtype=torch.float32)
            self.start[name] = p.detach().float().clone()

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        loss = F.cross_entropy(ctx.logits(batch.x), batch.y)
        if not self.importance:
            return loss
        return loss + self.params.c * quadratic_penalty(ctx.model, self.importance, self.anchor)

    def before_step(self, batch: Batch, ctx: UpdateContext) -> None:
        self._step = {
            name: (p.grad.detach().float().clone(), p.detach().float().clone())
            for name, p in unwrap(ctx.model).named_parameters()
            if p.grad is not None
        }

    def after_step(self, batch: Batch, ctx: UpdateContext) -> None:
        for name, p in unwrap(ctx.model).named_parameters():
            if name in self._step:
                g, before = self._step[name]
                self.omega[name] -= g * (p.detach().float() - before)
        self._step = {}

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        for name, p in unwrap(ctx.model).named_parameters():
            theta = p.detach().float().clone()
            change = (theta - self.start[name]).pow(2) + self.params.xi
            previous = self.importance.get(name, torch.zeros_like(theta))
            self.importance[name] = previous + self.omega[name] / change
            self.anchor[name] = theta
        self.omega, self.start = {}, {}

    def state_tensors(self) -> dict[str, Tensor]:
        return {
            **{f"importance.{n}": t for n, t in self.importance.items()},
            **{f"anchor.{n}": t for n, t in self.anchor.items()},
        }

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        self.importance, self.anchor = split_state(tensors, "importance", "anchor")
