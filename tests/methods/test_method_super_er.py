"""super-er: with every extra part off it is ER bit for bit; each part, when on, changes
training; the stored-logit EMA (which crashed in Renate) works; shrink-and-perturb runs before
every update but the first.

Learning and reloading (in process and in a new process) are checked for the whole ER family in
test_method_cls_er.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FAST, assert_same_weights, make_context

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError

OFF = {"logit_weight": 0, "consistency_weight": 0, "pod_weight": 0, "shrink": 1, "perturb": 0}


def _train(method: str, params: dict, scenario: Scenario, updates: int) -> Updater:
    updater = Updater(method=method, params=params, **FAST)
    for chunk in scenario.train[:updates]:
        updater.update(chunk)
    return updater


def test_super_er_with_every_extra_part_off_is_er_bit_for_bit(digits_scenario: Scenario) -> None:
    er = _train("er", {}, digits_scenario, 3)
    sup = _train("super-er", OFF, digits_scenario, 3)
    assert_same_weights(er, sup)
    x = digits_scenario.test_all().x
    assert torch.equal(er.predict_logits(x), sup.predict_logits(x))
    assert torch.equal(er.memory.get()["x"], sup.memory.get()["x"])


@pytest.mark.parametrize(
    "part",
    [{"logit_weight": 1.0}, {"consistency_weight": 0.1}, {"pod_weight": 1.0}, {"shrink": 0.95}],
    ids=["logits", "consistency", "pod", "shrink"],
)
def test_each_part_of_super_er_changes_training(part: dict, digits_scenario: Scenario) -> None:
    er = _train("er", {}, digits_scenario, 2)
    sup = _train("super-er", {**OFF, **part}, digits_scenario, 2)
    assert math.isfinite(sup.history[-1]["train"]["final_loss"])
    different = any(
        not torch.equal(a, b)
        for a, b in zip(er.model.parameters(), sup.model.parameters(), strict=True)
    )
    assert different


def test_stored_logits_follow_the_model_with_logit_ema(digits_scenario: Scenario) -> None:
    # Renate crashed on ema_memory_update_gamma < 1 (AttributeError on the buffer's metadata).
    kept = _train("super-er", {**OFF, "logit_weight": 1.0}, digits_scenario, 2)
    moved = _train("super-er", {**OFF, "logit_weight": 1.0, "logit_ema": 0.5}, digits_scenario, 2)
    assert torch.equal(kept.memory.get()["x"], moved.memory.get()["x"])  # same rows stored
    stored_kept, stored_moved = kept.memory.get()["logits"], moved.memory.get()["logits"]
    assert torch.isfinite(stored_moved).all()
    assert not torch.equal(stored_kept, stored_moved)
    # Refreshed logits are closer to what the model outputs now.
    with torch.no_grad():
        now = moved.model.eval()(moved.memory.get()["x"])
        before = kept.model.eval()(kept.memory.get()["x"])
    k = now.shape[1]
    gap_moved = (stored_moved[:, :k] - now).abs().mean()
    gap_kept = (stored_kept[:, :k] - before).abs().mean()
    assert gap_moved < gap_kept


def test_shrink_and_perturb_applies_before_every_update_but_the_first(
    digits_scenario: Scenario,
) -> None:
    updater = _train("super-er", {**OFF, "shrink": 0.5}, digits_scenario, 1)
    before = [p.detach().clone() for p in updater.model.parameters()]
    for index, factor in ((0, 1.0), (1, 0.5)):
        ctx = make_context(updater, index)
        updater.method.begin_update(digits_scenario.train[1], ctx)
        for old, new in zip(before, updater.model.parameters(), strict=True):
            assert torch.equal(new, old * factor)


def test_super_er_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"shrink=0 must be in \(0, 1\]"):
        Updater(method="super-er", memory_size=10, params={"shrink": 0})
    with pytest.raises(ConfigError, match=r"logit_ema=2.0 must be in \[0, 1\]"):
        Updater(method="super-er", memory_size=10, params={"logit_ema": 2.0})
    with pytest.raises(ConfigError, match="stable_rate"):  # CLS-ER's checks apply
        Updater(method="super-er", memory_size=10, params={"stable_rate": 1.0, "plastic_rate": 0.5})
    with pytest.raises(ConfigError, match="pod_pooling"):  # and POD-ER's
        Updater(method="super-er", memory_size=10, params={"pod_pooling": "max"})
