"""GDumb: a greedy class-balanced memory, and a model trained on that memory only.

Prabhu, Torr, Dokania 2020, "GDumb: A Simple Approach that Questions Our Progress in Continual
Learning" (ECCV). Each new chunk is streamed (in a seeded random order) into the memory with the
``class-balanced`` policy: while the memory has room every row is stored; once full, a row whose
class is not among the largest evicts a random row of a largest class. Then the model is trained on
the memory's rows only, with full batches of --batch-size (Renate's GDumb halves them).

Training follows the paper's official code, not the update's --epochs
(``ricordo.methods.memory_fit``): epochs over the memory with a warm-up epoch and SGDR warm
restarts. Defaults: GDumb's official code for MNIST with memory 500 and an MLP (Mammoth's best
arguments have no seq-MNIST entry for GDumb): 128 passes, learning rate from 0.05 down to 0.0005
(``min_lr_ratio`` 0.01; --lr is the top rate, 0.05 by default as there), no CutMix. It also used
SGD with momentum 0.9, weight decay 1e-6, batches of 16 and gradient clipping at 10; those are
UpdateConfig's here. (The default was Mammoth's argparse default of 256 epochs. At --epochs 20
GDumb reached 59 % on digits class-IL with memory 100, and 87 % with 256 epochs.)
``fitting_epochs=none`` and ``schedule=constant`` give the update's --epochs and --lr instead.
Mammoth applies CutMix to images; that is left to --augment (crop, flip).

With ``reset`` (the default, as in the paper) every module with ``reset_parameters`` is
re-initialised first, from a seed drawn from the update's generator; pass ``reset=false`` to
fine-tune from the current weights (Renate's Python API does that), e.g. for a pretrained backbone,
which a reset would wipe. Needs integer class labels.

Scenarios: class- and task-incremental streams, as in the paper (Mammoth lists only those). In a
domain-incremental stream (every class in every chunk) the full, balanced memory has no class to
make room for, so later chunks are not stored; GDumb then logs a warning naming er / offline-er.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ricordo.config import UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods.base import Method, UpdateContext, register
from ricordo.methods.memory_fit import FitsMemory, MemoryFitParams, reinitialize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GDumbParams(MemoryFitParams):
    reset: bool = field(
        default=True,
        metadata={"doc": "paper: retrain from scratch at every update; False: continue training"},
    )


@register
class GDumb(FitsMemory, Method):
    name = "gdumb"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = GDumbParams
    summary = "Greedy class-balanced memory; train (from scratch) on the memory only."
    defaults_from = (
        "GDumb's official code for MNIST (memory 500, MLP); Mammoth has no seq-MNIST entry"
    )

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        if config.memory_size < 1:
            raise ConfigError("method 'gdumb' needs a memory: pass --memory-size N with N >= 1")
        return config.memory_size, "class-balanced"

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        assert self.memory is not None
        order = torch.randperm(len(data), generator=ctx.generator)
        full = len(self.memory) == self.memory.capacity
        slots = self.memory.add({"x": data.x[order], "y": data.y[order]})
        if full and len(data) and not bool((slots >= 0).any()):
            log.warning(
                "gdumb: the memory is full and class-balanced and update %d brings no new class, "
                "so none of its %d rows were stored; GDumb suits class- and task-incremental "
                "streams, use er or offline-er for domain-incremental ones",
                ctx.update_index,
                len(data),
            )
        if self.params.reset:
            reinitialize(ctx.model, ctx.generator)

    def training_data(self, data: ArrayDataset, ctx: UpdateContext) -> ArrayDataset:
        assert self.memory is not None
        rows = self.memory.get()
        return ArrayDataset(rows["x"].clone(), rows["y"].clone())
