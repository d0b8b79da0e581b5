"""optbench: a DeepOBS-style benchmark of optimisers on small offline test problems
(methods.md section 11): learning-rate grid search, the best setting re-run over seeds, and the
three measures (final performance, speed, tuneability).

``ricordo.optbench.run(problems=..., optimizers=..., seeds=..., output=...)`` or
``ricordo optbench``. Exports load lazily, so importing the package loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run": "ricordo.optbench.runner",
    "PROBLEMS": "ricordo.optbench.problems",
    "BUDGETS": "ricordo.optbench.protocol",
    "lr_grid": "ricordo.optbench.protocol",
    "optimizer_names": "ricordo.optbench.optimizers",
    "BASELINES": "ricordo.optbench.optimizers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ricordo.optbench' has no attribute {name!r}")
