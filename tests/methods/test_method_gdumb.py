"""gdumb: learns, survives save/load (also in a new process), keeps a class-balanced memory,
trains on memory rows only, (reset=true) retrains from scratch at every update, and warns when a
domain-incremental stream leaves the full memory nothing to store."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    save_and_reload,
)

from ricordo import Updater
from ricordo.data import ArrayDataset, Scenario, load_builtin, make_scenario
from ricordo.errors import ConfigError

# The paper's 256 epochs over the memory in the tests that only check state and bookkeeping
# would be slow; the recipe itself is tested in test_memory_fit.py and learns below.
QUICK = {"fitting_epochs": 8}


def test_gdumb_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    # The default recipe: 256 epochs over the memory of 100 rows, from scratch each update.
    updater = Updater(method="gdumb", **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5
    updater.update(digits_scenario.train[1])
    old_and_new = ArrayDataset.concat(digits_scenario.test[:2])
    assert updater.evaluate(old_and_new)["accuracy"] > 0.7  # chance: 0.25


@pytest.mark.parametrize("reset", [True, False])
def test_gdumb_reload_predicts_and_continues_identically(
    reset: bool, digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="gdumb", params={"reset": reset, **QUICK}, **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario)


def test_gdumb_memory_is_class_balanced(digits_scenario: Scenario) -> None:
    updater = Updater(method="gdumb", params=QUICK, **FAST)
    for k, chunk in enumerate(digits_scenario.train):
        updater.update(chunk)
        counts = torch.bincount(updater.memory.get()["y"])
        counts = counts[counts > 0]
        seen = sum(len(c) for c in digits_scenario.chunk_classes[: k + 1])
        assert len(updater.memory) == 100 and len(counts) == seen
        assert int(counts.max() - counts.min()) <= 1


def test_gdumb_trains_on_memory_rows_only(digits_scenario: Scenario) -> None:
    updater = Updater(method="gdumb", params={"fitting_epochs": None}, **FAST)  # --epochs
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
            params = {"reset": reset, "fitting_epochs": None}  # epochs=... sets the fit
            updater = Updater(method="gdumb", params=params, **{**FAST, "epochs": 1})
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


def test_gdumb_warns_when_a_domain_incremental_chunk_is_not_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every class in every chunk: the full balanced memory has no class to make room for."""
    train, test = load_builtin("digits")
    scenario = make_scenario("permutation", train, test, updates=2, seed=0)
    updater = Updater(method="gdumb", params=QUICK, **FAST)
    with caplog.at_level(logging.WARNING, logger="ricordo.methods.gdumb"):
        updater.update(scenario.train[0])
        assert not caplog.records  # the first chunk fills the memory
        before = updater.memory.get()["x"].clone()
        updater.update(scenario.train[1])
    assert torch.equal(updater.memory.get()["x"], before)
    (record,) = caplog.records
    assert "update 1 brings no new class" in record.getMessage()
    assert "use er or offline-er" in record.getMessage()
