"""A-GEM: project the gradient so that the loss on a memory batch does not increase.

Chaudhry, Ranzato, Rohrbach, Elhoseiny 2019, "Efficient Lifelong Learning with A-GEM" (ICLR).
Each step trains on the new batch only; between backward and the optimizer step the reference
gradient ``g_ref`` of the loss on a batch sampled from the memory is computed (a separate forward
and ``torch.autograd.grad``, leaving ``p.grad`` alone), and if ``g . g_ref < 0`` the gradient is
replaced by ``g - (g . g_ref / g_ref . g_ref) g_ref``, which has ``g . g_ref = 0``. Works in every
scenario.

The memory holds past chunks only, as in the paper, Mammoth and Avalanche: at the end of each
update every row of the chunk is offered once to the memory's policy (reservoir, or
--memory-policy), so the reference gradient never includes rows of the chunk being learnt and
the first update is plain training. (--memory-insert has no effect here.) Mammoth stores
``buffer_size // n_tasks`` random rows per task, which needs the number of tasks up front; a
reservoir over the chunks is the same uniform sample without it.

Defaults: the reference batch of 128 rows is Mammoth's best for A-GEM on seq-MNIST with buffer
500 (``minibatch_size``; the A-GEM paper used 256). Mammoth trains that setting for 1 epoch with
batch size 10 and lr 0.1 (global options here: --epochs, --batch-size, --lr).

In class-incremental streams A-GEM is weak at long budgets: it only stops the memory loss from
rising to first order at each step, and repeated epochs over a chunk add up the drift it leaves
free. Digits class-IL, memory 500, seeds 0-2 (benchmarks/README.md): 54.0 ± 7.5 at 1 epoch (ER
40.5), 36.6 at 5, 39.8 at 20 (ER 90.7). Before the memory held past chunks only and the reference
batch had Mammoth's size, the same runs scored 13.4, 24.0 and 28.3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from ricordo.config import UpdateConfig
from ricordo.data.lazy import batches_in_order
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext, register

if TYPE_CHECKING:
    from ricordo.data.dataset import ArrayDataset

INSERT_ROWS = 4096  # rows offered to the memory per add at the end of an update


@dataclass(frozen=True)
class AGEMParams:
    memory_batch_size: int | None = field(
        default=128,
        metadata={
            "doc": (
                "Rows of the reference batch (None: --batch-size); Mammoth best, seq-MNIST, buffer"
                " 500."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.memory_batch_size is not None and self.memory_batch_size < 1:
            raise ConfigError(f"memory_batch_size={self.memory_batch_size} must be >= 1")


@register
class AGEM(Method):
    name = "a-gem"
    Params = AGEMParams
    summary = "Project each gradient so the loss on a memory batch cannot increase (A-GEM)."
    memory_note = "past chunks: each chunk's rows enter after its update"
    defaults_from = "Mammoth's best arguments, seq-MNIST, buffer 500 (minibatch_size 128)"
    supports_lazy_data = True
    # --strategy ddp: p.grad is already the global batch's (DDP averaged it); every rank draws
    # the whole reference batch and projects alike (tests/test_ddp.py).
    supports_ddp = True

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        if config.memory_size < 1:
            raise ConfigError("method 'a-gem' needs a memory: pass --memory-size N with N >= 1")
        return config.memory_size, config.memory_policy

    def before_step(self, batch: Batch, ctx: UpdateContext) -> None:
        assert self.memory is not None
        if len(self.memory) == 0:
            return
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        rows = self.memory.sample(self.params.memory_batch_size or ctx.config.batch_size)
        x = ctx.augment(rows["x"].to(ctx.device))
        loss = F.cross_entropy(ctx.logits(x), rows["y"].to(ctx.device))
        ref = torch.autograd.grad(loss, params, allow_unused=True)
        ref = [torch.zeros_like(p) if r is None else r for p, r in zip(params, ref, strict=True)]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        dot = sum((g * r).sum() for g, r in zip(grads, ref, strict=True))
        if dot >= 0:
            return
        # A positive loss scale (mixed precision) scales g and the projection alike.
        scale = dot / sum((r * r).sum() for r in ref)
        for p, r in zip(params, ref, strict=True):
            if p.grad is None:
                p.grad = -scale * r
            else:
                p.grad.sub_(scale * r)

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        """The chunk's rows enter the memory now, once each, in pieces (a chunk may be large)."""
        assert self.memory is not None
        # A lazy chunk is read once more, in order and untransformed.
        for x, y in batches_in_order(data, INSERT_ROWS, workers=ctx.config.data_workers):
            self.memory.add({"x": x, "y": y})
