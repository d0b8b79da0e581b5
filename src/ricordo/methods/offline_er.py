"""Offline experience replay: the memory changes only between updates, never while training.

Renate's ``OfflineExperienceReplayLearner`` (Amazon, awslabs/Renate). Every step pairs a batch of
the new chunk with a batch drawn from the memory, which holds rows of *previous* chunks only; the
loss is ``w * CE(new) + (1 - w) * CE(memory)`` with ``w = N_t / (N_t + N_previous)`` (rows of the
current chunk over all rows seen) unless ``loss_weight_new_data`` fixes it. At the end of the
update the whole chunk is offered to the memory (reservoir over its rows by default).

Defaults: Renate's (``renate.defaults``): ``batch_memory_frac`` 0.5, i.e. as many memory rows as
new rows per step (Renate splits one batch of 32 into 16 + 16; here a batch of --batch-size new
rows meets as many memory rows), and the loss weight N_t / (N_t + N_previous).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.config import UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext, register


@dataclass(frozen=True)
class OfflineERParams:
    memory_batch_size: int | None = field(
        default=None,
        metadata={
            "doc": (
                "Rows drawn from the memory per step; None = batch size (Renate: batch_memory_frac"
                " 0.5, an equal split of its batch between new and memory rows)."
            )
        },
    )
    loss_weight_new_data: float | None = field(
        default=None,
        metadata={
            "doc": (
                "Weight of the new rows' loss in [0, 1]; None = N_t / (N_t + N_previous) (Renate's"
                " default)."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.memory_batch_size is not None and self.memory_batch_size < 1:
            raise ConfigError(f"memory_batch_size={self.memory_batch_size} must be >= 1")
        w = self.loss_weight_new_data
        if w is not None and not 0 <= w <= 1:
            raise ConfigError(f"loss_weight_new_data={w} must be in [0, 1] (or None)")


@register
class OfflineER(Method):
    name = "offline-er"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = OfflineERParams
    summary = "Replay a memory of previous chunks; the memory is refreshed only at update end."
    defaults_from = "Renate's defaults (renate.defaults: batch_memory_frac 0.5)"

    def __init__(self, params: Any, memory: Any) -> None:
        super().__init__(params, memory)
        self.rows_seen = 0  # rows of all previous chunks (N_previous)
        self._chunk_rows = 0  # rows of the current chunk (N_t)

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        if config.memory_size < 1:
            raise ConfigError("method 'offline-er' needs a memory: pass --memory-size N, N >= 1")
        return config.memory_size, config.memory_policy

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        self._chunk_rows = len(data)

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        assert self.memory is not None
        if len(self.memory) == 0:  # first update: the whole batch is new data
            return F.cross_entropy(ctx.logits(batch.x), batch.y)
        rows = self.memory.sample(self.params.memory_batch_size or ctx.config.batch_size)
        x_mem = ctx.augment(rows["x"].to(ctx.device))
        logits = ctx.logits(torch.cat([batch.x, x_mem]))
        n = len(batch.y)
        w = self.params.loss_weight_new_data
        if w is None:
            w = self._chunk_rows / max(1, self._chunk_rows + self.rows_seen)
        new = F.cross_entropy(logits[:n], batch.y)
        return w * new + (1 - w) * F.cross_entropy(logits[n:], rows["y"].to(ctx.device))

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        assert self.memory is not None
        self.memory.add({"x": data.x, "y": data.y})
        self.rows_seen += len(data)

    def state_json(self) -> dict[str, Any]:
        return {"rows_seen": self.rows_seen}

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        self.rows_seen = int(data.get("rows_seen", 0))
