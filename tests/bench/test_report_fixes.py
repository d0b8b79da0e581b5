"""Report fixes (issue 8): bold only a strictly best value, heatmap text on the canvas, end labels
of the curves plot that never overlap."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from ricordo.bench import plots
from ricordo.bench.report import MethodSummary, aggregate, collect_results, comparison_table
from ricordo.metrics.continual import summarize


def _write_run(
    root: Path, method: str, matrix: list[list[float]], task_il: list[list[float]] | None = None
) -> None:
    """One results file shaped like run_benchmark's (seed 0, chunk k holds classes 2k, 2k+1)."""
    t = len(matrix)
    data: dict[str, Any] = {
        "config": {"method": method, "seed": 0},
        "scenario": {"name": "class-incremental", "updates": t},
        "accuracy_matrix": matrix,
        "initial_accuracy": [0.0] * t,
        "metrics": summarize(matrix, [0.0] * t, [50] * t),
        "timing": {"train_seconds": 1.0},
    }
    if task_il is not None:
        data["task_il"] = {"accuracy_matrix": task_il, "metrics": summarize(task_il, [0.5] * t)}
    path = root / method / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))


def _summaries(root: Path, runs: dict[str, list[list[float]]], task_il: bool = False) -> list[Any]:
    for method, matrix in runs.items():
        _write_run(root, method, matrix, task_il=matrix if task_il else None)
    return aggregate(collect_results(root))


def _staircase(t: int, seen: float, final: float) -> list[list[float]]:
    """Accuracy ``seen`` on trained chunks, 0 on later ones, ``final`` on the last row."""
    rows = [[seen if j <= i else 0.0 for j in range(t)] for i in range(t)]
    rows[-1] = [final] * t
    return rows


# ---------------------------------------------------------------------------------------- bold


def _bold(summaries: list[MethodSummary], metric: str) -> dict[str, bool]:
    table = comparison_table(summaries)
    col = table.keys.index(f"metrics:{metric}")
    return {label: flags[col] for label, flags in zip(table.labels, table.best, strict=True)}


def test_a_metric_every_method_shares_is_not_bold(tmp_path: Path) -> None:
    # No method predicts a class before training on it: forward transfer is 0 for all three.
    summaries = _summaries(
        tmp_path,
        {
            "finetune": _staircase(3, 0.9, 0.3),
            "er": _staircase(3, 0.9, 0.8),
            "ewc": _staircase(3, 0.9, 0.5),
        },
    )
    assert {s.metrics["forward_transfer"].mean for s in summaries} == {0.0}
    assert _bold(summaries, "forward_transfer") == {"finetune": False, "er": False, "ewc": False}
    # A strictly best value still is bold, and only it.
    assert _bold(summaries, "average_accuracy") == {"finetune": False, "er": True, "ewc": False}


def test_a_tie_for_the_best_is_not_bold(tmp_path: Path) -> None:
    summaries = _summaries(
        tmp_path,
        {
            "er": _staircase(3, 0.9, 0.8),
            "der": _staircase(3, 0.9, 0.8),
            "finetune": _staircase(3, 0.9, 0.3),
        },
    )
    assert _bold(summaries, "average_accuracy") == {"er": False, "der": False, "finetune": False}


# ------------------------------------------------------------------------------------- heatmap


@pytest.mark.parametrize("updates", [1, 3, 5, 10, 20])
@pytest.mark.parametrize("task_il", [False, True], ids=["class-il", "with-task-il"])
def test_heatmap_text_is_inside_the_canvas(tmp_path: Path, updates: int, task_il: bool) -> None:
    """Before the fix the x label's descenders fell off the canvas: "test chunk j" read "i"."""
    (summary,) = _summaries(tmp_path, {"er": _staircase(updates, 0.9, 0.7)}, task_il=task_il)
    fig = plots.heatmap_figure(summary)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    labels = [ax.xaxis.label for ax in fig.axes if ax.get_xlabel()]
    assert labels and {label.get_text() for label in labels} == {"test chunk j"}
    texts = [*labels, *(ax.yaxis.label for ax in fig.axes), *(ax.title for ax in fig.axes)]
    for text in [t for t in texts if t.get_text()] + [fig._suptitle]:
        box = text.get_window_extent(renderer)
        assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1, text.get_text()
        assert canvas.y0 <= box.y0 and box.y1 <= canvas.y1, (text.get_text(), box, canvas)


# ---------------------------------------------------------------------------------- end labels


@pytest.mark.parametrize(
    "fractions",
    [
        [0.966, 0.959, 0.924],  # 98.6, 97.8 and 94.2 % on a 0..102 axis: overlapped before
        [0.5, 0.5, 0.5, 0.5],
        [0.999, 1.0, 0.998],
        [0.0, 0.001, 0.3],
        [0.2, 0.8],
    ],
)
@pytest.mark.parametrize("height_pt", [150.0, 230.0, 400.0])
def test_end_label_positions_are_a_text_height_apart(
    fractions: list[float], height_pt: float
) -> None:
    ys = plots.end_label_positions(fractions, height_pt, fontsize=8.5)
    assert len(ys) == len(fractions)
    for a, b in combinations(ys, 2):
        assert abs(a - b) * height_pt >= 1.2 * 8.5 - 1e-9  # points between label centres
    assert all(0.0 <= y <= 1.0 for y in ys)
    # Labels keep the curves' order and stay near their curve.
    order = sorted(range(len(fractions)), key=lambda i: (fractions[i], i))
    assert [ys[i] for i in order] == sorted(ys)
    reach = len(fractions) * 1.2 * 8.5 / height_pt
    assert all(abs(y - f) <= reach for y, f in zip(ys, fractions, strict=True))


@pytest.mark.parametrize("methods", [3, 9])
def test_curves_end_labels_do_not_overlap(tmp_path: Path, methods: int) -> None:
    """Final task-IL accuracies 98.6, 97.8 and 94.2 (the reported case). With nine methods the
    legend takes three rows, the axes are shorter, and the old labels (a fixed gap in % units)
    overlapped; with three they touched."""
    finals = [0.942, 0.978, 0.986] + [0.1 * k for k in range(1, methods - 2)]
    runs = {f"m{i}": _staircase(5, 0.99, v) for i, v in enumerate(finals)}
    summaries = _summaries(tmp_path, runs, task_il=True)
    fig = plots.accuracy_curves_figure(summaries, plots.method_colors(summaries))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    min_gap_px = 0.1 * plots.END_LABEL_FONTSIZE * fig.dpi / 72  # a tenth of the font size
    for ax in fig.axes:
        boxes = sorted(
            (text.get_window_extent(renderer) for text in ax.texts if text.get_text()),
            key=lambda box: box.y0,
        )
        assert len(boxes) == methods
        for low, high in zip(boxes, boxes[1:], strict=False):
            assert high.y0 - low.y1 >= min_gap_px, f"end labels overlap or touch: {low} {high}"


# ------------------------------------------------------------------------ benchmark summary table


def _summary(methods: dict[str, float], seeds: int) -> dict[str, Any]:
    """A run_sweep summary: every metric of ``method`` is ``value`` (± 10.5 with seeds)."""
    from ricordo.bench.sweep import TABLE_METRICS

    std = 0.105 if seeds > 1 else None
    entries = {
        name: {
            "ok": seeds,
            "runs": seeds,
            "metrics": {m: {"mean": -value, "std": std} for m in TABLE_METRICS},
            "task_il": {"average_accuracy": {"mean": value, "std": std}},
            "timing": {"train_seconds": {"mean": 12.25, "std": 0.5 if std else None}},
        }
        for name, value in methods.items()
    }
    return {"experiment": {"seeds": list(range(seeds))}, "methods": entries}


def _printed(monkeypatch: pytest.MonkeyPatch, capsys: Any, summary: dict[str, Any], **env: str):
    from ricordo.cli import _print_summary

    monkeypatch.delenv("COLUMNS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    _print_summary(summary)
    return capsys.readouterr().out


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("env", [{"COLUMNS": "80"}, {}], ids=["COLUMNS=80", "not-a-terminal"])
def test_benchmark_summary_fits_80_columns_and_keeps_every_value(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, seeds: int, env: dict[str, str]
) -> None:
    """It was printed 160 columns wide whatever the terminal; output to a file (not a terminal,
    no $COLUMNS) gets 80 columns too."""
    methods = {"finetune": 0.131, "offline-er": 0.305, "online-ewc": 0.999}
    out = _printed(monkeypatch, capsys, _summary(methods, seeds), **env)
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80, out
    assert "…" not in out  # nothing cut
    for name, value in methods.items():
        row = next(line for line in lines if line.startswith(name))
        # Six class-IL metrics, then task-IL, then train seconds: each whole on the row.
        assert row.split()[2:] == [f"{-100 * value:.1f}"] * 6 + [f"{100 * value:.1f}", "12.2"]
    if seeds > 1:
        assert out.count("±10.5") == 7 * len(methods), out
    assert "FWT = forward transfer" in " ".join(out.split())


def test_a_wide_terminal_gets_the_full_headers(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    out = _printed(monkeypatch, capsys, _summary({"er": 0.5}, 3), COLUMNS="250")
    assert "average incremental accuracy" in out and "FWT" not in out
    assert max(map(len, out.splitlines())) <= 250


def test_benchmark_prints_its_summary_in_80_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    import sys

    from ricordo.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    args = ["benchmark", "--methods", "finetune,er", "--seeds", "0,1", "--epochs", "1"]
    args += ["--hidden", "16", "--workers", "1", "--threads", "1", "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["ricordo", *args, "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "Continual-learning metrics" in out
    assert max(map(len, out.splitlines())) <= 80, out
    assert [
        line.split()[:2] for line in out.splitlines() if line.startswith(("finetune", "er "))
    ] == [
        ["finetune", "2/2"],
        ["er", "2/2"],
    ]
