"""POD-ER: experience replay plus PODNet's pooled-outputs distillation on the replayed rows.

Douillard et al. 2020, "PODNet: Pooled Outputs Distillation for Small-Tasks Incremental Learning"
(ECCV), as an ER component in Renate (Wistuba et al. 2023). At the start of every update after
the first, the model's weights are frozen as a snapshot; each step compares the intermediate
features of the working model and of the snapshot on the replayed rows: 4-D feature maps are
squared and pooled (default POD-spatial: sums over width and over height, concatenated), other
features are flattened; rows are L2-normalised and their L2 distance averaged over rows and
layers. Features come from forward hooks: in an nn.Sequential after each activation before the
output layer (each hidden or conv block of the built-ins), otherwise after each top-level child
with parameters before it. A model with no such layer is rejected at begin_update (Renate
cached no features and divided by zero, logging NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, UpdateContext, register
from ricordo.methods.components import POOLINGS, PooledDistillation, check_weight
from ricordo.methods.er import ExperienceReplay

if TYPE_CHECKING:
    from ricordo.data.dataset import ArrayDataset
    from ricordo.memory import TensorMemory


@dataclass(frozen=True)
class PODERParams:
    # Defaults: Renate's POD-ER (alpha 1, distillation_type "spatial", normalize 1).
    pod_weight: float = 1.0  # weight of the POD loss
    pod_pooling: str = "spatial"  # spatial, width, height, channel, gap or pixel (4-D maps)
    pod_normalize: bool = True  # L2-normalise pooled features before the distance
    memory_batch_size: int | None = None  # rows replayed per step; None = batch size

    def __post_init__(self) -> None:
        check_weight("pod_weight", self.pod_weight)
        if self.pod_pooling not in POOLINGS:
            raise ConfigError(f"pod_pooling={self.pod_pooling!r} must be one of {list(POOLINGS)}")
        if self.memory_batch_size is not None and self.memory_batch_size < 1:
            raise ConfigError(f"memory_batch_size={self.memory_batch_size} must be >= 1")


@register
class PODExperienceReplay(ExperienceReplay):
    name = "pod-er"
    Params = PODERParams
    summary = "ER plus pooled distillation (PODNet) of intermediate features to the previous model."

    def __init__(self, params: Any, memory: TensorMemory | None) -> None:
        super().__init__(params, memory)
        self.pod = PooledDistillation()

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        # The first update has no previous model to distil from (only a random initialisation).
        trained = self.memory is not None and len(self.memory) > 0
        self.pod.begin(ctx.model, snapshot=trained and self.params.pod_weight > 0)

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        replay = self.replay_batch(batch, ctx)
        if replay is None:
            return F.cross_entropy(ctx.logits(batch.x), batch.y)
        p, n = self.params, len(batch.y)
        x, y = torch.cat([batch.x, replay.x]), torch.cat([batch.y, replay.y])
        logits, pod = self.pod.logits_and_loss(ctx.model, x, n, p.pod_pooling, p.pod_normalize)
        loss = F.cross_entropy(logits, y)
        return loss if pod is None else loss + p.pod_weight * pod

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        self.pod.end()
