"""gdumb: learns, survives save/load (also in a new process), keeps a class-balanced memory,
trains on memory rows only, and (reset=true) retrains from scratch at every update."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_continues_identically_in_a_new_process,
    assert_reload_continues_identically,
    save_and_reload,
    train_two_updates,
)

from ricordo import Updater
from ricordo.data import ArrayDataset, Scenario
from ricordo.errors import ConfigError


def test_gdumb_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    # From scratch on 100 rows (4 steps an epoch): more epochs than the other methods need.
    updater = Updater(method="gdumb", **{**FAST, "epochs": 10})
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5
    updater.update(digits_scenario.train[1])
    old_and_new = ArrayDataset.concat(digits_scenario.test[:2])
    assert updater.evaluate(old_and_new)["accuracy"] > 0.7  # chance: 0.25


@pytest.mark.parametrize("reset", [True, False])
def test_gdumb_reload_predicts_and_continues_identically(
    reset: bool, digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="gdumb", params={"reset": reset}, **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario)


def test_gdumb_state_continues_identically_in_a_new_process(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = train_two_updates(Updater(method="gdumb", **FAST), digits_scenario)
    assert_continues_identically_in_a_new_process({"v1": updater}, digits_scenario, tmp_path)


def test_gdumb_memory_is_class_balanced(digits_scenario: Scenario) -> None:
    updater = Updater(method="gdumb", **FAST)
    for k, chunk in enumerate(digits_scenario.train):
        updater.update(chunk)
        counts = torch.bincount(updater.memory.get()["y"])
        counts = counts[counts > 0]
        seen = sum(len(c) for c in digits_scenario.chunk_classes[: k + 1])
        assert len(updater.memory) == 100 and len(counts) == seen
        assert int(counts.max() - counts.min()) <= 1


def test_gdumb_trains_on_memory_rows_only(digits_scenario: Scenario) -> None:
    updater = Updater(method="gdumb", **FAST)
    updater.update(digits_scenario.train[0])
    inputs: list[torch.Tensor] = []
    assert updater.model is not None
    hook = updater.model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    updater.update(digits_scenario.train[1])
    hook.remove()
    stored = updater.memory.get()["x"].flatten(1)
    rows = torch.cat(inputs).flatten(1)
    assert len(rows) == FAST["epochs"] * len(stored)  # every memory row once per epoch
    match = (rows[:, None, :] == stored[None, :, :]).all(-1)  # (trained rows, memory rows)
    assert bool(match.any(1).all()), "a trained row is not in the memory"
    assert updater.history[-1]["train"]["steps"] == FAST["epochs"] * -(-len(stored) // 32)


def test_gdumb_reset_retrains_from_scratch(digits_scenario: Scenario) -> None:
    """With reset, update 1 does not depend on the weights update 0 left behind."""
    models = {}
    for reset in (True, False):
        for epochs in (1, 3):
            updater = Updater(method="gdumb", params={"reset": reset}, **{**FAST, "epochs": 1})
            updater.update(digits_scenario.train[0], epochs=epochs)
            updater.update(digits_scenario.train[1], epochs=2)
            models[reset, epochs] = updater.model

    def equal(a: torch.nn.Module, b: torch.nn.Module) -> list[bool]:
        return [torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True)]

    assert all(equal(models[True, 1], models[True, 3]))
    assert not any(equal(models[False, 1], models[False, 3]))


def test_gdumb_needs_a_memory() -> None:
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="gdumb", memory_size=0)
