"""si: it learns, survives save/load (also in a new process); its importance is the path
integral (non-negative on a first plain-SGD update, zero for a frozen parameter, zero-padded for
new classes), and it helps on permuted digits where fine-tuning forgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    save_and_reload,
)

from ricordo import Updater
from ricordo.data import Scenario, load_builtin, make_scenario
from ricordo.errors import ConfigError


def test_si_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    updater = Updater(method="si", **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5


def test_si_reload_predicts_and_continues_identically(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="si", **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    saved, loaded = updater.method.state_tensors(), reloaded.method.state_tensors()
    assert saved.keys() == loaded.keys() and len(saved) == 8  # importance + anchor of 4 params
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert_reload_continues_identically(updater, reloaded, digits_scenario, memory=None)


def test_si_importance_is_the_path_integral(digits_scenario: Scenario) -> None:
    """First update, plain SGD: every step adds -g·Δθ = lr·g² >= 0, so Ω >= 0; a frozen
    parameter never moves and gets Ω = 0; later updates add to Ω and pad new output rows."""
    updater = Updater(method="si", **FAST)
    model = updater.initialize(digits_scenario.train[0])
    model[1].bias.requires_grad_(False)
    frozen = model[1].bias.detach().clone()
    updater.update(digits_scenario.train[0])
    importance = updater.method.importance
    assert not importance["1.bias"].any()
    assert torch.equal(updater.method.anchor["1.bias"], frozen)
    for name in ("1.weight", "3.weight", "3.bias"):
        assert (importance[name] >= 0).all() and importance[name].sum() > 0
    first = {n: t.clone() for n, t in importance.items()}
    rows = first["3.weight"].shape[0]
    updater.update(digits_scenario.train[1])
    grown = updater.method.importance["3.weight"]
    assert grown.shape[0] > rows
    # With the penalty in the gradient Ω may dip slightly below zero, but it grows overall.
    assert float(grown.sum()) > float(first["3.weight"].sum())
    assert float(grown.clamp_max(0).sum()) > -0.01 * float(grown.clamp_min(0).sum())


def test_si_remembers_permuted_digits_better_than_finetune() -> None:
    train, test = load_builtin("digits")
    scenario = make_scenario("permutation", train, test, updates=2, seed=0)
    accuracy = {}
    for name in ("finetune", "si"):
        updater = Updater(method=name, epochs=10, lr=0.1, progress=False, hidden=(64,))
        for chunk in scenario.train:
            updater.update(chunk)
        accuracy[name] = updater.evaluate(scenario.test[0])["accuracy"]
    assert accuracy["si"] > accuracy["finetune"] + 0.05  # 0.86 vs 0.76 (seeds 0-3: +0.09..0.14)


def test_si_validates_its_parameters() -> None:
    with pytest.raises(ConfigError, match="xi"):
        Updater(method="si", params={"xi": 0})
    with pytest.raises(ConfigError, match="c="):
        Updater(method="si", params={"c": -1})
