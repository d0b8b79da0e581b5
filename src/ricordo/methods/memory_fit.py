"""Fitting a fresh model to the memory: what GDumb and RD's consolidation share.

Both re-initialise the model and train it on the memory's rows only. GDumb's recipe (Prabhu et
al. 2020; its official code and Mammoth) trains ``fitting_epochs`` epochs over the memory instead
of --epochs, the first at lr/10, then SGDR cosine warm restarts (cycles of 1, 2, 4, ... epochs)
from --lr down to ``min_lr_ratio * lr``. The last cycle stretches to the final epoch, so the fit
always ends at the low learning rate (with 128 or 256 epochs this is exactly the official
schedule, torch's CosineAnnealingWarmRestarts(T_0=1, T_mult=2) after the warm-up epoch).

Defaults here are GDumb's, from its official code for MNIST (memory 500, MLP;
scripts/replicate.sh and src/opts.py): 128 passes, maxlr 0.05 and minlr 0.0005 (ratio 0.01).
Mammoth's best arguments have no seq-MNIST entry for GDumb (its argparse default is 256 epochs).
RD (``ricordo.methods.rd``) takes Renate's defaults instead: --epochs at a constant --lr.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ricordo.errors import ConfigError
from ricordo.models.head import unwrap

if TYPE_CHECKING:
    from ricordo.data.dataset import ArrayDataset
    from ricordo.methods.base import UpdateContext

SCHEDULES = ("sgdr", "constant")


@dataclass(frozen=True)
class MemoryFitParams:
    fitting_epochs: int | None = field(
        default=128,
        metadata={
            "doc": (
                "Epochs over the memory; None = --epochs. GDumb's official code for MNIST: 128 "
                "passes."
            )
        },
    )
    schedule: str = field(
        default="sgdr",
        metadata={"doc": "sgdr: warm-up epoch, then cosine warm restarts; constant: --lr"},
    )
    min_lr_ratio: float = field(
        default=0.01,
        metadata={
            "doc": (
                "SGDR floor as a fraction of --lr; GDumb's official code: minlr / maxlr = 0.0005 /"
                " 0.05."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.fitting_epochs is not None and self.fitting_epochs < 1:
            raise ConfigError(
                f"fitting_epochs={self.fitting_epochs} must be >= 1 (or none for --epochs)"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} must be one of {', '.join(SCHEDULES)}")
        if not (math.isfinite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            raise ConfigError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")

    def learning_rate(self, epoch: int, epochs: int, lr: float) -> float:
        if self.schedule == "constant":
            return lr
        return lr * sgdr_factor(epoch, epochs, self.min_lr_ratio)


class FitsMemory:
    """Mixin for a Method (listed first) whose Params derive from MemoryFitParams: its epochs and
    learning rates follow them instead of --epochs and --lr."""

    params: MemoryFitParams

    def epochs(self, data: ArrayDataset, ctx: UpdateContext) -> int:
        return self.params.fitting_epochs or ctx.config.epochs

    def learning_rate(self, epoch: int, epochs: int, lr: float) -> float:
        return self.params.learning_rate(epoch, epochs, lr)


def sgdr_factor(epoch: int, epochs: int, floor: float) -> float:
    """The learning-rate factor at ``epoch`` of ``epochs``: 0.1 for the warm-up epoch, then cosine
    cycles of 1, 2, 4, ... epochs from 1 down to ``floor``; the last cycle runs to the final epoch
    (with 256 epochs: Mammoth's CosineAnnealingWarmRestarts(T_0=1, T_mult=2) after its warm-up)."""
    if epoch == 0:
        return 0.1
    start = 1  # cycles start at epochs 1, 2, 4, ...
    while 4 * start <= epochs and epoch >= 2 * start:  # a later cycle fits whole and has begun
        start *= 2
    length = epochs - start if 4 * start > epochs else start
    position = (epoch - start) / max(length, 1)
    return floor + (1 - floor) * (1 + math.cos(math.pi * position)) / 2


def reinitialize(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``model`` in place: ``reset_parameters()`` of every submodule, run on a CPU
    copy seeded from ``generator`` (the same weights on any device; the global RNG is left as it
    was, and parameters keep their identity). Modules without ``reset_parameters`` keep theirs."""
    module = unwrap(model)
    fresh = copy.deepcopy(module).to("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in fresh.modules():
            if callable(getattr(child, "reset_parameters", None)):
                child.reset_parameters()
    module.load_state_dict(fresh.state_dict())
