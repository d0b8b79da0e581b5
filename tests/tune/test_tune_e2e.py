"""End to end: ``ricordo tune`` with 4 cheap trials on digits, then a warm-started second job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ricordo.cli import app
from ricordo.data import Scenario
from ricordo.updater import Updater

SPACE = "lr: {loguniform: [0.02, 0.2]}\nmomentum: {choice: [0.0, 0.9]}\nweight_decay: 0.0\n"


@pytest.fixture(scope="module", autouse=True)
def embedded_ray() -> Iterator[None]:
    """One Ray for the module (ricordo tune reuses a running Ray and leaves it running)."""
    import ray  # the hpo and dev extras: missing it is a failure, not a skip

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _npz(path: Path, chunk: object) -> str:
    np.savez(path, x=chunk.x.numpy(), y=chunk.y.numpy())  # type: ignore[attr-defined]
    return str(path)


def test_cli_tune_writes_best_state_with_every_trial(
    digits_scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths, as typed in a shell: the trials run in other processes and folders."""
    monkeypatch.chdir(tmp_path)
    first = Updater(method="er", memory_size=100, epochs=2, progress=False, threads=1)
    first.update(digits_scenario.train[0])
    first.save(str(tmp_path / "v0"))
    (tmp_path / "space.yaml").write_text(SPACE)
    args = [
        "tune",
        "--data", _npz(Path("train-1.npz"), digits_scenario.train[1]),
        "--state", "v0",
        "--next-state", "v1",
        "--space", "space.yaml",
        "--scheduler", "asha",
        "--trials", "4",
        "--max-epochs", "2",
        "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "tuned update 1 (er, asha): 4 trials; best lr=" in result.output
    assert result.output.count(" done: lr=") == 4  # one progress line per finished trial

    tuned = Updater.load(str(tmp_path / "v1"))
    record = tuned.history[-1]
    job = record["tune"]
    assert len(job["trials"]) == 4
    for trial in job["trials"]:
        assert set(trial["config"]) == {"lr", "momentum"}
        assert 1 <= trial["epochs"] <= 2 and 0.0 <= trial["metric"] <= 1.0
    best = job["best"]
    assert best["metric"] == max(t["metric"] for t in job["trials"])
    assert job["validation"]["memory_rows"] == 20 and job["validation"]["new_rows"] > 0
    # The next state is the best configuration's update, for the epochs its trial trained.
    assert record["config"]["lr"] == best["config"]["lr"]
    assert record["train"]["epochs"] == best["epochs"]
    seen_test = digits_scenario.test[1]
    assert tuned.evaluate(seen_test)["accuracy"] > 0.5  # two classes learnt: chance is 0.5
    assert tuned.predict(seen_test.x[:5]).shape == (5,)


def test_warm_start_tries_the_earlier_best_first(digits_scenario: Scenario, tmp_path: Path) -> None:
    """A job for chunk 2 first evaluates the best configuration an earlier job recorded in the
    state's history, then explores (PASHA: paused trials resume from their checkpoints)."""
    from ricordo.tune import tune

    earlier = Updater(method="er", memory_size=60, epochs=1, progress=False, threads=1)
    earlier.update(digits_scenario.train[0])
    earlier.update(digits_scenario.train[1])
    earlier_best = {"lr": 0.0731, "momentum": 0.9}
    earlier.history[-1]["tune"] = {"best": {"config": earlier_best, "epochs": 1, "metric": 0.9}}
    earlier.save(str(tmp_path / "v1"))
    space = {"lr": {"loguniform": [0.02, 0.2]}, "momentum": {"choice": [0.0, 0.9]}}
    later = tune(
        digits_scenario.train[2],
        space=space,
        state=str(tmp_path / "v1"),
        next_state=str(tmp_path / "v2"),
        scheduler="pasha",
        trials=3,
        max_epochs=2,
        progress=False,
    )
    assert later.record["warm_start"] == [earlier_best]
    assert later.trials[0].config == earlier_best and later.trials[0].warm_start
    assert all(not t.warm_start and t.config != earlier_best for t in later.trials[1:])
    assert len(Updater.load(str(tmp_path / "v2")).history[-1]["tune"]["trials"]) == 3
