"""The DeepOBS protocol (methods.md section 11.2): for each problem and optimiser, a run at every
learning rate of a log grid with one seed, the best by final test performance re-run with more
seeds, then the three measures (``ricordo.optbench.measures``).

The grid spans 1e-5 to 1e2 as DeepOBS's; DeepOBS's has 36 values (a fifth of a decade apart),
which the ``full`` budget uses; smaller budgets take fewer values over the same span. Seeds are
42, 43, ... (DeepOBS's default seed is 42); the grid runs use the first, and its best run is
that seed's run of the re-run (the same computation, not repeated).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ricordo.errors import ConfigError
from ricordo.optbench.measures import (
    Performance,
    Speed,
    Tuneability,
    best_index,
    convergence_performance,
    final_performance,
    speed,
    tuneability,
)
from ricordo.optbench.optimizers import BASELINES
from ricordo.optbench.problems import PROBLEMS
from ricordo.optbench.training import RunRecord

FIRST_SEED = 42
GRID_LOW, GRID_HIGH = 1e-5, 1e2


@dataclass(frozen=True)
class Budget:
    """How much of the protocol to run: grid size, seeds, and epochs per problem."""

    name: str
    grid_points: int
    seeds: int
    epochs: dict[str, int]


# full: DeepOBS's grid (36 values), 10 seeds and epochs. medium and quick: fewer grid values,
# seeds and epochs, sized for a 2-core CPU (medium: about 8 minutes for five optimisers on
# every problem; quick: about a minute for the three baselines).
BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        "quick",
        grid_points=8,
        seeds=2,
        epochs={
            "quadratic_deep": 10,
            "digits_mlp": 4,
            "digits_2c2d": 3,
            "digits_ae": 5,
            "zen_char_rnn": 4,
        },
    ),
    "medium": Budget(
        "medium",
        grid_points=15,
        seeds=3,
        epochs={
            "quadratic_deep": 50,
            "digits_mlp": 15,
            "digits_2c2d": 8,
            "digits_ae": 20,
            "zen_char_rnn": 8,
        },
    ),
    "full": Budget(
        "full", grid_points=36, seeds=10, epochs={p.name: p.epochs for p in PROBLEMS.values()}
    ),
}


def lr_grid(points: int) -> list[float]:
    """``points`` learning rates evenly spaced in log scale from 1e-5 to 1e2 (36: DeepOBS's)."""
    if points < 1:
        raise ConfigError(f"the learning-rate grid needs at least one value, got {points}")
    if points == 1:
        return [math.sqrt(GRID_LOW * GRID_HIGH)]
    return [float(f"{v:.6g}") for v in np.logspace(math.log10(GRID_LOW), 2, points)]


@dataclass
class SettingResult:
    """One problem and optimiser through the protocol: the grid runs, the best learning rate and
    its runs over seeds, and the measures (speed is set once the threshold is known)."""

    problem: str
    optimizer: str
    metric: str
    grid: list[RunRecord]
    best_lr: float
    runs: list[RunRecord]
    performance: Performance
    tuneability: Tuneability
    speed: Speed | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"


@dataclass
class OptbenchResult:
    """Every setting of a benchmark, in the order run (problem by problem)."""

    budget: str
    settings: list[SettingResult]
    thresholds: dict[str, float] = field(default_factory=dict)


# Trains one run: (problem, optimizer, lr, seed, epochs, phase) -> record. The protocol takes it as
# a parameter so tests can script the runs' outcomes.
Execute = Callable[[str, str, float, int, int, str], RunRecord]


def tune_setting(
    problem: str,
    optimizer: str,
    lrs: Sequence[float],
    seeds: Sequence[int],
    epochs: int,
    execute: Execute,
) -> SettingResult:
    """The grid search with ``seeds[0]``, then the best learning rate with every seed."""
    grid = [execute(problem, optimizer, lr, seeds[0], epochs, "grid") for lr in lrs]
    metric = grid[0].metric
    higher = metric == "accuracy"
    best = best_index([r.final for r in grid], higher)
    best_lr = grid[best].lr
    runs = [grid[best]] + [
        execute(problem, optimizer, best_lr, seed, epochs, "seeds") for seed in seeds[1:]
    ]
    return SettingResult(
        problem=problem,
        optimizer=optimizer,
        metric=metric,
        grid=grid,
        best_lr=best_lr,
        runs=runs,
        performance=final_performance([r.curve for r in runs]),
        tuneability=tuneability(
            [r.lr for r in grid], [r.final for r in grid], grid[0].curve[0], higher
        ),
    )


def set_speeds(
    settings: Sequence[SettingResult], thresholds: dict[str, float] | None = None
) -> dict[str, float]:
    """Fill each setting's speed against its problem's convergence performance: ``thresholds``
    where given, else the weakest baseline's final performance on the problem (see
    :func:`convergence_performance`). Returns the thresholds used, by problem."""
    used: dict[str, float] = {}
    for problem in dict.fromkeys(s.problem for s in settings):
        group = [s for s in settings if s.problem == problem]
        higher = group[0].higher_is_better
        if thresholds and problem in thresholds:
            used[problem] = float(thresholds[problem])
        else:
            finals = {s.optimizer: s.performance.mean for s in group}
            used[problem] = convergence_performance(finals, higher, BASELINES)
        for s in group:
            s.speed = speed([r.curve for r in s.runs], used[problem], higher)
    return used
