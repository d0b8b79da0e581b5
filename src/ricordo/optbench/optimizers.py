"""The optimisers optbench compares: ``ricordo.optim.OPTIMIZERS``, each at the learning rate
under test (the one hyperparameter the DeepOBS protocol tunes) and otherwise at its defaults.

The baselines are DeepOBS's: SGD, SGD with momentum 0.9 and Adam.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ricordo.errors import ConfigError

BASELINES = ("sgd", "momentum", "adam")


def optimizer_names() -> list[str]:
    """The names optbench accepts (the update jobs' ``--optimizer`` names)."""
    from ricordo.optim import OPTIMIZERS

    return list(OPTIMIZERS)


def check_optimizers(names: Iterable[str]) -> list[str]:
    """``names`` as a list if every one is known, else a one-line error naming the first
    unknown and the known ones."""
    known = optimizer_names()
    names = list(names)
    for name in names:
        if name not in known:
            raise ConfigError(
                f"unknown optimizer {name!r} for optbench; choose from {', '.join(known)}"
            )
    return names


def build_optimizer(name: str, params: Iterable[Any], lr: float) -> torch.optim.Optimizer:
    """Optimiser ``name`` over ``params`` at learning rate ``lr``, its other settings at their
    defaults (momentum 0.9 for ``momentum``, ``signum`` and ``m-svag``; no weight decay)."""
    from ricordo.optim import build_optimizer as build

    check_optimizers([name])
    return build(name, params, lr=lr)
