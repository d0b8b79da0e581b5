"""Learning without Forgetting (LwF): distil the previous model's outputs on the new data.

Li & Hoiem 2016, "Learning without Forgetting". At the start of an update the current model is
frozen (a deep copy in eval mode); each step adds ``alpha * KL(softmax(old/T) || softmax(new/T))``
over the outputs of the classes seen in earlier updates to the cross-entropy on the new chunk.
Like the paper and Avalanche's LwFPlugin the KL term is not multiplied by T² (Hinton's
gradient-scale correction); raise ``alpha`` for the same effect. The paper's warm-up phase
(training only the new head first) is not done. No memory: the old model is rebuilt from the
current weights at each update, so the saved state is just the list of old classes.

Defaults: Mammoth's best arguments for seq-MNIST (utils/best_args.py; LwF keeps no buffer, so the
entry has no buffer size): ``alpha`` 1 and ``softmax_temp`` 2, the paper's lambda_o = 1 and T = 2.
Mammoth's term is the cross-entropy between the tempered distributions, which differs from this KL
by the old model's entropy, a constant: the same gradients, so its alpha carries over. It trained
at lr 0.03, batch 10, one epoch, weight decay 5e-4; ours are UpdateConfig's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext, register
from ricordo.models.head import unwrap

if TYPE_CHECKING:
    from ricordo.memory import TensorMemory


@dataclass(frozen=True)
class LwFParams:
    alpha: float = field(
        default=1.0,
        metadata={"doc": "distillation weight; Mammoth best, seq-MNIST (= the paper's λ_o)"},
    )
    temperature: float = field(
        default=2.0,
        metadata={"doc": "softmax temperature T; Mammoth best, seq-MNIST (= the paper's)"},
    )

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ConfigError(f"alpha={self.alpha} must be >= 0")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0")


@register
class LwF(Method):
    name = "lwf"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = LwFParams
    summary = "Distil the previous model's old-class outputs on the new data (no memory)."
    defaults_from = "Mammoth's best arguments, seq-MNIST (no buffer)"
    supports_lazy_data = True

    def __init__(self, params: LwFParams, memory: TensorMemory | None) -> None:
        super().__init__(params, memory)
        self.old_classes: list[int] = []
        self.old_model: nn.Module | None = None  # frozen snapshot, during an update only
        self._old_index = torch.empty(0, dtype=torch.int64)

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        if self.old_classes:
            self.old_model = copy.deepcopy(unwrap(ctx.model)).eval().requires_grad_(False)
            self._old_index = torch.tensor(self.old_classes, device=ctx.device)

    def distillation(self, logits: Tensor, x: Tensor) -> Tensor:
        """KL from the old model's to the new model's tempered old-class distribution."""
        assert self.old_model is not None
        with torch.no_grad():
            old = self.old_model(x).index_select(1, self._old_index).float()
        t = self.params.temperature
        log_p = F.log_softmax(logits.index_select(1, self._old_index).float() / t, dim=1)
        return F.kl_div(
            log_p, F.log_softmax(old / t, dim=1), reduction="batchmean", log_target=True
        )

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        logits = ctx.model(batch.x)
        # --mask-unseen hides the old classes from the cross-entropy, not from the distillation.
        loss = F.cross_entropy(ctx.mask_unseen(logits), batch.y)
        if self.old_model is None:
            return loss
        return loss + self.params.alpha * self.distillation(logits, batch.x)

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        self.old_model = None
        self.old_classes = list(ctx.seen_classes)

    def state_json(self) -> dict[str, Any]:
        return {"old_classes": self.old_classes}

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        self.old_classes = [int(c) for c in data.get("old_classes", [])]
