"""GDumb: a greedy class-balanced memory, and a model trained on that memory only.

Prabhu, Torr, Dokania 2020, "GDumb: A Simple Approach that Questions Our Progress in Continual
Learning" (ECCV). Each new chunk is streamed (in a seeded random order) into the memory with the
``class-balanced`` policy: while the memory has room every row is stored; once full, a row whose
class is not among the largest evicts a random row of a largest class. Then the model is trained on
the memory's rows only, with full batches of --batch-size (Renate's GDumb halves them). With
``reset`` (the default, as in the paper) every module with ``reset_parameters`` is re-initialised
first, from a seed drawn from the update's generator; pass ``reset=false`` to fine-tune from the
current weights (Renate's Python API does that), e.g. for a pretrained backbone, which a reset
would wipe. Needs integer class labels; works in class-, task- and domain-incremental scenarios.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ricordo.config import UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods.base import Method, UpdateContext, register
from ricordo.models.head import unwrap


@dataclass(frozen=True)
class GDumbParams:
    reset: bool = True  # paper: retrain from scratch at every update; False: continue training


def reset_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``model`` in place (modules with ``reset_parameters``), seeded by
    ``generator``; the global RNG is left as it was and parameters keep their identity."""
    module = unwrap(model)
    fresh = copy.deepcopy(module).to("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in fresh.modules():
            if callable(getattr(child, "reset_parameters", None)):
                child.reset_parameters()
    module.load_state_dict(fresh.state_dict())


@register
class GDumb(Method):
    name = "gdumb"
    Params = GDumbParams
    summary = "Greedy class-balanced memory; train (from scratch) on the memory only."

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        if config.memory_size < 1:
            raise ConfigError("method 'gdumb' needs a memory: pass --memory-size N with N >= 1")
        return config.memory_size, "class-balanced"

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        assert self.memory is not None
        order = torch.randperm(len(data), generator=ctx.generator)
        self.memory.add({"x": data.x[order], "y": data.y[order]})
        if self.params.reset:
            reset_parameters(ctx.model, ctx.generator)

    def training_data(self, data: ArrayDataset, ctx: UpdateContext) -> ArrayDataset:
        assert self.memory is not None
        rows = self.memory.get()
        return ArrayDataset(rows["x"].clone(), rows["y"].clone())
