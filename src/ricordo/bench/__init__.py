"""Benchmarks: run scenarios end to end, sweep methods x seeds, and store their results.

Exports load lazily, so ``ricordo report`` (which needs none of them) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_chunks": "ricordo.bench.chunks",
    "Experiment": "ricordo.bench.experiment",
    "ScenarioSpec": "ricordo.bench.experiment",
    "load_experiment": "ricordo.bench.experiment",
    "save_experiment": "ricordo.bench.experiment",
    "run_benchmark": "ricordo.bench.runner",
    "run_experiment": "ricordo.bench.sweep",
    "run_sweep": "ricordo.bench.sweep",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ricordo.bench' has no attribute {name!r}")
