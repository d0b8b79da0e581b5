"""The optimisers an update job can name (``--optimizer``), each built by one factory.

Every factory takes the parameters and the job's ``lr``, ``momentum`` and ``weight_decay``
(``UpdateConfig``'s fields) and returns a ``torch.optim.Optimizer``:

==========  ==============================================================================
sgd         ``torch.optim.SGD`` with ``--momentum`` (default 0: plain SGD)
momentum    heavy-ball SGD: ``torch.optim.SGD`` with ``--momentum``, or 0.9 when it is 0
            (the momentum baseline of DeepOBS, Schneider et al., 2019)
adam        ``torch.optim.Adam`` (betas 0.9, 0.999; ``--momentum`` is not used)
adamw       ``torch.optim.AdamW`` (decoupled weight decay; ``--momentum`` is not used)
signsgd     ``theta -= lr sign(g)`` (Bernstein et al., 2018; "SSD" in Balles and Hennig, 2018)
signum      ``theta -= lr sign(m)``, ``m`` the momentum with ``--momentum`` or 0.9 when it is 0
            (Bernstein et al., 2018; "M-SSD" in Balles and Hennig, 2018)
svag        the gradient times a variance-adaptation factor (Balles and Hennig, 2018;
            beta 0.9 for its moving averages, ``--momentum`` is not used)
m-svag      the momentum times a variance-adaptation factor (Balles and Hennig, 2018; beta
            ``--momentum``, or the paper's 0.9 when it is 0)
==========  ==============================================================================

Sign descent with Adam's variance adaptation (the sign of the momentum scaled by
``(1 + s / m**2) ** -0.5``) is Adam without its epsilon ("Dissecting Adam", section 3), so
``adam`` stands for it; SSD and M-SSD are ``signsgd`` and ``signum`` under their other names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch

from ricordo.errors import ConfigError
from ricordo.optim.sign import SIGNUM_BETA, SignSGD, Signum
from ricordo.optim.variance_adapted import MSVAG, MSVAG_BETA, SVAG

# DeepOBS's momentum baseline (tf.train.MomentumOptimizer, momentum 0.9).
HEAVY_BALL_MOMENTUM = 0.9


class OptimizerFactory(Protocol):
    """Builds an optimiser over ``params`` from an update job's optimisation options."""

    def __call__(
        self, params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> torch.optim.Optimizer: ...


def _sgd(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _momentum(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    beta = momentum or HEAVY_BALL_MOMENTUM
    return torch.optim.SGD(params, lr=lr, momentum=beta, weight_decay=weight_decay)


def _adam(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _signsgd(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    return SignSGD(params, lr=lr, weight_decay=weight_decay)


def _signum(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    return Signum(params, lr=lr, beta=momentum or SIGNUM_BETA, weight_decay=weight_decay)


def _svag(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    return SVAG(params, lr=lr, beta=MSVAG_BETA, weight_decay=weight_decay)


def _msvag(
    params: Iterable[Any], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    return MSVAG(params, lr=lr, beta=momentum or MSVAG_BETA, weight_decay=weight_decay)


OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adam": _adam,
    "adamw": _adamw,
    "signsgd": _signsgd,
    "signum": _signum,
    "svag": _svag,
    "m-svag": _msvag,
}


def build_optimizer(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` (a key of ``OPTIMIZERS``) over ``params``."""
    factory = OPTIMIZERS.get(name)
    if factory is None:
        raise ConfigError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    return factory(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
