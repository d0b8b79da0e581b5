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
