"""Optimisation tools shared by several methods: per-example gradients and their statistics."""

from __future__ import annotations

from ricordo.optim.per_example import (
    flatten_grads,
    grad_moments,
    gradient_kernel,
    last_layer_grads,
    last_layer_kernel,
    per_example_grads,
)

__all__ = [
    "flatten_grads",
    "grad_moments",
    "gradient_kernel",
    "last_layer_grads",
    "last_layer_kernel",
    "per_example_grads",
]
