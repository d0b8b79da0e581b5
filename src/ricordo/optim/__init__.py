"""Optimisation tools: per-example gradients and their statistics (shared by several methods),
and the optimisers an update job can name (``OPTIMIZERS``)."""

from __future__ import annotations

from ricordo.optim.per_example import (
    flatten_grads,
    grad_moments,
    gradient_kernel,
    last_layer_grads,
    last_layer_kernel,
    per_example_grads,
)
from ricordo.optim.registry import OPTIMIZERS, OptimizerFactory, build_optimizer
from ricordo.optim.sign import SignSGD, Signum
from ricordo.optim.variance_adapted import MSVAG, SVAG, VarianceAdaptedSGD

__all__ = [
    "MSVAG",
    "OPTIMIZERS",
    "SVAG",
    "OptimizerFactory",
    "SignSGD",
    "Signum",
    "VarianceAdaptedSGD",
    "build_optimizer",
    "flatten_grads",
    "grad_moments",
    "gradient_kernel",
    "last_layer_grads",
    "last_layer_kernel",
    "per_example_grads",
]
