"""cls-er, plus the checks shared by the ER family (cls-er, pod-er, super-er): each learns, each
state continues identically after a reload (in a new process: test_continue_in_process.py)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    assert_same_method_tensors,
    save_and_reload,
)
from torch import nn

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods.cls_er import CLSERParams
from ricordo.methods.components import copy_weights, grow_weights

ER_FAMILY = ["cls-er", "pod-er", "super-er"]


@pytest.mark.parametrize("method", ER_FAMILY)
def test_er_family_learns_the_new_chunk(method: str, digits_scenario: Scenario) -> None:
    updater = Updater(method=method, **FAST)
    updater.update(digits_scenario.train[0])
    # Two classes per chunk: chance is 0.5.
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9


@pytest.mark.parametrize("method", ER_FAMILY)
def test_er_family_reload_after_update_k_predicts_and_continues_identically(
    method: str, digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method=method, **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario, final_predictions=True)
    assert_same_method_tensors(updater, reloaded)


def _distance(weights: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    return float(sum((weights[k] - start[k]).square().sum() for k in start) ** 0.5)


def test_stable_model_moves_slower_than_plastic_slower_than_working(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="cls-er", **FAST)
    start = copy_weights(updater.initialize(digits_scenario.train[0]))
    updater.update(digits_scenario.train[0])  # all three start at the initial weights
    ema = updater.method.ema.weights
    stable, plastic = _distance(ema["stable"], start), _distance(ema["plastic"], start)
    working = _distance(copy_weights(updater.model), start)
    assert 0 < stable < plastic < working


def test_prediction_uses_the_stable_model(digits_scenario: Scenario) -> None:
    updater = Updater(method="cls-er", **FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    stable = copy.deepcopy(updater.model)
    stable.load_state_dict(updater.method.ema.weights["stable"])
    x = digits_scenario.test_all().x
    with torch.no_grad():
        expected, working = stable.eval()(x), updater.model.eval()(x)
    assert torch.equal(updater.predict_logits(x), expected)
    assert torch.equal(updater.predict(x), expected.argmax(1))
    assert not torch.equal(updater.predict(x), working.argmax(1))  # really not the working model


def test_ema_models_are_saved_and_reloaded_bit_for_bit(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="cls-er", **FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    updater.save(str(tmp_path / "v1"))
    reloaded = Updater.load(str(tmp_path / "v1")).method.ema
    ema = updater.method.ema
    assert reloaded.steps == ema.steps > 0
    for name in ("plastic", "stable"):
        model_shapes = {k: v.shape for k, v in updater.model.state_dict().items()}
        assert {k: v.shape for k, v in ema.weights[name].items()} == model_shapes  # grown head
        for key, value in ema.weights[name].items():
            assert torch.equal(reloaded.weights[name][key], value)


def test_ema_copies_grow_with_the_output_layer_from_the_working_rows() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    old = {k: v + 1 for k, v in copy_weights(model).items()}
    model[2] = nn.Linear(3, 5)
    grown = grow_weights(old, model)
    assert grown["2.weight"].shape == (5, 3)
    assert torch.equal(grown["2.weight"][:2], old["2.weight"])  # the EMA's own rows are kept
    assert torch.equal(grown["2.weight"][2:], model[2].weight[2:])  # new rows: the model's
    assert torch.equal(grown["0.bias"], old["0.bias"])


@pytest.mark.parametrize("adapt", [True, False])
def test_adapted_decays_let_the_stable_model_learn_new_classes(
    adapt: bool, digits_scenario: Scenario
) -> None:
    """5 epochs of a digits chunk are 45 steps: with the paper's decay rule (the defaults: 0.99,
    reached after 99 steps) the stable model, which predicts, stays near the average of all
    weights so far and misses the new classes; adapt_decays (ours) lets it learn them."""
    updater = Updater(method="cls-er", params={"adapt_decays": adapt}, **{**FAST, "epochs": 5})
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    new = updater.evaluate(digits_scenario.test[1])["accuracy"]
    old = updater.evaluate(digits_scenario.test[0])["accuracy"]
    if adapt:
        assert new > 0.8 and old > 0.8
    else:
        assert new < 0.5 < old


def test_ema_schedule_caps_the_decays_to_a_share_of_the_update() -> None:
    # The former defaults (the authors' argparse defaults), with the option on.
    params = CLSERParams(
        plastic_rate=0.9,
        stable_rate=0.7,
        plastic_decay=0.999,
        stable_decay=0.999,
        adapt_decays=True,
    )
    rates, decays = params.ema_schedule(200)
    assert rates == (0.9, 0.7)
    assert decays == pytest.approx((1 - 1 / (0.1 * 0.9 * 200), 1 - 1 / (0.5 * 0.7 * 200)))
    assert params.ema_schedule(20_000)[1] == (0.999, 0.999)  # long updates: the paper's
    assert params.ema_schedule(0)[1] == (0.999, 0.999)  # unknown length
    assert dataclasses.replace(params, adapt_decays=False).ema_schedule(200)[1] == (0.999, 0.999)
    assert dataclasses.replace(params, plastic_decay=0.5).ema_schedule(200)[1][0] == 0.5  # shorter
    assert params.ema_schedule(1)[1] == (0.0, 0.0)  # never negative


def test_cls_er_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match="stable_rate=0.95 must be <= plastic_rate=0.9"):
        Updater(method="cls-er", memory_size=10, params={"plastic_rate": 0.9, "stable_rate": 0.95})
    with pytest.raises(ConfigError, match="stable_decay=0.5 must be >= plastic_decay"):
        Updater(method="cls-er", memory_size=10, params={"stable_decay": 0.5})
    with pytest.raises(ConfigError, match=r"plastic_rate=1.5 must be in \[0, 1\]"):
        Updater(method="cls-er", memory_size=10, params={"plastic_rate": 1.5})
    with pytest.raises(ConfigError, match="consistency_weight=-1"):
        Updater(method="cls-er", memory_size=10, params={"consistency_weight": -1})
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="cls-er", memory_size=0)
