"""``--num-classes N`` (update, benchmark) and ``--growing-head`` (benchmark) from the command line:
the output layer has N columns from the start; errors are one line and leave nothing behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Cli = Callable[..., Any]
SMALL = ("--hidden", "16", "--epochs", "1", "--memory-size", "20", "--no-progress")


def assert_one_line_error(result: Any, *needles: str) -> None:
    """Exit 1, nothing on stdout, one stderr line ``ricordo: error: ...`` with the needles."""
    assert result.code == 1 and result.out == "", result.describe()
    assert len(result.err_lines) == 1, result.describe()
    assert result.err_lines[0].startswith("ricordo: error: "), result.describe()
    for needle in needles:
        assert needle in result.err_lines[0], result.describe()


def meta(state: Path) -> dict[str, Any]:
    return json.loads((state / "manifest.json").read_text())["meta"]


def test_update_with_a_known_class_count(cli: Cli, chunks: Path, tmp_path: Path) -> None:
    v0, v1 = tmp_path / "v0", tmp_path / "v1"
    first = cli("update", "--data", chunks / "train-0.npz", "--next-state", v0, "--method", "der",
                "--num-classes", "10", *SMALL)  # fmt: skip
    assert first.code == 0, first.describe()
    assert meta(v0)["config"]["num_classes"] == 10 and meta(v0)["model_spec"]["num_classes"] == 10
    assert "classes [4, 6]" in first.out  # chunk 0 holds two classes; the head has ten columns
    result = cli("update", "--data", chunks / "train-1.npz", "--state", v0, "--next-state", v1)
    assert result.code == 0, result.describe()
    assert meta(v1)["model_spec"]["num_classes"] == 10 and meta(v1)["config"]["num_classes"] == 10


def test_update_refusals_are_one_line_and_write_nothing(
    cli: Cli, chunks: Path, tmp_path: Path, digest: Callable[[Path], dict[str, str]]
) -> None:
    v0 = tmp_path / "states" / "v0"
    ok = cli("update", "--data", chunks / "train-0.npz", "--next-state", v0, "--num-classes",
             "10", *SMALL)  # fmt: skip
    assert ok.code == 0, ok.describe()
    before = digest(tmp_path)
    small = cli("update", "--data", chunks / "train-0.npz", "--next-state",
                tmp_path / "states" / "x", "--num-classes", "5", *SMALL)  # fmt: skip
    assert_one_line_error(small, "label 6", "num_classes=5", "--num-classes")
    zero = cli("update", "--data", chunks / "train-0.npz", "--next-state",
               tmp_path / "states" / "x", "--num-classes", "0")  # fmt: skip
    assert_one_line_error(zero, "--num-classes 0 is invalid", "an integer >= 1")
    changed = cli("update", "--data", chunks / "train-1.npz", "--state", v0, "--next-state",
                  tmp_path / "states" / "v1", "--num-classes", "12")  # fmt: skip
    assert_one_line_error(changed, "['num_classes'] are fixed for this lineage")
    assert digest(tmp_path) == before


def test_benchmark_sizes_the_head_to_the_scenario_unless_growing(
    cli: Cli, chunks: Path, tmp_path: Path
) -> None:
    fixed, growing = tmp_path / "fixed", tmp_path / "growing"
    result = cli("benchmark", "--chunks", chunks, "--method", "der", "--output", fixed, *SMALL)
    assert result.code == 0, result.describe()
    results = json.loads((fixed / "results.json").read_text())
    assert results["head"] == "fixed" and results["config"]["num_classes"] == 10
    assert "head: fixed" in (fixed / "experiment.yaml").read_text()
    result = cli("benchmark", "--chunks", chunks, "--method", "der", "--output", growing,
                 "--growing-head", *SMALL)  # fmt: skip
    assert result.code == 0, result.describe()
    results = json.loads((growing / "results.json").read_text())
    assert results["head"] == "growing" and results["config"]["num_classes"] is None
    # The written experiment repeats the growing head; --fixed-head overrides the file.
    again = cli("benchmark", "-c", growing / "experiment.yaml", "--output", tmp_path / "again",
                "--fixed-head")  # fmt: skip
    assert again.code == 0, again.describe()
    assert json.loads((tmp_path / "again" / "results.json").read_text())["head"] == "fixed"


def test_benchmark_head_conflicts_fail_before_any_run(
    cli: Cli, chunks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    both = cli("benchmark", "--chunks", chunks, "--method", "er", "--output", out,
               "--growing-head", "--num-classes", "10", *SMALL)  # fmt: skip
    assert_one_line_error(both, "--growing-head", "conflicts with num_classes")
    small = cli("benchmark", "--chunks", chunks, "--method", "er", "--output", out,
                "--num-classes", "6", *SMALL)  # fmt: skip
    assert_one_line_error(small, "num_classes=6", "too small", "labels go up to 9")
    assert not out.exists()
