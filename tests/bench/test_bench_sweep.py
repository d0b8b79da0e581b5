"""run_sweep: methods x seeds in worker processes, run files, summary statistics, failures."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ricordo.bench import run_sweep
from ricordo.bench.sweep import stats, summarize_runs
from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError

SPEC = {"dataset": "digits", "scenario": "class-incremental", "updates": 2}


def test_two_methods_two_seeds_two_workers(
    tmp_path: Path, tiny: Callable[..., UpdateConfig]
) -> None:
    out = tmp_path / "sweep"
    done: list[str] = []
    configs = [tiny("finetune", epochs=1), tiny("er", epochs=1, memory_size=40)]
    summary = run_sweep(
        SPEC, configs, [0, 1], out, workers=2, on_done=lambda r: done.append(r["run"])
    )
    names = ["finetune-seed0", "finetune-seed1", "er-seed0", "er-seed1"]
    assert sorted(done) == sorted(names)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{n}.json" for n in names)
    assert {p.name for p in out.iterdir()} == {
        "runs",
        "summary.json",
        "summary.md",
        "experiment.yaml",
    }
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and summary["layout"] == "runs"
    assert [r["run"] for r in summary["runs"]] == names
    assert summary["experiment"]["workers"] == 2
    for method in ("finetune", "er"):
        runs = [json.loads((out / "runs" / f"{method}-seed{s}.json").read_text()) for s in (0, 1)]
        assert [r["config"]["seed"] for r in runs] == [0, 1]
        assert [r["run"]["seed"] for r in runs] == [0, 1]
        assert all(r["config"]["method"] == method for r in runs)
        # The scenario follows the run's seed: the class orders differ.
        assert runs[0]["scenario"]["class_order"] != runs[1]["scenario"]["class_order"]
        entry = summary["methods"][method]
        assert entry["ok"] == entry["runs"] == 2 and entry["seeds"] == [0, 1]
        for key, stat in entry["metrics"].items():
            values = [r["metrics"][key] for r in runs]
            if values[0] is None:
                assert stat is None
                continue
            assert stat["mean"] == pytest.approx(statistics.mean(values))
            assert stat["std"] == pytest.approx(statistics.stdev(values))
            assert stat["n"] == 2
        train = [r["timing"]["train_seconds"] for r in runs]
        assert entry["timing"]["train_seconds"]["mean"] == pytest.approx(statistics.mean(train))
        task = [r["task_il"]["metrics"]["average_accuracy"] for r in runs]
        assert entry["task_il"]["average_accuracy"]["mean"] == pytest.approx(statistics.mean(task))
        mean = 100 * entry["metrics"]["average_accuracy"]["mean"]
        std = 100 * entry["metrics"]["average_accuracy"]["std"]
        assert f"| {method} | 2/2 | {mean:.1f} ± {std:.1f} |" in (out / "summary.md").read_text()
    experiment = yaml.safe_load((out / "experiment.yaml").read_text())
    assert experiment["methods"] == ["finetune", "er"] and experiment["seeds"] == [0, 1]
    # Options the configs disagree on are stored per method, the rest once.
    assert experiment["method_options"] == {
        "finetune": {"memory_size": 500},
        "er": {"memory_size": 40},
    }
    assert experiment["epochs"] == 1 and experiment["hidden"] == [32]


def test_a_failing_run_is_reported_and_the_others_finish(
    tmp_path: Path, tiny: Callable[..., UpdateConfig]
) -> None:
    # max_classes=2 passes every up-front check but fails at the first chunk (labels up to 9)
    # of a growing head (a fixed head, the default, is sized to the scenario's 10 classes).
    configs = {
        "finetune": tiny("finetune", epochs=1),
        "er-bad": tiny("er", epochs=1, max_classes=2),
    }
    out = tmp_path / "sweep"
    summary = run_sweep(SPEC, configs, [0], out, workers=1, head="growing")
    assert [f["run"] for f in summary["failed"]] == ["er-bad"]
    assert "DataError" in summary["failed"][0]["error"]
    assert "max-classes" in summary["failed"][0]["error"]
    statuses = {r["run"]: r["status"] for r in summary["runs"]}
    assert statuses == {"finetune": "ok", "er-bad": "failed"}
    assert (out / "finetune" / "results.json").is_file()
    assert not (out / "er-bad").exists()
    assert summary["methods"]["er-bad"]["ok"] == 0
    assert summary["methods"]["er-bad"]["metrics"] == {}
    assert "## Failed runs" in (out / "summary.md").read_text()
    experiment = yaml.safe_load((out / "experiment.yaml").read_text())
    assert experiment["method_options"]["er-bad"] == {"method": "er", "max_classes": 2}


def test_cli_sweep_with_a_failing_run_exits_non_zero(tmp_path: Path, cli) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "updates: 2\nmethods: [finetune, er]\nepochs: 1\nhidden: [16]\nthreads: 1\n"
        "workers: 1\nprogress: false\nmethod_options: {er: {max_classes: 2}}\nhead: growing\n"
    )
    out = tmp_path / "b"
    result = cli("benchmark", "-c", exp, "--output", out)
    assert result.code == 1, result.describe()
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("ricordo: error: 1 of 2 runs failed (er)"), result.describe()
    assert "er: FAILED: DataError" in result.err
    assert "finetune: done in" in result.err
    assert "finetune" in result.out  # the table is printed before the error
    assert (out / "finetune" / "results.json").is_file()
    assert json.loads((out / "summary.json").read_text())["failed"][0]["run"] == "er"


def test_bad_methods_and_params_fail_before_any_run(
    tmp_path: Path, tiny: Callable[..., UpdateConfig]
) -> None:
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        run_sweep(SPEC, [tiny("er"), tiny("nope")], [0], out)
    with pytest.raises(ConfigError, match="'finetune' has no parameter"):
        run_sweep(SPEC, [tiny("er"), tiny("finetune", params={"memory_batch_size": 4})], [0], out)
    with pytest.raises(ConfigError, match="appears twice"):
        run_sweep(SPEC, [tiny("er"), tiny("er", lr=0.2)], [0], out)
    with pytest.raises(ConfigError, match="repeat a seed"):
        run_sweep(SPEC, [tiny("er")], [1, 1], out)
    assert not out.exists()


def test_stats_use_the_sample_standard_deviation() -> None:
    assert stats([0.5, 0.7, 0.9]) == {
        "mean": pytest.approx(0.7),
        "std": pytest.approx(0.2),
        "n": 3,
        "values": [0.5, 0.7, 0.9],
    }
    assert stats([0.4])["std"] is None
    assert stats([None, None]) is None
    record = {
        "run": "er-seed0",
        "name": "er",
        "method": "er",
        "seed": 0,
        "status": "ok",
        "file": "runs/er-seed0.json",
        "seconds": 1.0,
        "metrics": {"average_accuracy": 0.5, "forgetting": None},
        "task_il": None,
        "timing": dict.fromkeys(("train_seconds", "eval_seconds", "total_seconds"), 1.0)
        | {"train_steps": 3},
        "peak_rss_mb": 100.0,
    }
    summary = summarize_runs([record], {"seeds": [0]}, "single")
    entry = summary["methods"]["er"]
    assert entry["metrics"]["forgetting"] is None and entry["task_il"] is None
    assert entry["metrics"]["average_accuracy"]["mean"] == 0.5


@pytest.mark.slow
def test_a_run_that_kills_its_worker_process_fails_alone(
    tmp_path: Path, tiny: Callable[..., UpdateConfig]
) -> None:
    # The model config exits the process outright (as an out-of-memory kill would), which
    # breaks the process pool; the run beside it is repeated in a process of its own.
    crash = tmp_path / "crash.py"
    crash.write_text("import os\n\n\ndef model_fn(**options):\n    os._exit(3)\n")
    configs = {
        "finetune": tiny("finetune", epochs=1, hidden=(8,)),
        "crash": tiny("finetune", config=str(crash)),
    }
    summary = run_sweep(SPEC, configs, [0], tmp_path / "out", workers=2)
    assert [f["run"] for f in summary["failed"]] == ["crash"]
    assert "worker process died" in summary["failed"][0]["error"]
    assert {r["run"]: r["status"] for r in summary["runs"]} == {"finetune": "ok", "crash": "failed"}
    assert (tmp_path / "out" / "finetune" / "results.json").is_file()
