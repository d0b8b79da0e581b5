"""super-er: with every extra part off it stores and replays the rows ER does; each part, when
on, changes training; the stored-logit EMA (which crashed in Renate) works; shrink-and-perturb
runs before every update. Its loss by hand, term by term: test_renate_fidelity.py.

Learning and reloading (in process and in a new process) are checked for the whole ER family in
test_method_cls_er.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FAST, make_context

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError

OFF = {
    "logit_weight": 0,
    "replay_weight": 0,
    "consistency_weight": 0,
    "pod_weight": 0,
    "shrink": 1,
    "perturb": 0,
}


def _train(method: str, params: dict, scenario: Scenario, updates: int) -> Updater:
    updater = Updater(method=method, params=params, **FAST)
    for chunk in scenario.train[:updates]:
        updater.update(chunk)
    return updater


def test_super_er_with_only_replay_stores_the_rows_er_stores(digits_scenario: Scenario) -> None:
    # One replayed batch per step, drawn like ER's: the memory's generator runs in step.
    er = _train("er", {}, digits_scenario, 2)
    sup = _train("super-er", {**OFF, "replay_weight": 1.0}, digits_scenario, 2)
    assert torch.equal(er.memory.get()["x"], sup.memory.get()["x"])
    assert er.memory.generator.get_state().equal(sup.memory.generator.get_state())


@pytest.mark.parametrize(
    "part",
    [
        {"logit_weight": 1.0},
        {"replay_weight": 1.0},
        {"consistency_weight": 0.1},
        {"pod_weight": 1.0},
        {"shrink": 0.95},
    ],
    ids=["logits", "replay", "consistency", "pod", "shrink"],
)
def test_each_part_of_super_er_changes_training(part: dict, digits_scenario: Scenario) -> None:
    er = _train("super-er", OFF, digits_scenario, 2)
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


def test_shrink_and_perturb_applies_before_every_update(digits_scenario: Scenario) -> None:
    # Renate shrinks and perturbs in on_train_start, which runs at the start of every update.
    updater = _train("super-er", {**OFF, "shrink": 0.5}, digits_scenario, 1)
    for index in (0, 1):
        before = [p.detach().clone() for p in updater.model.parameters()]
        updater.method.begin_update(digits_scenario.train[1], make_context(updater, index))
        for old, new in zip(before, updater.model.parameters(), strict=True):
            assert torch.equal(new, old * 0.5)


def test_super_er_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"shrink=0 must be in \(0, 1\]"):
        Updater(method="super-er", memory_size=10, params={"shrink": 0})
    with pytest.raises(ConfigError, match=r"replay_weight=-1 must be a finite number >= 0"):
        Updater(method="super-er", memory_size=10, params={"replay_weight": -1})
    with pytest.raises(ConfigError, match=r"logit_ema=2.0 must be in \[0, 1\]"):
        Updater(method="super-er", memory_size=10, params={"logit_ema": 2.0})
    with pytest.raises(ConfigError, match="stable_rate"):  # CLS-ER's checks apply
        Updater(method="super-er", memory_size=10, params={"stable_rate": 1.0, "plastic_rate": 0.5})
    with pytest.raises(ConfigError, match="pod_pooling"):  # and POD-ER's
        Updater(method="super-er", memory_size=10, params={"pod_pooling": "max"})
