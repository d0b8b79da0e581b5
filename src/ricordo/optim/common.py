"""Checks and the weight-decayed gradient shared by ricordo's own optimisers."""

from __future__ import annotations

from torch import Tensor

from ricordo.errors import ConfigError


def check_hyperparameters(lr: float, weight_decay: float, beta: float | None = None) -> None:
    """One-line errors for values the update rules cannot use."""
    if not lr > 0:
        raise ConfigError(f"lr={lr} must be > 0, such as 0.01")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay={weight_decay} must be >= 0")
    if beta is not None and not 0 <= beta < 1:
        raise ConfigError(f"beta={beta} must be in [0, 1), such as 0.9")


def regularised_gradient(parameter: Tensor, weight_decay: float) -> Tensor:
    """``parameter.grad`` plus ``weight_decay * parameter`` (L2 regularisation, as in
    ``torch.optim.SGD``); the gradient itself when ``weight_decay`` is 0."""
    grad = parameter.grad
    assert grad is not None
    return grad.add(parameter, alpha=weight_decay) if weight_decay else grad
