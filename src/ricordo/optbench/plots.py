"""optbench's PNG plots (matplotlib's Agg canvas through ``ricordo.bench.plots``): learning
curves of each optimiser's best learning rate with a band over seeds, and DeepOBS's
learning-rate sensitivity (final performance across the grid)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ricordo.bench.plots import _figure, _save
from ricordo.optbench.protocol import OptbenchResult, SettingResult


def _panels(result: OptbenchResult) -> tuple[Any, list[tuple[str, Any]]]:
    problems = list(dict.fromkeys(s.problem for s in result.settings))
    columns = min(3, len(problems))
    lines = math.ceil(len(problems) / columns)
    fig = _figure(4.2 * columns, 3.4 * lines + 0.6)
    axes = np.atleast_1d(fig.subplots(lines, columns, squeeze=False)).ravel()
    for ax in axes[len(problems) :]:
        ax.set_visible(False)
    return fig, list(zip(problems, axes, strict=False))


def _colors(result: OptbenchResult) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    names = list(dict.fromkeys(s.optimizer for s in result.settings))
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _scale(setting: SettingResult) -> float:
    return 100.0 if setting.metric == "accuracy" else 1.0


def _ylabel(setting: SettingResult) -> str:
    return "test accuracy (%)" if setting.metric == "accuracy" else "test loss"


def plot_learning_curves(result: OptbenchResult, path: str | Path) -> Path:
    """Test metric per epoch at each optimiser's best learning rate: the mean over seeds, with a
    band of ± one standard deviation (one panel per problem)."""
    from matplotlib.ticker import MaxNLocator

    fig, panels = _panels(result)
    colors = _colors(result)
    for problem, ax in panels:
        group = [s for s in result.settings if s.problem == problem]
        for s in group:
            curves = _scale(s) * np.asarray([r.curve for r in s.runs], dtype=np.float64)
            mean = curves.mean(0)
            x = np.arange(curves.shape[1])
            ax.plot(x, mean, color=colors[s.optimizer], lw=1.8, label=s.optimizer)
            if len(curves) > 1:
                std = curves.std(0, ddof=1)
                ax.fill_between(
                    x, mean - std, mean + std, color=colors[s.optimizer], alpha=0.2, lw=0
                )
        if group[0].metric == "loss":
            finite = [v for s in group for r in s.runs for v in r.curve if math.isfinite(v)]
            if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
                ax.set_yscale("log")
        if (threshold := result.thresholds.get(problem)) is not None and math.isfinite(threshold):
            ax.axhline(_scale(group[0]) * threshold, color="#555555", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(problem, fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_ylabel(group[0]))
        ax.grid(True, alpha=0.3)
    handles, labels = panels[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    seeds = "/".join(map(str, sorted({s.performance.n for s in result.settings})))
    fig.suptitle(
        f"Learning curves at the best learning rate (mean ± std over {seeds} seeds; "
        "dotted: convergence performance)",
        fontsize=11.5,
        fontweight="bold",
    )
    return _save(fig, Path(path))


def plot_lr_sensitivity(result: OptbenchResult, path: str | Path) -> Path:
    """Final test metric against the learning rate over the grid (DeepOBS's tuneability plot);
    diverged runs sit at the untrained model's value, as DeepOBS penalises them."""
    fig, panels = _panels(result)
    colors = _colors(result)
    for problem, ax in panels:
        group = [s for s in result.settings if s.problem == problem]
        for s in group:
            lrs = [r.lr for r in s.grid]
            finals = [_scale(s) * r.final for r in s.grid]
            ax.plot(
                lrs,
                finals,
                marker="o",
                ms=3.5,
                lw=1.5,
                color=colors[s.optimizer],
                label=s.optimizer,
            )
        ax.set_xscale("log")
        if group[0].metric == "loss":
            finite = [r.final for s in group for r in s.grid if math.isfinite(r.final)]
            if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
                ax.set_yscale("log")
        ax.set_title(problem, fontsize=11)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final " + _ylabel(group[0]))
        ax.grid(True, alpha=0.3)
    handles, labels = panels[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    fig.suptitle(
        "Learning-rate sensitivity (final performance over the grid, one seed)",
        fontsize=11.5,
        fontweight="bold",
    )
    return _save(fig, Path(path))
