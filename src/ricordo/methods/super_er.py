"""Super-ER: experience replay combining DER, CLS-ER, POD and shrink-and-perturb, as Renate does.

Renate's experimental Super-ER (Wistuba et al. 2023, "Renate: A Library for Real-World Continual
Learning"; awslabs/Renate, ``SuperExperienceReplayLearner``). The memory is filled from the
stream of training batches (reservoir, or --memory-policy); each row is stored with the logits
and the POD features that the forward pass of its training step gave it. Each step adds to the
cross-entropy on the new batch Renate's loss components, in its order, each on a replayed batch
drawn independently from the memory:

- ``logit_weight`` * DER's MSE between the current logits and the stored ones (Buzzega et al.
  2020) on batch 1;
- ``replay_weight`` * cross-entropy on batch 2;
- ``consistency_weight`` * CLS-ER's MSE to the logits of whichever EMA model (plastic or stable)
  gives the true class the higher probability (Arani et al. 2022), also on batch 2;
- ``pod_weight`` * PODNet's pooled distance between the current features and the stored ones
  (Douillard et al. 2020; see ``pod-er``) on batch 3;

and divides the sum by ``1 + logit_weight + replay_weight + consistency_weight + pod_weight``
(Renate's loss normalisation; plain cross-entropy while the memory is empty). Before every
update, the first included, the weights are shrunk and perturbed, ``p <- shrink * p + perturb *
N(0, 1)`` (Ash and Adams 2020, Renate's ``on_train_start``); rows stored by older versions of
this method, which lack POD features, get them from the model after that. After each step the
EMA models are updated at random with decay ``min(1 - 1/(t+1), decay)``, as in CLS-ER.
Prediction uses the working model, as in Renate: the EMA models are only teachers here. A zero
weight switches its term off and draws no batch for it.

``logit_ema < 1`` moves the stored logits of every replayed row toward its current logits
(Renate's ema_memory_update_gamma, which crashed there). ``adapt_decays`` (ours, off) caps the
EMA decays for short updates as in ``cls-er``. The new and replayed rows share one forward pass
(Renate runs one per batch; they differ only in batch-norm statistics).

Defaults: Renate's (``SER_DER_ALPHA`` 1, ``SER_DER_BETA`` 1, ``SER_CLS_ALPHA`` 0.1 with EMA
weights 0.999 / 0.999 and update probabilities 0.7 stable / 0.9 plastic, ``SER_POD_ALPHA`` 1
spatial normalised, ``SER_SP_SHRINK_FACTOR`` 0.95, ``SER_SP_SIGMA`` 0.001,
``EMA_MEMORY_UPDATE_GAMMA`` 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.engine.distributed import unshard
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, UpdateContext, register
from ricordo.methods.cls_er import CLSERParams
from ricordo.methods.components import (
    CachedPOD,
    EMAModels,
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
    # Defaults: Renate's Super-ER (awslabs/Renate, defaults.py SER_*), restated here so that
    # changes to the cls-er and pod-er defaults do not change them.
    logit_weight: float = field(
        default=1.0, metadata={"doc": "DER's logit MSE on replayed batch 1 (Renate: der_alpha)"}
    )
    replay_weight: float = field(
        default=1.0, metadata={"doc": "cross-entropy on replayed batch 2 (Renate: der_beta)"}
    )
    consistency_weight: float = field(
        default=0.1, metadata={"doc": "CLS-ER's consistency MSE on batch 2 (Renate: cls_alpha)"}
    )
    plastic_rate: float = field(
        default=0.9, metadata={"doc": "probability of an EMA update of the plastic model per step"}
    )
    plastic_decay: float = field(default=0.999, metadata={"doc": "its EMA decay"})
    stable_rate: float = field(default=0.7, metadata={"doc": "the same for the stable model"})
    stable_decay: float = field(default=0.999, metadata={"doc": "alpha_s"})
    adapt_decays: bool = field(
        default=False, metadata={"doc": "ours: cap the decays for short updates (see cls-er)"}
    )
    pod_weight: float = field(
        default=1.0, metadata={"doc": "POD on replayed batch 3 (Renate: pod_alpha)"}
    )
    pod_pooling: str = field(
        default="spatial",
        metadata={"doc": "spatial, width, height, channel, gap or pixel (4-D maps)"},
    )
    pod_normalize: bool = field(
        default=True, metadata={"doc": "L2-normalise pooled features before the distance"}
    )
    shrink: float = field(
        default=0.95,
        metadata={"doc": "shrink-and-perturb factor before each update (sp_shrink_factor)"},
    )
    perturb: float = field(default=0.001, metadata={"doc": "std of its Gaussian noise (sp_sigma)"})
    logit_ema: float = field(
        default=1.0,
        metadata={"doc": "stored logits <- g * stored + (1 - g) * current; 1 = keep them"},
    )

    def __post_init__(self) -> None:
        CLSERParams.__post_init__(self)
        PODERParams.__post_init__(self)
        check_weight("logit_weight", self.logit_weight)
        check_weight("replay_weight", self.replay_weight)
        check_weight("perturb", self.perturb)
        check_unit("logit_ema", self.logit_ema)
        if not (isinstance(self.shrink, int | float) and 0 < self.shrink <= 1):
            raise ConfigError(f"shrink={self.shrink!r} must be in (0, 1]")

    def normalizer(self) -> float:
        """Renate's loss normalisation: 1 (the new batch) plus every component's weight."""
        weights = (self.logit_weight, self.replay_weight, self.consistency_weight, self.pod_weight)
        return 1.0 + sum(weights)


@register
class SuperExperienceReplay(DarkExperienceReplay):
    name = "super-er"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = SuperERParams
    summary = "ER plus DER logit MSE, CLS-ER consistency, POD and shrink-and-perturb (Renate)."
    memory_note = "rows with their logits and features"
    defaults_from = "Renate's defaults (renate.defaults: SER_*, EMA_MEMORY_UPDATE_GAMMA)"

    def __init__(self, params: Any, memory: TensorMemory | None) -> None:
        super().__init__(params, memory)
        self.ema, self.pod = EMAModels(), CachedPOD()
        self._features: list[Tensor] | None = None  # POD features of the last new batch

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        super().begin_update(data, ctx)  # DER: stored rows get targets for new output columns
        p = self.params
        if p.consistency_weight > 0:
            self.ema.begin(ctx.model)  # before shrinking: the teachers keep the trained weights
        if p.shrink != 1 or p.perturb > 0:
            shrink_perturb(ctx.model, p.shrink, p.perturb, ctx.generator)
        self.pod.begin(ctx.model, self.memory, p.pod_pooling, 4 * ctx.config.batch_size)

    def _draw(self, ctx: UpdateContext) -> dict[str, Tensor]:
        """A replayed batch on the training device, with its memory slots under ``index``."""
        assert self.memory is not None
        index = self.memory.sample_indices(self.params.memory_batch_size or ctx.config.batch_size)
        rows = {k: v.to(ctx.device) for k, v in self.memory.get(index).items()}
        rows["x"] = ctx.augment(rows["x"])
        # Drawn and augmented whole on every rank, then this rank's share of every field
        # (--strategy ddp, as in ER); the slots stay whole: every rank refreshes all of them.
        rows = {k: ctx.shard(v) for k, v in rows.items()}
        rows["index"] = index
        return rows

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        p, memory, n = self.params, self.memory, len(batch.y)
        assert memory is not None
        wanted = {  # Renate's components in order; CLS-ER's consistency reuses the "ce" batch
            "mse": p.logit_weight > 0,
            "ce": p.replay_weight > 0 or p.consistency_weight > 0,
            "pod": p.pod_weight > 0,
        }
        drawn = {k: self._draw(ctx) for k, on in wanted.items() if on and len(memory) > 0}
        raw, features = self.pod.forward(
            ctx.model, torch.cat([batch.x, *(r["x"] for r in drawn.values())])
        )
        # Raw logits are stored and regressed; --mask-unseen shapes only the cross-entropies.
        logits = ctx.mask_unseen(raw)
        self._inserted = raw[:n].detach().float()
        self._features = [f[:n].detach() for f in features]
        loss = F.cross_entropy(logits[:n], batch.y)
        if not drawn:
            return loss
        spans, start = {}, n
        for key, rows in drawn.items():
            spans[key] = slice(start, start + len(rows["y"]))
            start = spans[key].stop
        if "mse" in drawn:
            rows, rs = drawn["mse"], spans["mse"]
            loss = loss + p.logit_weight * stored_logit_mse(raw[rs], rows["logits"], rows["width"])
        if "ce" in drawn:
            rows, rs = drawn["ce"], spans["ce"]
            if p.replay_weight > 0:
                loss = loss + p.replay_weight * F.cross_entropy(logits[rs], rows["y"])
            if p.consistency_weight > 0:
                target = self.ema.target(ctx.model, rows["x"], rows["y"])
                loss = loss + p.consistency_weight * F.mse_loss(raw[rs], target)
        if "pod" in drawn:
            rows, rs = drawn["pod"], spans["pod"]
            pod = self.pod.loss([f[rs] for f in features], rows, p.pod_normalize)
            loss = loss + p.pod_weight * pod
        if p.logit_ema < 1:
            world = ctx.world_size
            for key, rows in drawn.items():
                current = unshard(raw[spans[key]].detach().float(), len(rows["index"]), world)
                self._refresh_logits(rows["index"], current)
        return loss / p.normalizer()

    def _refresh_logits(self, index: Tensor, current: Tensor) -> None:
        """Move the stored logits of replayed rows toward the current ones (stored columns);
        read at refresh time, so a row replayed in two batches of a step moves twice, as in
        Renate."""
        assert self.memory is not None
        rows = self.memory.get(index)
        g, stored, k = self.params.logit_ema, rows["logits"].clone(), current.shape[1]
        current = current.to(stored.device)
        mask = torch.arange(k, device=stored.device) < rows["width"][:, None]
        stored[:, :k] = torch.where(mask, g * stored[:, :k] + (1 - g) * current, stored[:, :k])
        self.memory.update_field("logits", index, stored)

    def _row_extras(self) -> dict[str, Tensor]:
        assert self._features is not None
        features, self._features = self._features, None
        return self.pod.row_fields(features)

    def after_step(self, batch: Batch, ctx: UpdateContext) -> None:
        if self._features is not None:  # --strategy ddp: every rank's features, global order
            self._features = [unshard(f, len(batch.y), ctx.world_size) for f in self._features]
        super().after_step(batch, ctx)  # DER: store the new rows with their logits and features
        if self.params.consistency_weight > 0:
            self.ema.step(ctx.model, ctx.generator, *self.params.ema_schedule(ctx.total_steps))

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        super().end_update(data, ctx)
        self._features = None
        self.pod.end()
        self.ema.to("cpu")

    def state_tensors(self) -> dict[str, Tensor]:
        return self.ema.state_tensors()

    def state_json(self) -> dict[str, Any]:
        return {"ema_steps": self.ema.steps, "pod_pooling": self.pod.pooling}

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        self.ema.load_state(tensors, int(data.get("ema_steps", 0)))
        self.pod.pooling = data.get("pod_pooling")
