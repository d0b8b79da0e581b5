"""Reports over benchmark results: collect every results JSON, aggregate over seeds, write pages.

``collect_results`` walks a folder for result files (any JSON with an ``accuracy_matrix``: the
``results.json`` of a single run, ``<method>/results.json`` of a comparison, ``runs/*.json`` of a
sweep); ``aggregate`` groups them by method (and scenario/dataset/config where those differ) and
takes mean and sample standard deviation over seeds; ``write_report`` writes a self-contained HTML
page, a markdown summary, PNG plots and optionally a LaTeX table.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ricordo import __version__
from ricordo.errors import ConfigError

__all__ = [
    "ComparisonTable",
    "MethodSummary",
    "ReportWarning",
    "RunResult",
    "Stat",
    "aggregate",
    "collect_results",
    "column_spans",
    "comparison_table",
    "render_report",
    "rich_table",
    "table_width",
    "write_report",
]

# Metric name -> (short label, higher is better). Unknown metrics keep their name, higher better.
METRICS: dict[str, tuple[str, bool]] = {
    "average_accuracy": ("Avg acc", True),
    "average_incremental_accuracy": ("Avg inc acc", True),
    "learning_accuracy": ("Learning acc", True),
    "micro_average_accuracy": ("Micro avg acc", True),
    "forgetting": ("Forgetting", False),
    "backward_transfer": ("BWT", True),
    "forward_transfer": ("FWT", True),
}
# Task-IL metrics shown next to their class-IL twins when a scenario is task-incremental.
TASK_IL_METRICS = ("average_accuracy", "average_incremental_accuracy", "forgetting")
# Methods that see all past data: an upper bound, never marked "best".
REFERENCE_METHODS = frozenset({"joint"})
# Config fields that do not change the numbers (where and how verbosely it ran) or vary by design.
_IGNORED_CONFIG = frozenset(
    {"seed", "progress", "logger", "threads", "backend", "accelerator", "devices", "strategy"}
)
_MAX_JSON_BYTES = 64 * 2**20


class ReportWarning(UserWarning):
    """A results file was skipped (malformed, unreadable); the report goes on without it."""


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; None for one value) over ``n`` values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not finite:
            return cls(None, None, 0)
        arr = np.asarray(finite, dtype=np.float64)
        std = float(arr.std(ddof=1)) if len(arr) > 1 else None
        return cls(float(arr.mean()), std, len(arr))


@dataclass
class RunResult:
    """One run's results file, parsed: accuracies are fractions in [0, 1]."""

    path: Path
    name: str  # the run's name in its experiment (usually the method; differs for variants)
    method: str
    seed: int | None
    scenario: str
    dataset: str | None
    accuracy_matrix: np.ndarray
    initial_accuracy: list[float] | None
    metrics: dict[str, float | None]
    config: dict[str, Any]
    scenario_info: dict[str, Any]
    timing: dict[str, Any]
    per_update: list[dict[str, Any]]
    task_il_matrix: np.ndarray | None
    task_il_metrics: dict[str, float | None]
    library_version: str | None
    test_sizes: list[int] | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def updates(self) -> int:
        return int(self.accuracy_matrix.shape[0])

    @property
    def curve(self) -> np.ndarray:
        """Average accuracy over the chunks seen so far, after each update."""
        return seen_curve(self.accuracy_matrix)

    @property
    def task_il_curve(self) -> np.ndarray | None:
        return None if self.task_il_matrix is None else seen_curve(self.task_il_matrix)


@dataclass
class MethodSummary:
    """The runs of one method (on one scenario, with one config) aggregated over seeds."""

    label: str
    method: str
    scenario: str
    dataset: str | None
    runs: list[RunResult]
    metrics: dict[str, Stat]
    task_il_metrics: dict[str, Stat]
    matrix_mean: np.ndarray
    matrix_std: np.ndarray
    curve_mean: np.ndarray
    curve_std: np.ndarray
    task_il_matrix_mean: np.ndarray | None
    task_il_curve_mean: np.ndarray | None
    task_il_curve_std: np.ndarray | None
    timing: dict[str, Stat]
    per_update: list[dict[str, Stat]]
    slug: str = ""

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def reference(self) -> bool:
        return self.method in REFERENCE_METHODS

    @property
    def final_mean(self) -> np.ndarray:
        """Accuracy on each test chunk after the last update (mean over seeds)."""
        return self.matrix_mean[-1]

    @property
    def final_std(self) -> np.ndarray:
        return self.matrix_std[-1]


@dataclass
class ComparisonTable:
    """The comparison table in display form: cell texts plus which cells are the column's best."""

    headers: list[str]  # flat: "Method", "n", then one per value column
    short_headers: list[str]  # per value column, without its group
    groups: list[str]  # per value column: "class-IL", "task-IL" or "" (all "" without task-IL)
    higher_is_better: list[bool | None]  # per value column (after "method" and "n")
    rows: list[list[str]]
    best: list[list[bool]]  # per row, per value column
    labels: list[str]
    keys: list[str]  # per value column: "metrics:<name>", "task_il:<name>" or "timing:<name>"
    latex_cells: list[list[str]] = field(default_factory=list)  # math mode ("1.0 \\pm 0.2")
    references: list[str] = field(default_factory=list)  # rows left out of "best" (joint)


def seen_curve(matrix: np.ndarray) -> np.ndarray:
    """``mean_{j<=i} A[i][j]`` for every update ``i``."""
    return np.array([matrix[i, : i + 1].mean() for i in range(matrix.shape[0])])


# --------------------------------------------------------------------------------------- collect


def _warn_default(message: str) -> None:
    warnings.warn(message, ReportWarning, stacklevel=3)


def _square(value: Any, what: str) -> np.ndarray:
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} holds non-numbers") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"{what} is not a square T x T matrix (shape {matrix.shape})")
    if not np.isfinite(matrix).all() or (matrix < 0).any() or (matrix > 1).any():
        raise ValueError(f"{what} has values outside [0, 1]")
    return matrix


def _metric_dict(value: Any) -> dict[str, float | None]:
    if not isinstance(value, dict):
        return {}
    result: dict[str, float | None] = {}
    for key, v in value.items():
        if v is None or isinstance(v, (int, float)) and not isinstance(v, bool):
            result[str(key)] = None if v is None else float(v)
    return result


def _compute_metrics(matrix: np.ndarray, initial: list[float] | None) -> dict[str, float | None]:
    from ricordo.metrics import continual

    metrics: dict[str, float | None] = {
        "average_accuracy": continual.average_accuracy(matrix),
        "average_incremental_accuracy": continual.average_incremental_accuracy(matrix),
        "learning_accuracy": continual.learning_accuracy(matrix),
        "forgetting": continual.forgetting(matrix),
        "backward_transfer": continual.backward_transfer(matrix),
    }
    if initial is not None and len(initial) == matrix.shape[0]:
        metrics["forward_transfer"] = continual.forward_transfer(matrix, initial)
    return metrics


def parse_result(data: dict[str, Any], path: Path) -> RunResult:
    """Turn one results dict into a RunResult; ValueError says what is wrong with it."""
    matrix = _square(data["accuracy_matrix"], "accuracy_matrix")
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    scenario = data.get("scenario") if isinstance(data.get("scenario"), dict) else {}
    initial = data.get("initial_accuracy")
    if initial is not None:
        try:
            initial = [float(v) for v in initial]
        except (TypeError, ValueError):
            raise ValueError("initial_accuracy is not a list of numbers") from None
    metrics = _metric_dict(data.get("metrics")) or _compute_metrics(matrix, initial)
    task_il = data.get("task_il")
    task_matrix, task_metrics = None, {}
    if isinstance(task_il, dict) and task_il.get("accuracy_matrix") is not None:
        task_matrix = _square(task_il["accuracy_matrix"], "task_il.accuracy_matrix")
        if task_matrix.shape != matrix.shape:
            raise ValueError(
                f"task_il.accuracy_matrix has shape {task_matrix.shape}, "
                f"accuracy_matrix {matrix.shape}"
            )
        task_metrics = _metric_dict(task_il.get("metrics")) or _compute_metrics(task_matrix, None)
    run = data.get("run") if isinstance(data.get("run"), dict) else {}
    experiment = data.get("experiment") if isinstance(data.get("experiment"), dict) else {}
    method = run.get("method") or config.get("method") or data.get("method") or path.parent.name
    seed = config.get("seed", run.get("seed", data.get("seed")))
    dataset = (
        scenario.get("dataset")
        or experiment.get("dataset")
        or data.get("dataset")
        or config.get("dataset")
    )
    per_update = data.get("per_update")
    test_sizes = data.get("test_sizes")
    return RunResult(
        path=path,
        name=str(run.get("name") or method),
        method=str(method),
        seed=int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None,
        scenario=str(scenario.get("name") or data.get("scenario_name") or "scenario"),
        dataset=str(dataset) if dataset else None,
        accuracy_matrix=matrix,
        initial_accuracy=initial,
        metrics=metrics,
        config=config,
        scenario_info=scenario,
        timing=data.get("timing") if isinstance(data.get("timing"), dict) else {},
        per_update=[p for p in per_update if isinstance(p, dict)]
        if isinstance(per_update, list)
        else [],
        task_il_matrix=task_matrix,
        task_il_metrics=task_metrics,
        library_version=data.get("library_version"),
        test_sizes=list(test_sizes) if isinstance(test_sizes, list) else None,
        raw=data,
    )


def collect_results(
    results_dir: str | Path,
    *,
    warn: Callable[[str], None] | None = None,
    exclude: Sequence[str | Path] = (),
) -> list[RunResult]:
    """Every run result (a JSON with an ``accuracy_matrix``) under ``results_dir``, recursively.

    Other JSON files (sweep summaries, configs) and hidden folders are skipped silently;
    unreadable or malformed result files are reported through ``warn`` (default: a
    ``ReportWarning``) and skipped.
    ``results_dir`` may also be one results file. Raises ConfigError when nothing is found.
    """
    warn = warn or _warn_default
    root = Path(results_dir)
    if not root.exists():
        raise ConfigError(
            f"results folder {root} does not exist; run `ricordo benchmark --output {root}` first"
        )
    excluded = [Path(e).resolve() for e in exclude]
    if root.is_file():
        candidates = [root]
    else:
        candidates = sorted(
            p
            for p in root.rglob("*.json")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and not any(p.resolve().is_relative_to(e) for e in excluded)
        )
    runs: list[RunResult] = []
    for path in candidates:
        try:
            if path.stat().st_size > _MAX_JSON_BYTES:
                warn(f"skipped {path}: larger than {_MAX_JSON_BYTES // 2**20} MiB")
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            warn(f"skipped {path}: cannot read it ({error})")
            continue
        except json.JSONDecodeError as error:
            warn(f"skipped {path}: not valid JSON ({error.msg} at line {error.lineno})")
            continue
        if not isinstance(data, dict) or "accuracy_matrix" not in data:
            continue
        try:
            runs.append(parse_result(data, path))
        except (ValueError, TypeError, KeyError) as error:
            warn(f"skipped {path}: {error}")
    if not runs:
        raise ConfigError(
            f"no results.json under {root}; run `ricordo benchmark --output {root}` first"
        )
    return runs


# ------------------------------------------------------------------------------------- aggregate


def _config_key(run: RunResult) -> str:
    config = {k: v for k, v in run.config.items() if k not in _IGNORED_CONFIG}
    return json.dumps(config, sort_keys=True, default=str)


def _mean_std(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    stack = np.stack(arrays)
    std = stack.std(axis=0, ddof=1) if len(arrays) > 1 else np.zeros_like(stack[0])
    return stack.mean(axis=0), std


def _metric_names(dicts: Iterable[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for d in dicts:
        seen.extend(k for k in d if k not in seen)
    known = [k for k in METRICS if k in seen]
    return known + sorted(k for k in seen if k not in METRICS)


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "+._-" else "-" for c in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-.") or "method"


def _labels(groups: list[list[RunResult]]) -> list[str]:
    """``method``, plus what tells groups apart: scenario/dataset/updates, then config fields."""
    firsts = [g[0] for g in groups]
    extras: list[list[str]] = [[] for _ in groups]
    dimensions: list[Callable[[RunResult], Any]] = [
        lambda r: r.dataset,
        lambda r: r.scenario,
        lambda r: f"{r.updates} updates",
    ]
    for dim in dimensions:
        values = {dim(r) for r in firsts}
        if len(values) > 1:
            for i, r in enumerate(firsts):
                if dim(r):
                    extras[i].append(str(dim(r)))
    labels = [
        f"{r.name} ({', '.join(e)})" if e else r.name for r, e in zip(firsts, extras, strict=True)
    ]
    # Same label, different configs: name the config fields that differ.
    for label in set(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        if len(idx) < 2:
            continue
        configs = [
            {k: v for k, v in firsts[i].config.items() if k not in _IGNORED_CONFIG} for i in idx
        ]
        keys = sorted({k for c in configs for k in c})
        differing = [
            k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1
        ]
        for i, cfg in zip(idx, configs, strict=True):
            detail = ", ".join(f"{k}={json.dumps(cfg.get(k), default=str)}" for k in differing)
            base = labels[i]
            labels[i] = f"{base[:-1]}, {detail})" if base.endswith(")") else f"{base} ({detail})"
    return labels


def _order(summary: MethodSummary) -> int:
    """Position of the run name in its experiment's method list (as the user listed them)."""
    experiment = summary.runs[0].raw.get("experiment")
    methods = experiment.get("methods") if isinstance(experiment, dict) else None
    if isinstance(methods, list) and summary.runs[0].name in methods:
        return methods.index(summary.runs[0].name)
    return len(methods) if isinstance(methods, list) else 0


def aggregate(runs: Sequence[RunResult]) -> list[MethodSummary]:
    """Group runs by method (+ scenario, dataset, updates and config) and average over seeds.

    Groups come sorted by scenario, then label, with reference methods (joint) last.
    """
    buckets: dict[tuple[Any, ...], list[RunResult]] = {}
    for run in runs:
        key = (run.name, run.scenario, run.dataset, run.updates, _config_key(run))
        buckets.setdefault(key, []).append(run)
    groups = [
        sorted(g, key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
        for g in buckets.values()
    ]
    labels = _labels(groups)
    summaries: list[MethodSummary] = []
    for label, group in zip(labels, groups, strict=True):
        matrix_mean, matrix_std = _mean_std([r.accuracy_matrix for r in group])
        curve_mean, curve_std = _mean_std([r.curve for r in group])
        task_runs = [r for r in group if r.task_il_matrix is not None]
        task_matrix = task_curve = task_curve_std = None
        if task_runs:
            task_matrix, _ = _mean_std([r.task_il_matrix for r in task_runs])  # type: ignore[misc]
            task_curve, task_curve_std = _mean_std([r.task_il_curve for r in task_runs])  # type: ignore[misc]
        metrics = {
            m: Stat.of(r.metrics.get(m) for r in group)
            for m in _metric_names(r.metrics for r in group)
        }
        task_metrics = {
            m: Stat.of(r.task_il_metrics.get(m) for r in task_runs)
            for m in _metric_names(r.task_il_metrics for r in task_runs)
        }
        timing_keys = ["train_seconds", "eval_seconds", "total_seconds", "train_steps"]
        timing = {k: Stat.of(r.timing.get(k) for r in group) for k in timing_keys}
        per_update: list[dict[str, Stat]] = []
        for i in range(group[0].updates):
            rows = [r.per_update[i] for r in group if len(r.per_update) > i]
            keys = [
                k
                for k in _metric_names(rows)
                if all(
                    x.get(k) is None
                    or isinstance(x.get(k), (int, float))
                    and not isinstance(x.get(k), bool)
                    for x in rows
                )
            ]
            per_update.append({k: Stat.of(x.get(k) for x in rows) for k in keys})
        first = group[0]
        summaries.append(
            MethodSummary(
                label=label,
                method=first.method,
                scenario=first.scenario,
                dataset=first.dataset,
                runs=group,
                metrics=metrics,
                task_il_metrics=task_metrics,
                matrix_mean=matrix_mean,
                matrix_std=matrix_std,
                curve_mean=curve_mean,
                curve_std=curve_std,
                task_il_matrix_mean=task_matrix,
                task_il_curve_mean=task_curve,
                task_il_curve_std=task_curve_std,
                timing=timing,
                per_update=per_update,
            )
        )
    summaries.sort(key=lambda s: (s.scenario, s.dataset or "", s.reference, _order(s), s.label))
    used: set[str] = set()
    for s in summaries:
        slug, k = _slug(s.label), 2
        while slug in used:
            slug, k = f"{_slug(s.label)}-{k}", k + 1
        used.add(slug)
        s.slug = slug
    return summaries


# ----------------------------------------------------------------------------------------- table


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ("-" when missing)."""
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(stat: Stat, scale: float, digits: int, sep: str = " ± ") -> str:
    if stat.mean is None:
        return "-"
    text = f"{scale * stat.mean:.{digits}f}"
    if stat.std is not None:
        text += f"{sep}{scale * stat.std:.{digits}f}"
    return text


def comparison_table(summaries: Sequence[MethodSummary]) -> ComparisonTable:
    """Metric columns (in %, mean ± std over seeds), task-IL columns when present, train time."""
    names = _metric_names(
        {k: v for k, v in s.metrics.items() if v.mean is not None} for s in summaries
    )
    task_names = [m for m in TASK_IL_METRICS if any(m in s.task_il_metrics for s in summaries)]
    # key, short header, higher is better, scale, digits, group
    columns: list[tuple[str, str, bool | None, float, int, str]] = []
    for name in names:
        short, higher = METRICS.get(name, (name.replace("_", " "), True))
        columns.append((f"metrics:{name}", short, higher, 100.0, 1, "class-IL"))
    for name in task_names:
        short, higher = METRICS[name]
        columns.append((f"task_il:{name}", short, higher, 100.0, 1, "task-IL"))
    if any(s.timing["train_seconds"].mean is not None for s in summaries):
        columns.append(("timing:train_seconds", "Train s", False, 1.0, 1, ""))

    def stat(s: MethodSummary, key: str) -> Stat:
        kind, name = key.split(":", 1)
        source = {"metrics": s.metrics, "task_il": s.task_il_metrics, "timing": s.timing}[kind]
        return source.get(name, Stat(None, None, 0))

    rows, best, latex_cells = [], [], []
    for s in summaries:
        rows.append([s.label, str(s.n)] + [_cell(stat(s, c[0]), c[3], c[4]) for c in columns])
        latex_cells.append([_cell(stat(s, c[0]), c[3], c[4], sep=" \\pm ") for c in columns])
        best.append([False] * len(columns))
    contenders = [i for i, s in enumerate(summaries) if not s.reference] or list(
        range(len(summaries))
    )
    for col, (key, _, higher, scale, digits, _) in enumerate(columns):
        # Compare the rounded values shown; bold marks a value strictly better than every other
        # contender's, so a tie for the best (e.g. the same forward transfer for every method,
        # which it is whenever no method can predict a class before training on it) bolds none.
        shown = {
            i: round(scale * v, digits)
            for i in contenders
            if (v := stat(summaries[i], key).mean) is not None
        }
        if len(shown) < 2 or higher is None:
            continue
        target = max(shown.values()) if higher else min(shown.values())
        winners = [i for i, v in shown.items() if v == target]
        if len(winners) == 1:
            best[winners[0]][col] = True
    short = [f"{c[1]} {'↑' if c[2] else '↓'}" if c[2] is not None else c[1] for c in columns]
    groups = [c[5] if task_names else "" for c in columns]
    flat = [f"{g} {h}" if g == "task-IL" else h for g, h in zip(groups, short, strict=True)]
    return ComparisonTable(
        headers=["Method", "n", *flat],
        short_headers=short,
        groups=groups,
        higher_is_better=[c[2] for c in columns],
        rows=rows,
        best=best,
        labels=[s.label for s in summaries],
        keys=[c[0] for c in columns],
        latex_cells=latex_cells,
        references=[s.label for s in summaries if s.reference]
        if len(contenders) < len(summaries)
        else [],
    )


def table_width(table: ComparisonTable) -> int:
    """Characters a terminal needs to show the table without wrapping a value."""
    widths = [
        max([len(row[i]) for row in table.rows] + [min(len(h), 12)])
        for i, h in enumerate(table.headers)
    ]
    return sum(w + 3 for w in widths) + 1


def rich_table(table: ComparisonTable) -> Any:
    """The comparison table as a rich Table (best values in bold)."""
    from rich.markup import escape
    from rich.table import Table

    several = any(row[1] not in ("0", "1") for row in table.rows)
    title = "Continual-learning metrics (accuracy in %" + (
        ", mean ± std over seeds)" if several else ")"
    )
    out = Table(title=title)
    for i, header in enumerate(table.headers):
        # Headers may wrap; values never do.
        width = max(len(row[i]) for row in table.rows)
        out.add_column(header, justify="left" if i == 0 else "right", min_width=width)
    for row, best in zip(table.rows, table.best, strict=True):
        values = [f"[bold]{c}[/bold]" if b else c for c, b in zip(row[2:], best, strict=True)]
        out.add_row(escape(row[0]), row[1], *values)
    return out


# ----------------------------------------------------------------------------------------- write


def write_report(
    results_dir: str | Path, output_dir: str | Path | None = None, latex: bool = False
) -> dict[str, Path]:
    """Collect, aggregate and write the report; return the written files by kind.

    Writes into ``output_dir`` (default ``results_dir/report``): ``report.html`` (self-contained),
    ``report.md``, ``heatmap-<method>.png``, ``accuracy-curves.png``,
    ``final-accuracy-per-chunk.png`` and, with ``latex``, ``table.tex``.
    """
    root = Path(results_dir)
    out = (
        Path(output_dir)
        if output_dir is not None
        else ((root.parent if root.is_file() else root) / "report")
    )
    skipped: list[str] = []

    def warn(message: str) -> None:
        skipped.append(message)
        _warn_default(message)

    runs = collect_results(root, warn=warn, exclude=[out])
    return render_report(aggregate(runs), out, latex=latex, source=root, skipped=skipped)


def render_report(
    summaries: Sequence[MethodSummary],
    output_dir: str | Path,
    *,
    latex: bool = False,
    source: str | Path | None = None,
    skipped: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the report files for already aggregated results (see ``write_report``)."""
    from ricordo.bench import plots

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    colors = plots.method_colors(summaries)
    written["curves"] = plots.plot_accuracy_curves(summaries, out / "accuracy-curves.png", colors)
    written["final_per_chunk"] = plots.plot_final_per_chunk(
        summaries, out / "final-accuracy-per-chunk.png", colors
    )
    for s in summaries:
        written[f"heatmap:{s.label}"] = plots.plot_heatmap(s, out / f"heatmap-{s.slug}.png")
    table = comparison_table(summaries)
    if latex:
        from ricordo.bench.latex import latex_table

        path = out / "table.tex"
        path.write_text(latex_table(table), encoding="utf-8")
        written["latex"] = path
    md = out / "report.md"
    md.write_text(_markdown(summaries, table, source, skipped, written, out), encoding="utf-8")
    page = out / "report.html"
    page.write_text(_html(summaries, table, source, skipped, written), encoding="utf-8")
    return {"html": page, "markdown": md, **written}


# ------------------------------------------------------------------------------------ text parts


def _common_config(summaries: Sequence[MethodSummary]) -> tuple[dict[str, Any], list[str]]:
    """Config fields equal in every run, and the names of those that differ."""
    configs = [r.config for s in summaries for r in s.runs]
    keys: list[str] = []
    for c in configs:
        keys.extend(k for k in c if k not in keys)
    common, differing = {}, []
    for k in keys:
        values = {json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}
        if len(values) == 1:
            common[k] = configs[0].get(k)
        else:
            differing.append(k)
    return common, differing


def _scenario_lines(summaries: Sequence[MethodSummary]) -> list[str]:
    seen: list[str] = []
    for s in summaries:
        info = s.runs[0].scenario_info
        text = f"{s.scenario}"
        if s.dataset:
            text = f"{s.dataset}, {text}"
        text += f", {s.runs[0].updates} updates"
        classes = info.get("chunk_classes")
        if isinstance(classes, list) and classes and all(isinstance(c, list) for c in classes):
            sizes = sorted({len(c) for c in classes})
            text += f", {'/'.join(map(str, sizes))} classes per chunk"
        validation = info.get("validation")
        if isinstance(validation, dict) and validation.get("fraction"):
            # Tuning runs: their accuracies are about held-out training rows, not test sets.
            text += (
                f", evaluated on a validation split ({100 * validation['fraction']:g} % of each "
                "training chunk; no test set)"
            )
        if text not in seen:
            seen.append(text)
    return seen


def _versions(summaries: Sequence[MethodSummary]) -> str:
    found = sorted({str(r.library_version) for s in summaries for r in s.runs if r.library_version})
    return ", ".join(found) or "unknown"


def _short(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def _timing_table(summaries: Sequence[MethodSummary]) -> tuple[list[str], list[list[str]]]:
    """Per method: total seconds (mean ± std over seeds), steps, peak memory if recorded."""
    peaks = [
        (key, header)
        for key, header in (("peak_rss_mb", "peak RSS MB"), ("peak_cuda_mb", "peak CUDA MB"))
        if any(
            p.get(key, Stat(None, None, 0)).mean is not None
            for s in summaries
            for p in s.per_update
        )
    ]
    headers = ["Method", "train s", "eval s", "total s", "steps"] + [h for _, h in peaks]
    rows = []
    for s in summaries:
        row = [
            s.label,
            _cell(s.timing["train_seconds"], 1, 2),
            _cell(s.timing["eval_seconds"], 1, 2),
            _cell(s.timing["total_seconds"], 1, 2),
            _cell(s.timing["train_steps"], 1, 0),
        ]
        for key, _ in peaks:
            values = [p[key].mean for p in s.per_update if key in p]
            values = [v for v in values if v is not None]
            row.append(f"{max(values):.0f}" if values else "-")
        rows.append(row)
    return headers, rows


def _per_update_table(
    summaries: Sequence[MethodSummary],
) -> tuple[list[str], list[list[str]]] | None:
    """Train seconds of every update (rows) per method (columns); None when not recorded."""
    if not any(p.get("train_seconds") for s in summaries for p in s.per_update):
        return None
    updates = max(s.runs[0].updates for s in summaries)
    headers = ["update"] + [s.label for s in summaries]
    rows = []
    for i in range(updates):
        row = [str(i)]
        for s in summaries:
            p = s.per_update[i] if i < len(s.per_update) else {}
            row.append(_cell(p.get("train_seconds", Stat(None, None, 0)), 1, 2))
        rows.append(row)
    return headers, rows


def _legend_lines(table: ComparisonTable, summaries: Sequence[MethodSummary]) -> list[str]:
    lines = [
        "Accuracy metrics in %, mean ± sample std over seeds (n runs); ↑ higher is better, "
        "↓ lower is better; a value strictly better than every other method's is in bold "
        "(a tie for the best is not marked).",
    ]
    if any(s.reference for s in summaries) and any(not s.reference for s in summaries):
        refs = ", ".join(sorted({s.method for s in summaries if s.reference}))
        lines.append(
            f"{refs} trains on all data seen so far: an upper bound, left out of the bold best."
        )
    if any(k.startswith("task_il:") for k in table.keys):
        lines.append(
            "class-IL: predict among all classes seen; task-IL: the chunk (task) id is given at "
            "test time, predictions are restricted to its classes (columns without a task-IL "
            "prefix are class-IL)."
        )
    return lines


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(
    summaries: Sequence[MethodSummary],
    table: ComparisonTable,
    source: str | Path | None,
    skipped: Sequence[str],
    written: dict[str, Path],
    out: Path,
) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(_md_escape(c) for c in cells) + " |"

    lines = ["# Ricordo benchmark report", ""]
    if source is not None:
        lines.append(f"Results: `{source}` ({sum(s.n for s in summaries)} runs)  ")
    lines += [f"ricordo {_versions(summaries)}; report by ricordo {__version__}", ""]
    lines += ["## Comparison", "", row(table.headers)]
    lines.append("|" + "|".join([":---", "---:"] + ["---:"] * (len(table.headers) - 2)) + "|")
    for cells, best in zip(table.rows, table.best, strict=True):
        values = [f"**{c}**" if b else c for c, b in zip(cells[2:], best, strict=True)]
        lines.append(row([cells[0], cells[1], *values]))
    lines += [""] + [f"{x}  " for x in _legend_lines(table, summaries)] + [""]
    lines += ["## Setup", ""] + [f"- scenario: {x}" for x in _scenario_lines(summaries)]
    common, differing = _common_config(summaries)
    shown = {k: v for k, v in common.items() if k not in ("progress",)}
    lines.append("- config: " + ", ".join(f"`{k}={_short(v)}`" for k, v in shown.items()))
    if differing:
        lines.append("- differs between runs: " + ", ".join(f"`{k}`" for k in differing))
    lines.append("")
    lines += ["## Plots", ""]
    for key, title in (
        ("curves", "Average accuracy on seen chunks after each update"),
        ("final_per_chunk", "Final accuracy per test chunk"),
    ):
        name = written[key].name
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += ["### Accuracy matrices", ""]
    for s in summaries:
        name = written[f"heatmap:{s.label}"].name
        lines += [f"[{_md_escape(s.label)}]({name})  ", f"![{s.label}]({name})", ""]
    headers, rows = _timing_table(summaries)
    lines += ["## Timing (seconds, mean ± std over seeds)", "", row(headers)]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += [row(r) for r in rows] + [""]
    per_update = _per_update_table(summaries)
    if per_update is not None:
        headers, rows = per_update
        lines += ["Train seconds of each update:", "", row(headers)]
        lines.append("|" + "|".join(["---:"] * len(headers)) + "|")
        lines += [row(r) for r in rows] + [""]
    lines += ["## Runs", ""]
    for s in summaries:
        for r in s.runs:
            lines.append(
                f"- {_md_escape(s.label)}, seed {r.seed}: avg acc "
                f"{pct(r.metrics.get('average_accuracy'))} % — `{_rel(r.path, source)}`"
            )
    if skipped:
        lines += ["", "## Skipped files", ""] + [f"- {m}" for m in skipped]
    if "latex" in written:
        lines += ["", f"LaTeX table: [{written['latex'].name}]({written['latex'].name})"]
    return "\n".join(lines) + "\n"


def _rel(path: Path, source: str | Path | None) -> str:
    if source is None:
        return str(path)
    base = Path(source)
    base = base.parent if base.is_file() else base
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0;background:#f6f7f9;color:#1f2328;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.7em;margin:0.2em 0 0.1em}h2{margin-top:1.8em;border-bottom:1px solid #d0d7de;
 padding-bottom:4px;font-size:1.3em}
.meta{color:#57606a;font-size:0.92em}
table{border-collapse:collapse;margin:10px 0;background:#fff;font-size:0.92em;
 box-shadow:0 1px 2px rgba(0,0,0,.06)}
th,td{padding:6px 10px;border-bottom:1px solid #e5e7eb;white-space:nowrap}
th{background:#eef1f4;text-align:right;font-weight:600}
th.group{text-align:center;border-bottom:2px solid #c9d1d9}
th:first-child,td:first-child{text-align:left}td{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:700;background:#e8f5e9}
tr.reference td{color:#57606a;font-style:italic}
.note{color:#57606a;font-size:0.88em;margin:2px 0}
figure{margin:14px 0;background:#fff;padding:10px;border-radius:6px;
 box-shadow:0 1px 2px rgba(0,0,0,.06);display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#57606a;font-size:0.88em;margin-top:4px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.grid figure{margin:0;max-width:calc(50% - 28px)}
ul.cfg{columns:3 220px;padding-left:18px;margin:4px 0}ul.cfg li{margin:1px 0}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px}
pre{background:#fff;border:1px solid #d0d7de;padding:10px;overflow-x:auto;font-size:0.85em}
details{margin:6px 0}summary{cursor:pointer}
code{background:#eef1f4;padding:1px 4px;border-radius:3px;font-size:0.9em}
.scroll{overflow-x:auto}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    best: Sequence[Sequence[bool]] | None = None,
    offset: int = 0,
    row_classes: Sequence[str] | None = None,
) -> str:
    e = html.escape
    parts = ['<div class="scroll"><table>', "<thead><tr>"]
    parts += [f"<th>{e(h)}</th>" for h in headers]
    parts.append("</tr></thead><tbody>")
    for r, cells in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        parts.append(f"<tr{cls}>")
        for c, text in enumerate(cells):
            is_best = best is not None and c >= offset and best[r][c - offset]
            parts.append(f'<td class="best">{e(text)}</td>' if is_best else f"<td>{e(text)}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def column_spans(groups: Sequence[str]) -> list[tuple[str, int, int]]:
    """Runs of equal consecutive groups: (group, first index, count)."""
    spans: list[tuple[str, int, int]] = []
    for i, g in enumerate(groups):
        if spans and spans[-1][0] == g:
            spans[-1] = (g, spans[-1][1], spans[-1][2] + 1)
        else:
            spans.append((g, i, 1))
    return spans


def _html_comparison(table: ComparisonTable, row_classes: Sequence[str]) -> str:
    """The comparison table, with a class-IL / task-IL header row when both are shown."""
    if not any(table.groups):
        return _html_table(table.headers, table.rows, table.best, offset=2, row_classes=row_classes)
    e = html.escape
    top = ['<th rowspan="2" style="text-align:left">Method</th><th rowspan="2">n</th>']
    cells: list[str] = []
    for group, first, count in column_spans(table.groups):
        headers = table.short_headers[first : first + count]
        if group:
            top.append(f'<th colspan="{count}" class="group">{e(group)}</th>')
            cells += [f"<th>{e(h)}</th>" for h in headers]
        else:  # ungrouped columns (train time) span both header rows
            top += [f'<th rowspan="2">{e(h)}</th>' for h in headers]
    second = "".join(cells)
    head = f"<thead><tr>{''.join(top)}</tr><tr>{second}</tr></thead>"
    plain = _html_table(table.headers, table.rows, table.best, offset=2, row_classes=row_classes)
    start, end = plain.index("<thead>"), plain.index("</thead>") + len("</thead>")
    return plain[:start] + head + plain[end:]


def _html(
    summaries: Sequence[MethodSummary],
    table: ComparisonTable,
    source: str | Path | None,
    skipped: Sequence[str],
    written: dict[str, Path],
) -> str:
    e = html.escape
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body: list[str] = ["<h1>Ricordo benchmark report</h1>"]
    meta = f"{sum(s.n for s in summaries)} runs, {len(summaries)} methods"
    if source is not None:
        meta = f"Results <code>{e(str(source))}</code> · " + meta
    body.append(
        f'<p class="meta">{meta} · results written by ricordo {e(_versions(summaries))} · '
        f"report by ricordo {e(__version__)} on {now}</p>"
    )
    if skipped:
        items = "".join(f"<li>{e(m)}</li>" for m in skipped)
        body.append(f'<div class="warn"><b>Skipped files</b><ul>{items}</ul></div>')
    body.append("<h2>Comparison</h2>")
    classes = ["reference" if s.reference else "" for s in summaries]
    body.append(_html_comparison(table, classes))
    body += [f'<p class="note">{e(x)}</p>' for x in _legend_lines(table, summaries)]

    body.append("<h2>Setup</h2><ul>")
    body += [f"<li>scenario: {e(x)}</li>" for x in _scenario_lines(summaries)]
    common, differing = _common_config(summaries)
    items = "".join(
        f"<li><code>{e(k)}={e(_short(v))}</code></li>" for k, v in common.items() if k != "progress"
    )
    body.append(f'<li>config shared by every run:<ul class="cfg">{items}</ul></li>')
    if differing:
        body.append(
            "<li>differs between runs: "
            + ", ".join(f"<code>{e(k)}</code>" for k in differing)
            + "</li>"
        )
    body.append("</ul>")

    body.append("<h2>Accuracy after each update</h2>")
    body.append(
        f"<figure>{_img(written['curves'], 'accuracy curves')}<figcaption>Average accuracy over "
        "the chunks seen so far, after each update (line: mean over seeds; band: ± std)."
        "</figcaption></figure>"
    )
    body.append("<h2>Final accuracy per chunk</h2>")
    body.append(
        f"<figure>{_img(written['final_per_chunk'], 'final accuracy per chunk')}<figcaption>"
        "Accuracy on each chunk's test set after the last update (error bars: ± std over seeds)."
        "</figcaption></figure>"
    )
    body.append("<h2>Accuracy matrices</h2>")
    body.append(
        '<p class="note">Row i: after update i; column j: test set of chunk j. Cells right of '
        "the white staircase are chunks not trained yet (forward transfer).</p>"
    )
    body.append('<div class="grid">')
    for s in summaries:
        body.append(
            f"<figure>{_img(written[f'heatmap:{s.label}'], s.label)}"
            f"<figcaption>{e(s.label)} — {s.n} run{'s' if s.n != 1 else ''}</figcaption></figure>"
        )
    body.append("</div>")

    headers, rows = _timing_table(summaries)
    body.append("<h2>Timing</h2>")
    body.append(
        '<p class="note">Seconds, mean ± std over seeds; peak memory: the largest over updates.</p>'
    )
    body.append(_html_table(headers, rows))
    per_update = _per_update_table(summaries)
    if per_update is not None:
        body.append('<p class="note">Train seconds of each update:</p>')
        body.append(_html_table(*per_update))

    body.append("<h2>Runs</h2>")
    run_rows = []
    for s in summaries:
        for r in s.runs:
            run_rows.append(
                [
                    s.label,
                    str(r.seed),
                    pct(r.metrics.get("average_accuracy")),
                    pct(r.metrics.get("forgetting")),
                    str(r.library_version or "-"),
                    _rel(r.path, source),
                ]
            )
    body.append(
        _html_table(["Method", "seed", "Avg acc", "Forgetting", "version", "file"], run_rows)
    )
    body.append("<h2>Exact configs</h2>")
    for s in summaries:
        for r in s.runs:
            detail = {"config": r.config, "scenario": r.scenario_info}
            body.append(
                f"<details><summary>{e(s.label)}, seed {e(str(r.seed))} — "
                f"<code>{e(_rel(r.path, source))}</code></summary>"
                f"<pre>{e(json.dumps(detail, indent=1, default=str))}</pre></details>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Ricordo report</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
