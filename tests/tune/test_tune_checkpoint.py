"""Mid-update checkpoints (engine level, no Ray): a resumed update equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ricordo.data import Scenario
from ricordo.engine.checkpoint import EpochEnd
from ricordo.errors import ConfigError
from ricordo.updater import Updater

OPTIONS = {"memory_size": 60, "epochs": 4, "lr": 0.05, "momentum": 0.9, "batch_size": 32}


def _trained_first(scenario: Scenario, method: str) -> Updater:
    updater = Updater(method=method, **OPTIONS, seed=3, progress=False, threads=1)
    updater.update(scenario.train[0])
    return updater


def _everything(updater: Updater) -> dict[str, torch.Tensor]:
    assert updater.model is not None
    tensors = {f"model/{k}": v for k, v in updater.model.state_dict().items()}
    tensors.update({f"method/{k}": v for k, v in updater.method.state_tensors().items()})
    if updater.memory is not None:
        tensors.update({f"memory/{k}": v for k, v in updater.memory.get().items()})
        tensors["memory/generator"] = updater.memory.generator.get_state()
    return tensors


@pytest.mark.parametrize("method", ["er", "der", "ewc"])
def test_resume_equals_uninterrupted(
    digits_scenario: Scenario, tmp_path: Path, method: str
) -> None:
    """Stop after epoch 2 of 4 (checkpoint), resume in a fresh copy of the starting state:
    weights, method state, memory and history train report are bit-identical to a straight run."""
    state = tmp_path / "v0"
    _trained_first(digits_scenario, method).save(str(state))
    chunk = digits_scenario.train[1]

    straight = Updater.load(str(state))
    epochs_seen: list[int] = []
    straight.update(chunk, on_epoch_end=lambda end: epochs_seen.append(end.epochs_done))
    assert epochs_seen == [1, 2, 3, 4]

    class Interrupt(Exception):
        pass

    def stop_after_two(end: EpochEnd) -> None:
        end.save(tmp_path / f"ckpt-{end.epochs_done}")
        if end.epochs_done == 2:
            raise Interrupt

    interrupted = Updater.load(str(state))
    with pytest.raises(Interrupt):
        interrupted.update(chunk, on_epoch_end=stop_after_two)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-1", "ckpt-2"]

    resumed = Updater.load(str(state))
    after: list[int] = []
    record = resumed.update(
        chunk,
        resume_from=tmp_path / "ckpt-2",
        on_epoch_end=lambda end: after.append(end.epochs_done),
    )
    assert after == [3, 4]  # only the remaining epochs ran
    expected, got = _everything(straight), _everything(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    want = straight.history[-1]["train"]
    assert record["train"]["steps"] == want["steps"]
    assert record["train"]["final_loss"] == want["final_loss"]


def test_resume_refuses_another_configuration(digits_scenario: Scenario, tmp_path: Path) -> None:
    updater = _trained_first(digits_scenario, "er")
    updater.save(str(tmp_path / "v0"))
    first = Updater.load(str(tmp_path / "v0"))
    first.update(digits_scenario.train[1], on_epoch_end=lambda end: end.save(tmp_path / "c"))
    other = Updater.load(str(tmp_path / "v0"))
    with pytest.raises(ConfigError, match="another configuration"):
        other.update(digits_scenario.train[1], resume_from=tmp_path / "c", lr=0.01)
    with pytest.raises(ConfigError, match="is not an update checkpoint"):
        other.update(digits_scenario.train[1], resume_from=tmp_path / "missing")


def test_paused_trial_resumes_from_its_last_epoch(
    digits_scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainable as Ray drives it (report/get_checkpoint faked): a trial paused after its
    first epoch resumes at epoch 2 from the checkpoint and ends where an unpaused trial ends."""
    import itertools
    import shutil

    from ray import tune as tune_api  # the hpo and dev extras: a failure, not a skip, if missing

    from ricordo.tune import load_space
    from ricordo.tune.trainable import TrialJob, run_trial

    _trained_first(digits_scenario, "er").save(str(tmp_path / "v0"))
    space = load_space({"lr": {"uniform": [0.01, 0.1]}})
    job = TrialJob(digits_scenario.train[1], space, max_epochs=3, state=str(tmp_path / "v0"))
    reports: list[tuple[int, Path]] = []
    counter = itertools.count()

    class Pause(Exception):
        pass

    def fake_report(metrics: dict, checkpoint: object) -> None:
        kept = tmp_path / f"reported-{next(counter)}"
        shutil.copytree(checkpoint.path, kept)  # type: ignore[attr-defined]
        reports.append((metrics["epochs"], kept))
        if pause_after is not None and metrics["epochs"] == pause_after:
            raise Pause

    monkeypatch.setattr(tune_api, "report", fake_report)
    restored: list[object] = [None]
    monkeypatch.setattr(tune_api, "get_checkpoint", lambda: restored[0])

    pause_after: int | None = None
    run_trial({"lr": 0.05}, job)  # unpaused: epochs 1, 2, 3
    straight = [epochs for epochs, _ in reports]
    straight_last = load_checkpoint_tensors(reports[-1][1])
    reports.clear()
    pause_after = 1
    with pytest.raises(Pause):
        run_trial({"lr": 0.05}, job)
    restored[0] = tune_api.Checkpoint.from_directory(str(reports[-1][1]))
    pause_after = None
    run_trial({"lr": 0.05}, job)
    assert straight == [1, 2, 3]
    assert [epochs for epochs, _ in reports] == [1, 2, 3]  # resumed at 2, not restarted at 1
    resumed_last = load_checkpoint_tensors(reports[-1][1])
    for key, value in straight_last.items():
        assert torch.equal(value, resumed_last[key]), key


def load_checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from ricordo.engine.checkpoint import load_checkpoint

    return load_checkpoint(folder).tensors
