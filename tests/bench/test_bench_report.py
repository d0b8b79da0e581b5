"""Reports: collecting results files, aggregating over seeds, and the written HTML/md/PNG/LaTeX."""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ricordo.bench.report import (
    ReportWarning,
    aggregate,
    collect_results,
    comparison_table,
    write_report,
)
from ricordo.errors import ConfigError
from ricordo.metrics.continual import summarize

# Three seeds of "er" and "ewc_on" plus one "joint" (reference), 3 updates each. Values are chosen
# so that every statistic below can be checked by hand.
ER = [
    [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.6, 0.9]],
    [[0.8, 0.1, 0.0], [0.4, 0.9, 0.1], [0.3, 0.5, 0.8]],
    [[1.0, 0.0, 0.1], [0.5, 1.0, 0.0], [0.4, 0.4, 1.0]],
]
EWC = [
    [[0.9, 0.0, 0.0], [0.2, 0.9, 0.0], [0.1, 0.2, 0.9]],
    [[0.9, 0.0, 0.0], [0.3, 0.9, 0.0], [0.2, 0.1, 0.9]],
    [[0.9, 0.0, 0.0], [0.1, 0.9, 0.0], [0.0, 0.3, 0.9]],
]
JOINT = [[0.95, 0.0, 0.0], [0.9, 0.95, 0.0], [0.9, 0.9, 0.95]]
INITIAL = [0.1, 0.1, 0.1]


def result(
    method: str,
    seed: int,
    matrix: list[list[float]],
    *,
    scenario: str = "class-incremental",
    task_il: list[list[float]] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """A results dict shaped like run_benchmark's."""
    t = len(matrix)
    data: dict[str, Any] = {
        "library_version": "0.1.0",
        "config": {"method": method, "seed": seed, "epochs": 1, "memory_size": 100, **config},
        "scenario": {
            "name": scenario,
            "updates": t,
            "chunk_classes": [[2 * k, 2 * k + 1] for k in range(t)],
        },
        "test_sizes": [50] * t,
        "accuracy_matrix": matrix,
        "initial_accuracy": INITIAL[:t],
        "metrics": summarize(matrix, INITIAL[:t], [50] * t),
        "task_il": None,
        "timing": {
            "train_seconds": 1.0 + seed,
            "eval_seconds": 0.1,
            "total_seconds": 1.2 + seed,
            "train_steps": 30,
        },
        "per_update": [
            {"update": i, "train_seconds": 0.5 + i, "eval_seconds": 0.01, "peak_rss_mb": 400.0 + i}
            for i in range(t)
        ],
    }
    if task_il is not None:
        data["task_il"] = {
            "accuracy_matrix": task_il,
            "initial_accuracy": [0.5] * t,
            "metrics": summarize(task_il, [0.5] * t),
        }
    return data


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep layout: runs/<method>-seed<k>.json, a summary.json and an experiment file."""
    root = tmp_path_factory.mktemp("sweep")
    for seed, (er, ewc) in enumerate(zip(ER, EWC, strict=True)):
        write(root / "runs" / f"er-seed{seed}.json", result("er", seed, er))
        write(root / "runs" / f"ewc_on-seed{seed}.json", result("ewc_on", seed, ewc))
    write(root / "runs" / "joint-seed0.json", result("joint", 0, JOINT))
    write(root / "summary.json", {"methods": {}, "runs": []})
    write(root / "notes" / "other.json", [1, 2, 3])
    return root


@pytest.fixture(scope="module")
def report(sweep_dir: Path) -> dict[str, Path]:
    return write_report(sweep_dir, latex=True)


# ----------------------------------------------------------------------------- collect/aggregate


def test_collect_finds_every_layout_and_skips_non_results(tmp_path: Path) -> None:
    write(tmp_path / "results.json", result("finetune", 0, ER[0]))
    write(tmp_path / "cmp" / "er" / "results.json", result("er", 0, ER[1]))
    write(tmp_path / "sweep" / "runs" / "er-seed1.json", result("er", 1, ER[2]))
    write(tmp_path / "sweep" / "summary.json", {"methods": {}})
    write(tmp_path / "sweep" / "experiment.json", {"dataset": "digits"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)  # summaries are skipped silently
        runs = collect_results(tmp_path)
    assert sorted((r.method, r.seed) for r in runs) == [("er", 0), ("er", 1), ("finetune", 0)]
    # One results file can be given directly, too.
    assert len(collect_results(tmp_path / "results.json")) == 1


def test_malformed_files_are_warned_in_one_line_and_skipped(tmp_path: Path) -> None:
    write(tmp_path / "good" / "results.json", result("er", 0, ER[0]))
    write(tmp_path / "broken" / "results.json", '{"accuracy_matrix": [[0.5, ')
    write(tmp_path / "ragged" / "results.json", {"accuracy_matrix": [[0.5, 0.1], [0.2]]})
    write(tmp_path / "percent" / "results.json", {"accuracy_matrix": [[95.0]]})
    with pytest.warns(ReportWarning) as caught:
        runs = collect_results(tmp_path)
    assert [r.path.parent.name for r in runs] == ["good"]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3
    assert all("\n" not in m and m.startswith("skipped ") for m in messages)
    assert "broken" in messages[0] and "not valid JSON" in messages[0]
    assert "percent" in messages[1] and "outside [0, 1]" in messages[1]
    assert "ragged" in messages[2]


def test_no_results_is_one_line_error_naming_the_fix(tmp_path: Path) -> None:
    write(tmp_path / "summary.json", {"methods": {}})
    with pytest.raises(ConfigError) as error:
        collect_results(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert f"no results.json under {tmp_path}" in message
    assert f"ricordo benchmark --output {tmp_path}" in message
    with pytest.raises(ConfigError, match="does not exist"):
        collect_results(tmp_path / "missing")


def test_aggregate_mean_and_std_match_hand_computation(sweep_dir: Path) -> None:
    summaries = {s.label: s for s in aggregate(collect_results(sweep_dir))}
    assert list(summaries) == ["er", "ewc_on", "joint"]  # reference methods last
    er = summaries["er"]
    assert er.n == 3 and er.seeds == [0, 1, 2]
    # Final average accuracy per seed: mean of the last rows.
    finals = [(0.5 + 0.6 + 0.9) / 3, (0.3 + 0.5 + 0.8) / 3, (0.4 + 0.4 + 1.0) / 3]
    stat = er.metrics["average_accuracy"]
    assert stat.mean == pytest.approx(sum(finals) / 3)
    assert stat.std == pytest.approx(np.std(finals, ddof=1))
    assert stat.n == 3
    # Forgetting per seed: mean over chunks 0, 1 of (best earlier accuracy - final accuracy).
    forgetting = [
        ((0.9 - 0.5) + (0.8 - 0.6)) / 2,
        ((0.8 - 0.3) + (0.9 - 0.5)) / 2,
        0.6 / 2 + 0.6 / 2,
    ]
    assert er.metrics["forgetting"].mean == pytest.approx(np.mean(forgetting))
    assert er.metrics["forgetting"].std == pytest.approx(np.std(forgetting, ddof=1))
    # Mean matrix, elementwise.
    assert er.matrix_mean[2].tolist() == pytest.approx([0.4, 0.5, 0.9])
    assert er.matrix_std[0, 0] == pytest.approx(0.1)
    # Accuracy on seen chunks after each update: mean_{j<=i} A[i][j], then over seeds.
    curves = [[0.9, 0.7, 2 / 3], [0.8, 0.65, 1.6 / 3], [1.0, 0.75, 1.8 / 3]]
    assert er.curve_mean.tolist() == pytest.approx(np.mean(curves, axis=0).tolist())
    assert er.curve_std.tolist() == pytest.approx(np.std(curves, axis=0, ddof=1).tolist())
    # Timing: train_seconds 1, 2, 3 and per-update train seconds 0.5, 1.5, 2.5.
    assert er.timing["train_seconds"].mean == pytest.approx(2.0)
    assert er.timing["train_seconds"].std == pytest.approx(1.0)
    assert [p["train_seconds"].mean for p in er.per_update] == pytest.approx([0.5, 1.5, 2.5])
    # One seed: a mean without a std.
    joint = summaries["joint"]
    assert joint.n == 1 and joint.metrics["average_accuracy"].std is None
    assert joint.metrics["average_accuracy"].mean == pytest.approx(0.9 * 2 / 3 + 0.95 / 3)


def test_table_formats_percent_and_marks_best_per_column(sweep_dir: Path) -> None:
    table = comparison_table(aggregate(collect_results(sweep_dir)))
    rows = {row[0]: row for row in table.rows}
    col = table.headers.index("Avg acc ↑")
    # er: 2/3, 1.6/3, 1.8/3 -> 60.0 ± 6.7 (%); ewc_on: 0.4, 1.2/3, 1.2/3 -> 40.0 ± 0.0
    assert rows["er"][col] == "60.0 ± 6.7"
    assert rows["ewc_on"][col] == "40.0 ± 0.0"
    assert rows["joint"][col] == "91.7"  # one run: no ± part
    best = {label: flags for label, flags in zip(table.labels, table.best, strict=True)}
    value_col = col - 2
    assert best["er"][value_col] and not best["ewc_on"][value_col]
    assert not best["joint"][value_col]  # the upper bound is never "best"
    forgetting = table.headers.index("Forgetting ↓") - 2
    # Lower forgetting is better: er forgets 35.0, ewc_on 75.0 (in %).
    assert best["er"][forgetting] and not best["ewc_on"][forgetting]
    assert table.references == ["joint"]


def test_labels_name_what_differs(tmp_path: Path) -> None:
    write(tmp_path / "a.json", result("er", 0, ER[0]))
    write(tmp_path / "b.json", result("er", 0, ER[1], scenario="domain-incremental"))
    labels = [s.label for s in aggregate(collect_results(tmp_path))]
    assert sorted(labels) == ["er (class-incremental)", "er (domain-incremental)"]

    write(tmp_path / "b.json", result("er", 0, ER[1], memory_size=500))
    labels = [s.label for s in aggregate(collect_results(tmp_path))]
    assert sorted(labels) == ["er (memory_size=100)", "er (memory_size=500)"]


# ------------------------------------------------------------------------------------ written


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_writes_every_file_with_valid_pngs(report: dict[str, Path], sweep_dir: Path) -> None:
    out = sweep_dir / "report"
    names = sorted(p.name for p in report.values())
    assert names == sorted(
        [
            "report.html",
            "report.md",
            "table.tex",
            "accuracy-curves.png",
            "final-accuracy-per-chunk.png",
            "heatmap-er.png",
            "heatmap-ewc_on.png",
            "heatmap-joint.png",
        ]
    )
    assert all(p.parent == out and p.is_file() for p in report.values())
    for path in out.glob("*.png"):
        width, height = png_size(path)
        assert 500 <= width <= 2400 and 400 <= height <= 2000, (path.name, width, height)
        assert path.stat().st_size > 10_000  # real content, not an empty canvas


def test_html_is_self_contained_and_holds_the_table(report: dict[str, Path]) -> None:
    page = report["html"].read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 5  # curves, bars, 3 heatmaps
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "url(" not in page
    assert '<td class="best">60.0 ± 6.7</td>' in page  # er's average accuracy, best
    assert "40.0 ± 0.0" in page and "91.7" in page
    assert "ricordo 0.1.0" in page
    assert "memory_size" in page and "runs/er-seed0.json" in page  # exact configs + files


def test_markdown_has_table_and_links_to_pngs(report: dict[str, Path]) -> None:
    md = report["markdown"].read_text()
    assert "| Method | n | Avg acc ↑ |" in md
    assert re.search(r"^\| er \| 3 \| \*\*60\.0 ± 6\.7\*\* \|", md, re.M)
    assert "(accuracy-curves.png)" in md and "(heatmap-ewc_on.png)" in md
    assert "(final-accuracy-per-chunk.png)" in md


def test_latex_table_has_booktabs_bold_best_and_escaped_names(report: dict[str, Path]) -> None:
    tex = report["latex"].read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1
    assert "ewc\\_on &" in tex and "ewc_on" not in tex.replace("ewc\\_on", "")
    er_row = next(line for line in tex.splitlines() if line.startswith("er &"))
    assert "$\\mathbf{60.0 \\pm 6.7}$" in er_row
    joint_row = next(line for line in tex.splitlines() if line.startswith("joint &"))
    assert "\\mathbf" not in joint_row
    header = next(line for line in tex.splitlines() if line.startswith("Method &"))
    assert header.count("&") == er_row.count("&")


def test_task_il_gives_class_il_and_task_il_columns(tmp_path: Path) -> None:
    task = [[1.0, 0.5, 0.5], [0.9, 1.0, 0.5], [0.8, 0.9, 1.0]]
    for seed in range(2):
        write(tmp_path / "runs" / f"er-seed{seed}.json", result("er", seed, ER[seed], task_il=task))
        write(
            tmp_path / "runs" / f"ft-seed{seed}.json", result("ft", seed, EWC[seed], task_il=task)
        )
    table = comparison_table(aggregate(collect_results(tmp_path)))
    assert "Avg acc ↑" in table.headers and "task-IL Avg acc ↑" in table.headers
    col = table.headers.index("task-IL Avg acc ↑")
    assert table.rows[0][col] == "90.0 ± 0.0"
    written = write_report(tmp_path, tmp_path / "out", latex=True)
    page = written["html"].read_text()
    assert 'class="group">class-IL</th>' in page and 'class="group">task-IL</th>' in page
    assert "\\multicolumn{3}{c}{task-IL}" in written["latex"].read_text()
    assert png_size(written["heatmap:er"])[0] > png_size(written["curves"])[1]  # two panels


def test_single_update_runs_report_without_transfer_metrics(tmp_path: Path) -> None:
    write(tmp_path / "results.json", result("er", 0, [[0.8]]))
    written = write_report(tmp_path)
    md = written["markdown"].read_text()
    assert "| er | 1 | 80.0 |" in md
    assert "Forgetting" not in md.split("## Setup")[0]  # None everywhere: no column


# -------------------------------------------------------------------------------------- CLI


def test_cli_report_prints_table_and_paths(tmp_path: Path, cli: Any) -> None:
    results = tmp_path / "results"
    for seed in range(3):
        write(results / "runs" / f"er-seed{seed}.json", result("er", seed, ER[seed]))
    write(results / "runs" / "zz-broken.json", "{oops")
    out = tmp_path / "rep"
    res = cli("report", results, "--output", out, "--latex")
    assert res.code == 0, res.describe()
    assert "60.0 ± 6.7" in res.out and "Avg acc" in res.out
    for name in ("report.html", "report.md", "table.tex", "heatmap-er.png", "accuracy-curves.png"):
        assert str(out / name) in res.out
        assert (out / name).is_file()
    warning = [line for line in res.err.splitlines() if "zz-broken.json" in line]
    assert len(warning) == 1 and warning[0].startswith("ricordo: warning: skipped")

    help_text = cli("report", "--help")
    assert help_text.code == 0 and "--output" in help_text.out and "--latex" in help_text.out

    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("report", empty)
    assert res.code == 1
    assert res.err.strip() == (
        f"ricordo: error: no results.json under {empty}; "
        f"run `ricordo benchmark --output {empty}` first"
    )


# --------------------------------------------------------------------------------- real run


def test_report_of_a_real_benchmark_run(tmp_path: Path, tiny: Any) -> None:
    from ricordo.bench import run_benchmark
    from ricordo.data import load_builtin, make_scenario

    train, test = load_builtin("digits")
    scenario = make_scenario("class-incremental", train, test, updates=2, seed=0)
    run_benchmark(scenario, tiny("finetune", epochs=1), output=tmp_path / "finetune")
    written = write_report(tmp_path)
    runs = collect_results(tmp_path)
    assert len(runs) == 1 and runs[0].accuracy_matrix.shape == (2, 2)
    expected = f"{100 * runs[0].metrics['average_accuracy']:.1f}"
    assert f"| finetune | 1 | {expected} |" in written["markdown"].read_text()
    assert png_size(written["heatmap:finetune"])[0] >= 500
