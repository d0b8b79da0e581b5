"""ER-ACE: experience replay with an asymmetric cross-entropy on the incoming batch.

Caccia et al. 2022, "New Insights on Reducing Abrupt Representation Change in Online Continual
Learning" (ICLR). The incoming batch's cross-entropy is computed over the classes present in that
batch only (the other logits are masked out), so new data cannot push down the logits of old
classes; the replayed batch uses the full cross-entropy. As in the authors' code (and Mammoth), the
mask applies from the second update on: in the first there are no old classes to protect.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, UpdateContext, register
from ricordo.methods.er import ERParams, ExperienceReplay


@register
class ERACE(ExperienceReplay):
    name = "er-ace"
    Params = ERParams  # memory_batch_size: None = batch size (the paper replays 10 + 10 rows)
    summary = "ER with the incoming batch's cross-entropy restricted to its own classes."

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        if config.memory_size < 1:
            raise ConfigError("method 'er-ace' needs a memory: pass --memory-size N with N >= 1")
        return config.memory_size, config.memory_policy

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        replay = self.replay_batch(batch, ctx)
        x = batch.x if replay is None else torch.cat([batch.x, replay.x])
        logits = ctx.logits(x)
        n = len(batch.y)
        new = logits[:n]
        if ctx.update_index > 0:
            absent = torch.ones(new.shape[1], dtype=torch.bool, device=new.device)
            absent[batch.y] = False
            new = new.masked_fill(absent, torch.finfo(new.dtype).min)
        loss = F.cross_entropy(new, batch.y)
        if replay is not None:
            loss = loss + F.cross_entropy(logits[n:], replay.y)
        return loss
