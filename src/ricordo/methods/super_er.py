"""Super-ER: experience replay combined with DER, CLS-ER, POD and shrink-and-perturb.

Renate's experimental Super-ER (Wistuba et al. 2023, "Renate: A Library for Real-World Continual
Learning"). Each step is ER (cross-entropy on the new rows plus the replayed rows, which is
Renate's memory cross-entropy, der_beta=1) plus, on the replayed rows: DER's MSE to the logits
stored with the rows (Buzzega et al. 2020), CLS-ER's consistency to the plastic/stable EMA
models (Arani et al. 2022) and POD to the model frozen at the start of the update (Douillard et
al. 2020). Before every update after the first, the weights are shrunk and perturbed (Ash and
Adams 2020). ``logit_ema < 1`` moves the stored logits of replayed rows toward the current ones
(Renate's ema_memory_update_gamma, which crashed there). A zero weight switches its part off, so
with all of them off (and shrink 1, perturb 0) this is ER step for step. Prediction uses the
working model, as in Renate: the EMA models are only teachers here. Their decays adapt to short
updates as in ``cls-er`` (``adapt_decays``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, UpdateContext, register
from ricordo.methods.cls_er import CLSERParams
from ricordo.methods.components import (
    EMAModels,
    PooledDistillation,
    check_unit,
    check_weight,
    shrink_perturb,
    stored_logit_mse,
)
from ricordo.methods.der import DarkExperienceReplay
from ricordo.methods.pod_er import PODERParams

if TYPE_CHECKING:
    from ricordo.data.dataset import ArrayDataset
    from ricordo.memory import TensorMemory


@dataclass(frozen=True)
class SuperERParams(PODERParams, CLSERParams):
    # Defaults: Renate's Super-ER (der_alpha 1, cls_alpha 0.1 with CLS-ER's EMA settings,
    # pod_alpha 1 spatial normalised, sp_shrink_factor 0.95, sp_sigma 0.001, gamma 1).
    logit_weight: float = 1.0  # DER's logit MSE (Renate: der_alpha)
    shrink: float = 0.95  # shrink-and-perturb factor before each update (sp_shrink_factor)
    perturb: float = 0.001  # std of its Gaussian noise (sp_sigma)
    logit_ema: float = 1.0  # stored logits <- g * stored + (1 - g) * current; 1 = keep them

    def __post_init__(self) -> None:
        CLSERParams.__post_init__(self)
        PODERParams.__post_init__(self)
        check_weight("logit_weight", self.logit_weight)
        check_weight("perturb", self.perturb)
        check_unit("logit_ema", self.logit_ema)
        if not (isinstance(self.shrink, int | float) and 0 < self.shrink <= 1):
            raise ConfigError(f"shrink={self.shrink!r} must be in (0, 1]")


@register
class SuperExperienceReplay(DarkExperienceReplay):
    name = "super-er"
    Params = SuperERParams
    summary = "ER plus DER logit MSE, CLS-ER consistency, POD and shrink-and-perturb (Renate)."

    def __init__(self, params: Any, memory: TensorMemory | None) -> None:
        super().__init__(params, memory)
        self.ema, self.pod = EMAModels(), PooledDistillation()

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        super().begin_update(data, ctx)  # DER: stored rows get targets for new output columns
        p, trained = self.params, self.memory is not None and len(self.memory) > 0
        if p.consistency_weight > 0:
            self.ema.begin(ctx.model)
        if p.pod_weight > 0:
            self.pod.begin(ctx.model, snapshot=trained)
        if ctx.update_index > 0 and (p.shrink != 1 or p.perturb > 0):
            shrink_perturb(ctx.model, p.shrink, p.perturb, ctx.generator)

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        p, memory, n = self.params, self.memory, len(batch.y)
        assert memory is not None
        if len(memory) == 0:
            logits = ctx.model(batch.x)
            self._inserted = logits.detach().float()
            return F.cross_entropy(ctx.mask_unseen(logits), batch.y)
        index = memory.sample_indices(p.memory_batch_size or ctx.config.batch_size)
        rows = {k: v.to(ctx.device) for k, v in memory.get(index).items()}
        x, y = ctx.augment(rows["x"]), rows["y"]
        both = torch.cat([batch.x, x])
        if p.pod_weight > 0:
            logits, pod = self.pod.logits_and_loss(
                ctx.model, both, n, p.pod_pooling, p.pod_normalize
            )
        else:
            logits, pod = ctx.model(both), None
        # Raw logits are stored and regressed; --mask-unseen shapes only the cross-entropy.
        self._inserted = logits[:n].detach().float()
        loss = F.cross_entropy(ctx.mask_unseen(logits), torch.cat([batch.y, y]))
        replayed = logits[n:]
        if p.logit_weight > 0:
            loss = loss + p.logit_weight * stored_logit_mse(replayed, rows["logits"], rows["width"])
        if p.consistency_weight > 0:
            loss = loss + p.consistency_weight * F.mse_loss(
                replayed, self.ema.target(ctx.model, x, y)
            )
        if pod is not None:
            loss = loss + p.pod_weight * pod
        if p.logit_ema < 1:
            self._refresh_logits(index, rows, replayed.detach().float())
        return loss

    def _refresh_logits(self, index: Tensor, rows: dict[str, Tensor], current: Tensor) -> None:
        """Move the stored logits of the replayed rows toward the current ones (stored columns)."""
        assert self.memory is not None
        g, stored, k = self.params.logit_ema, rows["logits"].clone(), current.shape[1]
        mask = torch.arange(k, device=current.device) < rows["width"][:, None]
        stored[:, :k] = torch.where(mask, g * stored[:, :k] + (1 - g) * current, stored[:, :k])
        self.memory.update_field("logits", index, stored)

    def after_step(self, batch: Batch, ctx: UpdateContext) -> None:
        super().after_step(batch, ctx)  # DER: store the new rows with their logits
        if self.params.consistency_weight > 0:
            self.ema.step(ctx.model, ctx.generator, *self.params.ema_schedule(ctx.total_steps))

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        super().end_update(data, ctx)
        self.pod.end()
        self.ema.to("cpu")

    def state_tensors(self) -> dict[str, Tensor]:
        return self.ema.state_tensors()

    def state_json(self) -> dict[str, Any]:
        return {"ema_steps": self.ema.steps}

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        self.ema.load_state(tensors, int(data.get("ema_steps", 0)))
