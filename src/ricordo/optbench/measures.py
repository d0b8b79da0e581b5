"""DeepOBS's three measures of an optimiser on a test problem (methods.md section 11.2):

- final performance: the test metric after the last epoch, mean and std over seeds;
- speed: the first epoch at which the test metric reaches the problem's convergence
  performance (at least it for accuracies, at most it for losses), averaged over seeds, a seed
  that never reaches it counting as the run's number of epochs (DeepOBS's ``compute_speed``);
- tuneability: the final performance at every learning rate of the grid (DeepOBS plots it);
  the scalar summary is ours: how many grid values reach 90 % of the best improvement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A grid value is "good" when it achieves this share of the best value's improvement over the
# untrained model. Our summary of DeepOBS's learning-rate sensitivity plot, not DeepOBS's.
GOOD_SHARE = 0.9


def better(a: float, b: float, higher_is_better: bool) -> bool:
    """Whether ``a`` is strictly better than ``b`` (a NaN is never better)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if higher_is_better else a < b


def best_index(finals: Sequence[float], higher_is_better: bool) -> int:
    """The index of the best value (the first of equals: the smallest learning rate on a grid
    in increasing order)."""
    if not finals:
        raise ValueError("best_index of an empty sequence")
    best = 0
    for i, value in enumerate(finals):
        if better(value, finals[best], higher_is_better):
            best = i
    return best


@dataclass(frozen=True)
class Performance:
    """Mean and sample std (None for one seed) of the final test metric over ``n`` seeds."""

    mean: float
    std: float | None
    n: int


def final_performance(curves: Sequence[Sequence[float]]) -> Performance:
    """The final value of each seed's curve, as mean and std (ddof=1)."""
    finals = [float(c[-1]) for c in curves]
    mean = sum(finals) / len(finals)
    std = (
        math.sqrt(sum((f - mean) ** 2 for f in finals) / (len(finals) - 1))
        if len(finals) > 1
        else None
    )
    return Performance(mean, std, len(finals))


def epochs_to_threshold(
    curve: Sequence[float], threshold: float, higher_is_better: bool
) -> int | None:
    """The first epoch (index into the curve, 0 = before training) at which the metric reaches
    ``threshold``; None if it never does."""
    for epoch, value in enumerate(curve):
        if (value >= threshold) if higher_is_better else (value <= threshold):
            return epoch
    return None


@dataclass(frozen=True)
class Speed:
    """Epochs to the convergence performance, averaged over seeds (DeepOBS: a seed that never
    reaches it counts as the number of epochs run); ``reached`` of ``n`` seeds reached it."""

    epochs: float
    reached: int
    n: int
    threshold: float


def speed(curves: Sequence[Sequence[float]], threshold: float, higher_is_better: bool) -> Speed:
    """DeepOBS's speed over the seeds' curves (each of ``epochs + 1`` values)."""
    hits = [epochs_to_threshold(c, threshold, higher_is_better) for c in curves]
    epochs = [h if h is not None else len(c) - 1 for h, c in zip(hits, curves, strict=True)]
    return Speed(
        sum(epochs) / len(epochs), sum(h is not None for h in hits), len(curves), threshold
    )


@dataclass(frozen=True)
class Tuneability:
    """The final performance at each learning rate of the grid, and our summary of it: the
    learning rates whose improvement over the untrained model is at least ``GOOD_SHARE`` of the
    best one's."""

    lrs: list[float]
    finals: list[float]
    good: list[float]

    @property
    def decades(self) -> float:
        """The width, in decades, of the range the good learning rates span (0 for one)."""
        if not self.good:
            return 0.0
        return math.log10(max(self.good)) - math.log10(min(self.good))


def tuneability(
    lrs: Sequence[float], finals: Sequence[float], initial: float, higher_is_better: bool
) -> Tuneability:
    """Tuneability over a grid: ``finals[i]`` is the final metric at ``lrs[i]`` and ``initial``
    the untrained model's."""
    best = finals[best_index(finals, higher_is_better)]
    gain = (best - initial) if higher_is_better else (initial - best)
    good = []
    for lr, value in zip(lrs, finals, strict=True):
        if math.isnan(value) or gain <= 0:
            continue
        share = ((value - initial) if higher_is_better else (initial - value)) / gain
        if share >= GOOD_SHARE - 1e-12:
            good.append(float(lr))
    return Tuneability([float(x) for x in lrs], [float(x) for x in finals], good)


def convergence_performance(
    finals: dict[str, float], higher_is_better: bool, baselines: Sequence[str]
) -> float:
    """The level speed is measured against: the weakest final performance (mean over seeds)
    among the baselines run on the problem, so every baseline reaches it on average; among all
    optimisers run when no baseline was. (DeepOBS derives its convergence performance from its
    baselines too; exactly how is not documented, methods.md section 11.2.)"""
    pool = {k: v for k, v in finals.items() if k in baselines} or dict(finals)
    values = [v for v in pool.values() if not math.isnan(v)]
    if not values:
        return math.nan
    return min(values) if higher_is_better else max(values)
