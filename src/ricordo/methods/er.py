"""Experience replay (ER): every step mixes the new batch with a batch drawn from the memory.

Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning". The memory is filled by
reservoir sampling (or any policy) from the stream of training batches.

Defaults: Mammoth's best arguments for seq-MNIST with buffer 500 (utils/best_args.py), whose only
method setting is the replayed batch: ``minibatch_size`` 10, equal to its ``batch_size`` 10, so
``memory_batch_size`` defaults to --batch-size. Mammoth trained that setting at lr 0.1, one epoch;
ours are UpdateConfig's (--lr, --epochs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext, register, weighted_cross_entropy


@dataclass(frozen=True)
class ERParams:
    memory_batch_size: int | None = field(
        default=None,
        metadata={
            "doc": (
                "Rows drawn from the memory per step; None = --batch-size (Mammoth best, "
                "seq-MNIST, buffer 500: minibatch_size = batch_size = 10)."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.memory_batch_size is not None and self.memory_batch_size < 1:
            raise ConfigError(f"memory_batch_size={self.memory_batch_size} must be >= 1")


@register
class ExperienceReplay(Method):
    name = "er"
    Params = ERParams
    summary = "Mix each new batch with a batch replayed from a reservoir memory."
    defaults_from = "Mammoth's best arguments, seq-MNIST, buffer 500 (replayed batch = batch size)"
    # Its subclasses (er-ace, der, der++, cls-er, pod-er, super-er) read the chunk by batches too.
    supports_lazy_data = True
    # Its loss weights the new rows by Batch.weight (--selective-backprop gradient-matching).
    loss_reads_row_weights = True
    # --strategy ddp: the replayed batch is sharded like the new one (tests/test_ddp.py).
    supports_ddp = True

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        if config.memory_size < 1:
            raise ConfigError(
                f"method {cls.name!r} needs a memory: pass --memory-size N with N >= 1"
            )
        return config.memory_size, config.memory_policy

    def replay_batch(self, batch: Batch, ctx: UpdateContext) -> Batch | None:
        """A batch sampled from the memory, on the training device and augmented like the new
        rows (None while the memory is empty)."""
        assert self.memory is not None
        if len(self.memory) == 0:
            return None
        size = self.params.memory_batch_size or ctx.config.batch_size
        rows = self.memory.sample(size)
        x, y = rows["x"], rows["y"]
        if self.memory.device != ctx.device:  # even a no-op .to() costs a microsecond a step
            x, y = x.to(ctx.device), y.to(ctx.device)
        # Drawn and augmented whole on every rank (identical memories and generators), then
        # this rank's share: under --strategy ddp the ranks replay what one process would.
        x = ctx.augment(x)
        return Batch(ctx.shard(x), ctx.shard(y))

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        replay = self.replay_batch(batch, ctx)
        if replay is None:
            return weighted_cross_entropy(ctx.logits(batch.x), batch.y, batch.weight)
        x = torch.cat([batch.x, replay.x])
        y = torch.cat([batch.y, replay.y])
        weight = batch.weight
        if weight is not None:  # replayed rows weigh 1, as without selective backprop
            weight = torch.cat([weight, weight.new_ones(len(replay.y))])
        return weighted_cross_entropy(ctx.logits(x), y, weight)

    def after_step(self, batch: Batch, ctx: UpdateContext) -> None:
        assert self.memory is not None
        self.memory.add({"x": batch.x, "y": batch.y})
