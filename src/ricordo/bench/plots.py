"""PNG plots of aggregated benchmark results (matplotlib, Agg canvas, no pyplot global state).

Imported lazily by the report: ``import ricordo`` never loads matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ricordo.bench.report import MethodSummary

DPI = 140
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def method_colors(summaries: Sequence[MethodSummary]) -> dict[str, Any]:
    """One color per label, the same in every plot (reference methods in gray)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    colors: dict[str, Any] = {}
    k = 0
    for s in summaries:
        if s.reference:
            colors[s.label] = "#6e7781"
        else:
            colors[s.label] = palette[k % len(palette)] if k < 10 else colormaps["tab20"](k % 20)
            k += 1
    return colors


def _seeds_note(summaries: Sequence[MethodSummary]) -> str:
    counts = sorted({s.n for s in summaries})
    if counts == [1]:
        return "one run per method"
    text = "/".join(map(str, counts))
    return f"mean ± std over {text} seeds"


def plot_heatmap(summary: MethodSummary, path: str | Path) -> Path:
    """The mean accuracy matrix: cells annotated in %, seen/unseen chunks split by a staircase."""
    return _save(heatmap_figure(summary), Path(path))


def heatmap_figure(summary: MethodSummary) -> Any:
    """The figure of :func:`plot_heatmap` (not saved)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    panels = [("class-IL", summary.matrix_mean)]
    if summary.task_il_matrix_mean is not None:
        panels.append(("task-IL", summary.task_il_matrix_mean))
    t = summary.matrix_mean.shape[0]
    side = min(max(3.8, 0.5 * t + 2.0), 10.0)
    # Square panels plus room for the two-line title, panel titles, ticks and the x label: with
    # less, constrained layout cannot fit the squares and pushes the x label's descenders off
    # the canvas ("test chunk j" then reads "test chunk i").
    fig = _figure(side * len(panels) + 1.0, side + 1.0)
    cmap = colormaps["viridis"]
    norm = Normalize(0, 100)
    fontsize = 10 if t <= 6 else 9 if t <= 10 else 7.5 if t <= 14 else 6 if t <= 18 else 0
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (name, matrix) in zip(axes, panels, strict=True):
        values = 100 * matrix
        image = ax.imshow(values, cmap=cmap, norm=norm, aspect="equal", interpolation="nearest")
        if fontsize:
            for i in range(t):
                for j in range(t):
                    r, g, b, _ = cmap(norm(values[i, j]))
                    light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
                    ax.text(
                        j,
                        i,
                        f"{values[i, j]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=fontsize,
                        color="#111111" if light else "white",
                    )
        # Staircase between trained (j <= i) and not-yet-trained (j > i) chunks.
        xs, ys = [], []
        for i in range(t - 1):
            xs += [i + 0.5, i + 0.5]
            ys += [i - 0.5, i + 0.5]
        if t > 1:
            xs.append(t - 0.5)
            ys.append(t - 1.5)
            ax.plot(xs, ys, color="white", linewidth=2.2, solid_joinstyle="miter")
            ax.plot(xs, ys, color="#222222", linewidth=0.8, solid_joinstyle="miter")
        ticks = range(t) if t <= 20 else range(0, t, max(1, t // 10))
        ax.set_xticks(list(ticks))
        ax.set_yticks(list(ticks))
        ax.set_xlabel("test chunk j")
        ax.set_ylabel("after update i")
        ax.set_xlim(-0.5, t - 0.5)
        ax.set_ylim(t - 0.5, -0.5)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if len(panels) > 1:
            ax.set_title(name, fontsize=11)
    runs = f"mean of {summary.n} seeds" if summary.n > 1 else "1 run"
    fig.suptitle(
        f"{summary.label}: accuracy matrix (%)\n{runs}, final avg "
        f"{100 * summary.final_mean.mean():.1f} %",
        fontsize=11.5,
        fontweight="bold",
    )
    bar = fig.colorbar(image, ax=list(axes), fraction=0.046 * len(panels) ** -0.5, pad=0.03)
    bar.set_label("accuracy (%)")
    bar.outline.set_visible(False)
    return fig


def plot_accuracy_curves(
    summaries: Sequence[MethodSummary], path: str | Path, colors: dict[str, Any]
) -> Path:
    """Average accuracy on seen chunks after each update, one line per method, ± std band."""
    return _save(accuracy_curves_figure(summaries, colors), Path(path))


def accuracy_curves_figure(summaries: Sequence[MethodSummary], colors: dict[str, Any]) -> Any:
    """The figure of :func:`plot_accuracy_curves` (not saved); its end labels never overlap."""
    panels = [("class-IL", "curve_mean", "curve_std")]
    if any(s.task_il_curve_mean is not None for s in summaries):
        panels.append(("task-IL", "task_il_curve_mean", "task_il_curve_std"))
    t = max(s.curve_mean.shape[0] for s in summaries)
    width = min(max(6.4, 0.3 * t + 4.8), 10.5)
    fig = _figure(width * (1 if len(panels) == 1 else 0.8) * len(panels), 4.3)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    markers = "osD^vP*Xh<>"
    panel_ends: list[list[tuple[float, Any]]] = []  # per panel: (final value in %, color)
    for ax, (name, mean_attr, std_attr) in zip(axes, panels, strict=True):
        for k, s in enumerate(summaries):
            mean = getattr(s, mean_attr)
            std = getattr(s, std_attr)
            if mean is None:
                continue
            x = np.arange(len(mean))
            color = colors[s.label]
            ax.plot(
                x,
                100 * mean,
                marker=markers[k % len(markers)],
                markersize=5,
                linewidth=2,
                color=color,
                linestyle="--" if s.reference else "-",
                label=_legend_label(s),
            )
            if s.n > 1 and std is not None:
                ax.fill_between(
                    x, 100 * (mean - std), 100 * (mean + std), color=color, alpha=0.18, lw=0
                )
        panel_ends.append(
            [
                (100 * float(getattr(s, mean_attr)[-1]), colors[s.label])
                for s in summaries
                if getattr(s, mean_attr) is not None and len(getattr(s, mean_attr)) == t
            ]
        )
        ax.set_xticks(list(range(t)) if t <= 25 else list(range(0, t, max(1, t // 12))))
        ax.set_xlim(-0.25, t - 1 + 0.25 + 0.04 * t + 0.35)
        ax.set_ylim(0, 102)
        ax.set_xlabel("after update i")
        ax.grid(True, alpha=0.3)
        if len(panels) > 1:
            ax.set_title(name, fontsize=11)
    axes[0].set_ylabel("average accuracy on seen chunks (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 4),
    )
    fig.suptitle(
        f"Accuracy after each update ({_seeds_note(summaries)})", fontsize=12, fontweight="bold"
    )
    # The end labels are spaced in points, so the axes' final height must be known: lay out now.
    # The labels stay out of the layout, which therefore does not move when they are added.
    fig.draw_without_rendering()
    for ax, ends in zip(axes, panel_ends, strict=True):
        height_pt = ax.get_window_extent().height * 72.0 / fig.dpi
        bottom, top = ax.get_ylim()
        fractions = [(value - bottom) / (top - bottom) for value, _ in ends]
        ys = end_label_positions(fractions, height_pt, END_LABEL_FONTSIZE)
        for y, (value, color) in zip(ys, ends, strict=True):
            ax.text(
                t - 1 + 0.14,
                y,
                f"{value:.1f}",
                va="center",
                fontsize=END_LABEL_FONTSIZE,
                color=color,
                transform=ax.get_xaxis_transform(),  # x in data, y in axes fraction
                in_layout=False,
            )
    return fig


END_LABEL_FONTSIZE = 8.5
# Centre-to-centre distance of two end labels in font sizes: a line of digits is about 0.75 em
# tall, so 1.2 em leaves a visible gap between neighbours.
END_LABEL_GAP_EM = 1.2


def end_label_positions(
    fractions: Sequence[float], axes_height_pt: float, fontsize: float = END_LABEL_FONTSIZE
) -> list[float]:
    """Heights (axes fraction) of the curves' end labels: near each curve's end (``fractions``,
    same order), at least ``END_LABEL_GAP_EM`` font sizes apart, so no two labels overlap
    whatever the axes' size; kept inside the axes while there is room."""
    gap = END_LABEL_GAP_EM * fontsize / max(axes_height_pt, 1.0)
    margin = 0.5 * fontsize / max(axes_height_pt, 1.0)
    return _spread(fractions, gap=gap, low=margin, high=1.0 - margin)


def plot_final_per_chunk(
    summaries: Sequence[MethodSummary], path: str | Path, colors: dict[str, Any]
) -> Path:
    """Grouped bars: accuracy on each test chunk after the last update, per method (± std)."""
    t = max(s.matrix_mean.shape[0] for s in summaries)
    m = len(summaries)
    width = min(max(6.4, t * (0.3 + 0.16 * m) + 2.5), 12.5)
    fig = _figure(width, 4.3 if width < 10 else 4.8)
    ax = fig.subplots()
    bar = 0.8 / m
    # Value labels when there are few bars; vertical when a bar is too narrow for the text.
    annotate = t * m <= 24
    bar_inches = (width - 1.2) / t * bar
    vertical = bar_inches < 0.3
    for k, s in enumerate(summaries):
        final = 100 * s.final_mean
        x = np.arange(len(final)) - 0.4 + bar * (k + 0.5)
        ax.bar(
            x,
            final,
            width=bar * 0.92,
            color=colors[s.label],
            yerr=100 * s.final_std if s.n > 1 else None,
            error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"},
            label=_legend_label(s, seeds=False),
            hatch="//" if s.reference else None,
            edgecolor="white" if not s.reference else "#444444",
            linewidth=0.5,
        )
        if annotate:
            tops = final + (100 * s.final_std if s.n > 1 else 0)
            for xi, top, value in zip(x, tops, final, strict=True):
                ax.text(
                    xi,
                    top + 1.2,
                    f"{value:.1f}",
                    ha="center",
                    va="bottom",
                    fontsize=7 if vertical else 7.5,
                    rotation=90 if vertical else 0,
                    color="#333333",
                )
    ax.set_xticks(range(t))
    ax.set_xticklabels(_chunk_labels(summaries, t))
    ax.set_xlim(-0.6, t - 0.4)
    ax.set_ylim(0, 112 if annotate else 105)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("test chunk j")
    ax.set_ylabel("accuracy after the last update (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(
        loc="outside lower center",
        ncols=min(m, 5),
    )
    fig.suptitle(
        f"Final accuracy per chunk ({_seeds_note(summaries)})", fontsize=12, fontweight="bold"
    )
    return _save(fig, Path(path))


def _legend_label(summary: MethodSummary, seeds: bool = True) -> str:
    label = summary.label
    if summary.reference:
        label += " (upper bound)"
    if seeds and summary.n > 1:
        label += f", n={summary.n}"
    return label


def _spread(
    values: Sequence[float], gap: float, low: float = 1.0, high: float = 101.0
) -> list[float]:
    """Label positions near ``values`` (same order) but at least ``gap`` apart, within bounds."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ys = [min(max(values[i], low), high) for i in order]
    for k in range(1, len(ys)):
        ys[k] = max(ys[k], ys[k - 1] + gap)
    if ys and ys[-1] > high:
        ys[-1] = high
        for k in range(len(ys) - 2, -1, -1):
            ys[k] = min(ys[k], ys[k + 1] - gap)
    out = [0.0] * len(values)
    for k, i in enumerate(order):
        out[i] = ys[k]
    return out


def _chunk_labels(summaries: Sequence[MethodSummary], t: int) -> list[str]:
    """Chunk index, with its classes when every run shares the same (short) class split."""
    splits = {str(r.scenario_info.get("chunk_classes")) for s in summaries for r in s.runs}
    classes = summaries[0].runs[0].scenario_info.get("chunk_classes")
    if (
        len(splits) == 1
        and isinstance(classes, list)
        and len(classes) == t
        and all(isinstance(c, list) and len(c) <= 4 for c in classes)
        and t <= 12
    ):
        return [f"{j}\n{{{', '.join(map(str, c))}}}" for j, c in enumerate(classes)]
    return [str(j) for j in range(t)]
