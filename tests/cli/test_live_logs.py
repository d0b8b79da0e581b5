"""Live logs (issue 10.4): a plain line per epoch when stderr is not a terminal, and --logger.

Jobs under cron, Kubernetes or SLURM have no terminal: they must still show progress as it
happens, in plain text. --logger csv writes metrics files only in the folder the user names
(default ./ricordo-logs), a new folder per update; tensorboard, mlflow and wandb need their
packages, and without them the job fails before training with a one-line pip hint.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ricordo.engine import progress as progress_module

CliResult = Any  # tests/cli/conftest.py's CliResult: code, out, err, err_lines, describe()

EPOCH_LINE = re.compile(
    r"^update (\d+) \((?:[\w+-]+)\): epoch (\d+)/(\d+)  loss \d+\.\d{4}  \d+\.\d steps/s  "
    r"ETA \d+:\d\d:\d\d(  val accuracy (\d\.\d{4}))?$"
)
FAST = ("--hidden", "16", "--batch-size", "32", "--memory-size", "20", "--lr", "0.1")
SAMPLES = 120  # 4 steps per epoch at batch 32


@pytest.fixture
def chunk(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "chunk.npz"
    np.savez(path, x=rng.normal(size=(SAMPLES, 8)).astype("float32"), y=rng.integers(0, 3, SAMPLES))
    return path


@pytest.fixture(autouse=True)
def _not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)


def epoch_lines(err: str) -> list[re.Match[str]]:
    lines = [line for line in err.splitlines() if "epoch " in line]
    matches = [EPOCH_LINE.match(line) for line in lines]
    assert all(matches), err
    return [m for m in matches if m is not None]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    assert result.code == 1 and result.out == "", result.describe()
    assert len(result.err_lines) == 1, result.describe()
    assert result.err_lines[0].startswith("ricordo: error: "), result.describe()
    for needle in needles:
        assert needle in result.err_lines[0], result.describe()


# -- progress lines --------------------------------------------------------------------------


def test_progress_prints_one_plain_line_per_epoch_when_stderr_is_not_a_terminal(
    cli: Callable[..., CliResult], chunk: Path, tmp_path: Path
) -> None:
    result = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "s0", "--epochs", "3",
        "--val-fraction", "0.25", *FAST,
    )  # fmt: skip
    assert result.code == 0, result.describe()
    lines = epoch_lines(result.err)
    assert [(m[1], m[2], m[3]) for m in lines] == [
        ("0", "1", "3"),
        ("0", "2", "3"),
        ("0", "3", "3"),
    ]
    assert "\x1b" not in result.err  # no ANSI codes in a log file
    # The val accuracy printed is the one recorded in the state's history.
    history = json.loads((tmp_path / "s0" / "history.json").read_text())
    recorded = history[-1]["train"]["val_accuracy"]
    assert len(recorded) == 3
    assert [float(m[5]) for m in lines] == [round(a, 4) for a in recorded]
    # Without validation the line has no accuracy; the last epoch's ETA is zero.
    plain = cli("update", "--data", chunk, "--next-state", tmp_path / "s1", "--epochs", "2", *FAST)
    lines = epoch_lines(plain.err)
    assert len(lines) == 2 and lines[0][4] is None
    assert lines[-1][0].split("ETA ")[1] == "0:00:00"


def test_progress_lines_in_ci_too_and_none_with_no_progress(
    cli: Callable[..., CliResult],
    chunk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")  # a CI log is a file even where stderr looks like a TTY
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    result = cli("update", "--data", chunk, "--next-state", tmp_path / "a", "--epochs", "2", *FAST)
    assert len(epoch_lines(result.err)) == 2, result.describe()
    quiet = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "b", "--epochs", "2",
        "--no-progress", *FAST,
    )  # fmt: skip
    assert quiet.code == 0 and quiet.err == "", quiet.describe()


def test_a_terminal_gets_the_bar_not_the_lines(
    cli: Callable[..., CliResult], chunk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "_interactive", lambda: True)
    result = cli("update", "--data", chunk, "--next-state", tmp_path / "a", "--epochs", "2", *FAST)
    assert result.code == 0, result.describe()
    assert "steps/s  ETA" not in result.err, result.describe()


def test_progress_lines_of_a_real_process_arrive_on_its_stderr(
    cli_popen: Callable[..., subprocess.Popen[bytes]], chunk: Path, tmp_path: Path
) -> None:
    # A separate process whose stderr is a pipe, as under cron or a cluster's log collector.
    proc = cli_popen(
        "update", "--data", chunk, "--next-state", tmp_path / "s0", "--epochs", "2", *FAST,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = (stream.decode() for stream in proc.communicate(timeout=300))
    assert proc.returncode == 0, err
    assert [(m[2], m[3]) for m in epoch_lines(err)] == [("1", "2"), ("2", "2")]
    assert "epoch" not in out  # the result line alone on stdout, for scripts
    assert "\x1b" not in err


# -- --logger csv ----------------------------------------------------------------------------


def test_csv_logger_writes_each_step_and_epoch_in_the_folder_named(
    cli: Callable[..., CliResult], chunk: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    state = tmp_path / "s0"
    result = cli(
        "update", "--data", chunk, "--next-state", state, "--epochs", "3",
        "--val-fraction", "0.25", "--logger", f"csv:{logs}", *FAST,
    )  # fmt: skip
    assert result.code == 0, result.describe()
    steps = read_csv(logs / "update-0" / "metrics.csv")
    epochs = read_csv(logs / "update-0" / "epochs.csv")
    # 90 training rows (25% held out) at batch 32: 3 steps per epoch.
    assert [int(r["step"]) for r in steps] == list(range(1, 10))
    assert [int(r["epoch"]) for r in steps] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert {r["update"] for r in steps} == {"0"} and {float(r["lr"]) for r in steps} == {0.1}
    seconds = [float(r["seconds"]) for r in steps]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert f"final loss {float(steps[-1]['loss']):.4f}" in result.out
    # Per epoch: the mean of its steps' losses, the steps so far, the validation accuracy.
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2]
    assert [int(r["steps"]) for r in epochs] == [3, 6, 9]
    for e, row in enumerate(epochs):
        mean = np.mean([float(r["loss"]) for r in steps if int(r["epoch"]) == e])
        assert float(row["loss"]) == pytest.approx(mean)
        assert float(row["steps_per_s"]) > 0
    manifest = json.loads((state / "manifest.json").read_text())  # no log inside the state
    assert not any(name.endswith(".csv") for name in manifest["files"])
    assert not list(state.rglob("*.csv"))
    history = json.loads((state / "history.json").read_text())
    expected = history[-1]["train"]["val_accuracy"]
    assert [float(r["val_accuracy"]) for r in epochs] == pytest.approx(expected)


def test_csv_logger_default_folder_and_a_new_folder_per_update_never_overwriting(
    cli: Callable[..., CliResult],
    chunk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    digest: Callable[[Path], dict[str, str]],
) -> None:
    monkeypatch.chdir(tmp_path)
    first = cli(
        "update", "--data", chunk, "--next-state", "a0", "--epochs", "1", "--logger", "csv", *FAST
    )
    assert first.code == 0, first.describe()
    folder = tmp_path / "ricordo-logs" / "update-0"
    assert len(read_csv(folder / "metrics.csv")) == 4
    before = digest(folder)
    # Another lineage's update 0 in the same folder: a new folder, the first one untouched.
    second = cli(
        "update", "--data", chunk, "--next-state", "b0", "--epochs", "2", "--logger", "csv", *FAST
    )
    assert second.code == 0, second.describe()
    assert digest(folder) == before
    assert len(read_csv(tmp_path / "ricordo-logs" / "update-0-2" / "metrics.csv")) == 8
    # The next update of a lineage logs only when asked again: --logger is not taken from --state.
    third = cli(
        "update", "--data", chunk, "--state", "a0", "--next-state", "a1", "--epochs", "1", *FAST
    )
    assert third.code == 0, third.describe()
    assert sorted(p.name for p in (tmp_path / "ricordo-logs").iterdir()) == [
        "update-0",
        "update-0-2",
    ]
    fourth = cli(
        "update", "--data", chunk, "--state", "a1", "--next-state", "a2", "--epochs", "1",
        "--logger", "csv", *FAST,
    )  # fmt: skip
    assert fourth.code == 0, fourth.describe()
    rows = read_csv(tmp_path / "ricordo-logs" / "update-2" / "metrics.csv")
    assert {r["update"] for r in rows} == {"2"}


def test_csv_logger_keeps_the_steps_of_an_update_that_diverged(
    cli: Callable[..., CliResult], chunk: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    result = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "s0", "--epochs", "3",
        "--logger", f"csv:{logs}", "--no-progress", *FAST[:-2], "--lr", "1000",
    )  # fmt: skip
    assert_one_line_error(result, "the loss diverged to", "at update 0, epoch 0, step ")
    assert not (tmp_path / "s0").exists()
    # The steps before the divergence, flushed when the update failed: where it went wrong.
    done = re.search(r"epoch 0, step (\d+),", result.err)
    assert done is not None and int(done[1]) >= 1
    rows = read_csv(logs / "update-0" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, int(done[1]) + 1))
    assert {float(r["lr"]) for r in rows} == {1000}


def test_an_unusable_log_folder_is_a_one_line_error_before_training(
    cli: Callable[..., CliResult], chunk: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    result = cli(
        "update",
        "--data",
        chunk,
        "--next-state",
        tmp_path / "s0",
        "--logger",
        f"csv:{taken}",
        *FAST,
    )
    assert_one_line_error(result, f"--logger csv:{taken}", "cannot create a log folder", "writable")
    assert taken.read_text() == "mine\n" and not (tmp_path / "s0").exists()


@pytest.mark.parametrize("value", ["nope", "csv:", "csv,json"])
def test_an_unknown_logger_is_a_one_line_error(
    cli: Callable[..., CliResult], chunk: Path, tmp_path: Path, value: str
) -> None:
    result = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "s0", "--logger", value, *FAST
    )
    assert_one_line_error(result, "--logger", "is invalid", "csv[:DIR], tensorboard[:DIR]")
    assert not (tmp_path / "s0").exists()


# -- tensorboard, mlflow, wandb --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "modules"),
    [
        ("tensorboard", ("torch.utils.tensorboard", "tensorboard")),
        ("mlflow", ("mlflow",)),
        ("wandb", ("wandb",)),
    ],
)
def test_a_logger_whose_package_is_missing_fails_before_training_with_the_pip_line(
    cli: Callable[..., CliResult],
    chunk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    modules: tuple[str, ...],
) -> None:
    for module in modules:  # None in sys.modules: "import module" raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    logs = tmp_path / "logs"
    result = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "s0", "--logger",
        f"csv:{logs},{kind}", *FAST,
    )  # fmt: skip
    assert_one_line_error(
        result, f"--logger {kind} needs the {kind} package", f"pip install {kind}"
    )
    assert not (tmp_path / "s0").exists() and not logs.exists()  # nothing half-created


class _Recorder:
    """Stands in for a tool's API: records every call (name, args, kwargs)."""

    def __init__(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return self

        return call


def test_tensorboard_logger_uses_summary_writer_in_a_new_folder(
    cli: Callable[..., CliResult], chunk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda **kwargs: _Recorder(calls).__getattr__("SummaryWriter")(**kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    logs = tmp_path / "tb"
    result = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "s0", "--epochs", "2",
        "--val-fraction", "0.25", "--logger", f"tensorboard:{logs}", *FAST,
    )  # fmt: skip
    assert result.code == 0, result.describe()
    assert calls[0] == ("SummaryWriter", (), {"log_dir": str(logs / "update-0")})
    assert (logs / "update-0").is_dir()
    tags = [c[1][0] for c in calls if c[0] == "add_scalar"]
    assert tags.count("train/loss") == 6 and tags.count("train/lr") == 6
    assert tags.count("epoch/loss") == 2 and tags.count("epoch/val_accuracy") == 2
    assert calls[-1][0] == "close"


@pytest.mark.parametrize("kind", ["mlflow", "wandb"])
def test_mlflow_and_wandb_loggers_log_steps_and_epochs_through_their_apis(
    cli: Callable[..., CliResult],
    chunk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setitem(sys.modules, kind, _Recorder(calls))
    result = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "s0", "--epochs", "2",
        "--logger", f"{kind}:my-project", *FAST,
    )  # fmt: skip
    assert result.code == 0, result.describe()
    names = [c[0] for c in calls]
    if kind == "mlflow":
        assert calls[0] == ("set_experiment", ("my-project",), {})
        start = [c for c in calls if c[0] == "start_run"]
        assert len(start) == 1 and start[0][2]["run_name"] == "update-0"
        steps = [c for c in calls if c[0] == "log_metrics" and "train_loss" in c[1][0]]
        assert [c[2]["step"] for c in steps] == list(range(1, 9))
        assert calls[-1] == ("end_run", (), {"status": "FINISHED"})
    else:
        assert calls[0][0] == "init" and calls[0][2]["project"] == "my-project"
        assert calls[0][2]["name"] == "update-0" and calls[0][2]["config"]["method"] == "er"
        steps = [c for c in calls if c[0] == "log" and "train/loss" in c[1][0]]
        assert [c[2]["step"] for c in steps] == list(range(1, 9))
        assert calls[-1] == ("finish", (), {"exit_code": 0})
    assert names.count("log_metrics" if kind == "mlflow" else "log") == 8 + 2


def test_benchmark_logs_each_run_in_a_folder_of_its_own(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    result = cli(
        "benchmark", "--methods", "finetune,er", "--seeds", "0,1", "--updates", "2",
        "--epochs", "1", "--hidden", "16", "--threads", "1", "--workers", "1",
        "--logger", f"csv:{logs}", "--output", tmp_path / "out",
    )  # fmt: skip
    assert result.code == 0, result.describe()
    runs = ["er-seed0", "er-seed1", "finetune-seed0", "finetune-seed1"]
    assert sorted(p.name for p in logs.iterdir()) == runs  # every run starts at update 0
    for run in runs:
        assert sorted(p.name for p in (logs / run).iterdir()) == ["update-0", "update-1"]
        rows = read_csv(logs / run / "update-1" / "epochs.csv")
        assert [(r["update"], r["epoch"]) for r in rows] == [("1", "0")]
    # The in-process runs print their epoch lines (stderr is not a terminal here).
    assert len(epoch_lines(result.err)) == 4 * 2


def test_logger_specs_normalise_and_a_loaded_state_does_not_inherit_them(
    chunk: Path, tmp_path: Path
) -> None:
    from ricordo.config import UpdateConfig
    from ricordo.updater import Updater

    config = UpdateConfig(logger=["csv:a, TensorBoard", "csv:a"])
    assert config.logger == ("csv:a", "tensorboard")  # case, spaces, duplicates
    assert UpdateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    data = np.load(chunk)
    updater = Updater(logger=f"csv:{tmp_path / 'py'}", hidden=(16,), epochs=1, progress=False)
    updater.update(data["x"], data["y"])
    updater.update(data["x"], data["y"])  # the same Updater keeps logging: update-1
    assert sorted(p.name for p in (tmp_path / "py").iterdir()) == ["update-0", "update-1"]
    updater.save(str(tmp_path / "s1"))
    loaded = Updater.load(str(tmp_path / "s1"))
    assert loaded.config.logger == ()
    assert loaded.history[-1]["config"]["logger"] == [f"csv:{tmp_path / 'py'}"]  # the record


def test_a_log_folder_inside_a_state_is_refused_before_training(
    cli: Callable[..., CliResult],
    chunk: Path,
    tmp_path: Path,
    digest: Callable[[Path], dict[str, str]],
) -> None:
    first = cli("update", "--data", chunk, "--next-state", tmp_path / "s0", "--epochs", "1", *FAST)
    assert first.code == 0, first.describe()
    before = digest(tmp_path / "s0")
    inside_parent = cli(
        "update", "--data", chunk, "--state", tmp_path / "s0", "--next-state", tmp_path / "s1",
        "--logger", f"csv:{tmp_path / 's0' / 'logs'}", *FAST,
    )  # fmt: skip
    assert_one_line_error(
        inside_parent, "would write inside the state --state", "name a folder outside it"
    )
    assert digest(tmp_path / "s0") == before and not (tmp_path / "s1").exists()
    # The new state's own path: the log folder would also block the state's write at the end.
    inside_new = cli(
        "update", "--data", chunk, "--next-state", tmp_path / "s2",
        "--logger", f"tensorboard:{tmp_path / 's2'}", *FAST,
    )  # fmt: skip
    assert_one_line_error(inside_new, "would write inside the state --next-state")
    assert not (tmp_path / "s2").exists()
