"""The trial schedulers ``ricordo tune`` offers, built by name.

``random`` and ``grid`` run every trial to ``max_epochs`` (Ray's FIFO scheduler; the search
algorithm decides the configurations), ``asha`` is Ray's ``ASHAScheduler`` (asynchronous successive
halving, stopping type: a trial below the top ``1/reduction_factor`` at a rung is stopped) and
``pasha`` is our :class:`~ricordo.tune.pasha.PASHAScheduler` (promotion type with a growing
maximum resource). The resource is epochs: the trainable reports ``training_iteration`` (epochs
trained so far) once per epoch.
"""

from __future__ import annotations

from typing import Any

from ricordo.errors import ConfigError

SCHEDULERS = ("random", "grid", "asha", "pasha")


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def make_scheduler(
    name: str,
    *,
    metric: str,
    mode: str,
    max_epochs: int,
    min_epochs: int = 1,
    reduction_factor: int = 3,
    seed: int = 0,
) -> Any:
    """The Ray Tune ``TrialScheduler`` called ``name`` (one of :data:`SCHEDULERS`).

    ``min_epochs`` is the first rung (ASHA's grace period, PASHA's ``r_min``); rungs follow at
    ``min_epochs * reduction_factor**k`` below ``max_epochs``; the defaults (1 epoch, 3) are
    the PASHA paper's. ``seed`` is accepted for a uniform interface: none of these schedulers
    draws random numbers (the search algorithm does)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"metric must be a non-empty name, got {metric!r}")
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
    _whole("max_epochs", max_epochs, 1)
    _whole("min_epochs", min_epochs, 1)
    if min_epochs > max_epochs:
        raise ConfigError(
            f"min_epochs ({min_epochs}) must not exceed max_epochs ({max_epochs}); lower it"
        )
    _whole("reduction_factor", reduction_factor, 2)
    _whole("seed", seed, 0)
    try:
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    except ImportError:
        raise ConfigError(
            f"the {name} scheduler runs on Ray Tune, which is not installed; "
            'pip install "ricordo[hpo]"'
        ) from None
    if name in ("random", "grid"):
        return FIFOScheduler()
    if name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=max_epochs,
            grace_period=min_epochs,
            reduction_factor=reduction_factor,
        )
    from ricordo.tune.pasha import PASHAScheduler

    return PASHAScheduler(
        metric=metric, mode=mode, max_t=max_epochs, r_min=min_epochs, eta=reduction_factor
    )
