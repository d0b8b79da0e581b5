"""``ricordo.optbench.run``: the whole benchmark, from names to the written results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ricordo.errors import ConfigError
from ricordo.optbench.optimizers import BASELINES, check_optimizers
from ricordo.optbench.problems import PROBLEMS, get_problem
from ricordo.optbench.protocol import (
    BUDGETS,
    FIRST_SEED,
    OptbenchResult,
    SettingResult,
    lr_grid,
    set_speeds,
    tune_setting,
)
from ricordo.optbench.training import RunRecord, train_run


def run(
    problems: Sequence[str] | None = None,
    optimizers: Sequence[str] = BASELINES,
    seeds: int | None = None,
    output: str | Path | None = None,
    budget: str = "full",
    epochs: int | None = None,
    lrs: Sequence[float] | None = None,
    thresholds: dict[str, float] | None = None,
    threads: int | None = 1,
    on_run: Callable[[RunRecord], None] | None = None,
    on_setting: Callable[[SettingResult], None] | None = None,
    command: str | None = None,
) -> OptbenchResult:
    """Run the DeepOBS protocol for every problem and optimiser; write the results to ``output``.

    ``problems``: names from ``PROBLEMS`` (default: all). ``optimizers``: names from
    ``ricordo.optim.OPTIMIZERS`` (default: DeepOBS's baselines sgd, momentum, adam).
    ``budget``: ``quick``, ``medium`` or ``full`` (DeepOBS's, the default; see ``BUDGETS``),
    which sets the grid size, the seeds and each problem's epochs; ``seeds``, ``epochs`` (every
    problem) and ``lrs`` (the grid) override it. ``thresholds``: the convergence performance
    per problem (default: the weakest baseline's final performance). ``threads``: torch CPU
    threads during the runs (one is fastest for models this small). ``on_run`` is called after
    every run, ``on_setting`` after each problem and optimiser's seeds.

    With ``output``: one JSON per run, ``summary.json``, ``table.tex``, ``learning-curves.png``
    and ``lr-sensitivity.png`` (see ``ricordo.optbench.output``).
    """
    if budget not in BUDGETS:
        raise ConfigError(f"unknown optbench budget {budget!r}; choose from {', '.join(BUDGETS)}")
    plan = BUDGETS[budget]
    names = list(problems) if problems else list(PROBLEMS)
    for name in names:
        get_problem(name)
    chosen = check_optimizers(optimizers)
    if not chosen:
        raise ConfigError("optbench needs at least one optimizer, e.g. --optimizers sgd,adam")
    n_seeds = plan.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {n_seeds}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    grid = lr_grid(plan.grid_points) if lrs is None else sorted(float(x) for x in lrs)
    if not grid or any(not x > 0 for x in grid):
        raise ConfigError(f"learning rates must be positive numbers, got {list(lrs or [])}")
    unknown = sorted(set(thresholds or {}) - set(names))
    if unknown:
        raise ConfigError(
            f"--threshold names {unknown[0]!r}, which is not among the problems run "
            f"({', '.join(names)})"
        )
    root = None
    if output is not None:
        from ricordo.optbench.output import prepare_output

        root = prepare_output(output)

    def execute(
        problem: str, optimizer: str, lr: float, seed: int, n: int, phase: str
    ) -> RunRecord:
        record = train_run(get_problem(problem), optimizer, lr, seed, n, phase)
        if root is not None:
            from ricordo.optbench.output import write_run

            write_run(root, record)
        if on_run is not None:
            on_run(record)
        return record

    from ricordo.engine.loop import cpu_threads

    settings: list[SettingResult] = []
    seed_list = list(range(FIRST_SEED, FIRST_SEED + n_seeds))
    with cpu_threads(threads):
        for problem in names:
            n = epochs if epochs is not None else plan.epochs[problem]
            for optimizer in chosen:
                setting = tune_setting(problem, optimizer, grid, seed_list, n, execute)
                settings.append(setting)
                if on_setting is not None:
                    on_setting(setting)
    overridden = [
        k for k, v in (("seeds", seeds), ("epochs", epochs), ("lrs", lrs)) if v is not None
    ]
    label = budget + (f" (own {', '.join(overridden)})" if overridden else "")
    result = OptbenchResult(budget=label, settings=settings)
    result.thresholds = set_speeds(settings, thresholds)
    if root is not None:
        write_outputs(root, result, command)
    return result


def write_outputs(root: Path, result: OptbenchResult, command: str | None = None) -> list[Path]:
    """Write the summary, the LaTeX table and the two plots under ``root``."""
    from ricordo.optbench.output import write_summary
    from ricordo.optbench.plots import plot_learning_curves, plot_lr_sensitivity
    from ricordo.optbench.table import latex_table

    tex = root / "table.tex"
    tex.write_text(latex_table(result), encoding="utf-8")
    return [
        write_summary(root, result, command),
        tex,
        plot_learning_curves(result, root / "learning-curves.png"),
        plot_lr_sensitivity(result, root / "lr-sensitivity.png"),
    ]
