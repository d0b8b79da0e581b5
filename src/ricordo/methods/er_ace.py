"""ER-ACE: experience replay with an asymmetric cross-entropy on the incoming batch.

Caccia et al. 2022, "New Insights on Reducing Abrupt Representation Change in Online Continual
Learning" (ICLR). The incoming batch's cross-entropy is computed over the classes present in that
batch only (the other logits are masked out), so new data cannot push down the logits of old
classes; the replayed batch uses the full cross-entropy. As in the authors' code (and Mammoth), the
mask applies from the second update on: in the first there are no old classes to protect.
Classes never seen yet stay in the incoming cross-entropy, as in the authors' code ("unmask
unseen classes"): only the seen classes absent from the batch are masked, taken from the
lineage's seen classes, not from the head's width (a head sized by ``num_classes`` has columns
for future classes from the start).

Defaults: ER-ACE has no hyperparameter of its own; the replayed batch is as large as the incoming
one, as in the paper (10 + 10 rows). Mammoth's best arguments have no seq-MNIST entry for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, UpdateContext, register
from ricordo.methods.er import ERParams, ExperienceReplay


@dataclass(frozen=True)
class ERACEParams(ERParams):
    memory_batch_size: int | None = field(
        default=None,
        metadata={
            "doc": (
                "Rows drawn from the memory per step; None = --batch-size (the paper and its code "
                "replay as many rows as arrive, 10 + 10; Mammoth has no seq-MNIST entry for "
                "ER-ACE)."
            )
        },
    )


@register
class ERACE(ExperienceReplay):
    name = "er-ace"
    Params = ERACEParams
    defaults_from = (
        "the paper and the authors' code (no method hyperparameters; replayed batch = batch "
        "size); Mammoth has no seq-MNIST entry"
    )
    summary = "ER with the incoming batch's cross-entropy restricted to its own classes."
    # --strategy ddp: the replayed batch is sharded as in ER, and the mask keeps the classes of
    # the global batch, not of this rank's shard (tests/test_ddp.py).
    supports_ddp = True

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
            absent = torch.zeros(new.shape[1], dtype=torch.bool, device=new.device)
            absent[[c for c in ctx.seen_classes if c < new.shape[1]]] = True
            absent[batch.y] = False
            if ctx.world_size > 1:  # a class present on any rank is in the global batch
                absent = _absent_on_every_rank(absent)
            new = new.masked_fill(absent, torch.finfo(new.dtype).min)
        loss = F.cross_entropy(new, batch.y)
        if replay is not None:
            loss = loss + F.cross_entropy(logits[n:], replay.y)
        return loss


def _absent_on_every_rank(absent: Tensor) -> Tensor:
    """--strategy ddp: the classes absent from every rank's shard, i.e. from the global batch
    one process would mask with (the ranks' absent masks AND-ed by an all-reduce MIN)."""
    merged = absent.to(torch.int32)
    torch.distributed.all_reduce(merged, op=torch.distributed.ReduceOp.MIN)
    return merged.bool()
