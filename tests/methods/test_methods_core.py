"""finetune, er and joint: each learns, each survives a save/load, each shows its signature."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FAST, assert_reload_continues_identically, save_and_reload

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods import METHODS

CORE = ["finetune", "er", "joint"]


def test_registry_lists_the_core_methods() -> None:
    assert set(CORE) <= set(METHODS.names())


@pytest.mark.parametrize("method", CORE)
def test_method_learns_the_new_chunk(method: str, digits_scenario: Scenario) -> None:
    updater = Updater(method=method, **FAST)
    updater.update(digits_scenario.train[0])
    # Two classes per chunk: chance is 0.5.
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9


@pytest.mark.parametrize("method", CORE)
def test_reload_after_update_k_predicts_and_continues_identically(
    method: str, digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method=method, **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario, memory="if_present")


def test_finetune_forgets_and_er_remembers(digits_scenario: Scenario) -> None:
    final = {}
    for method in ("finetune", "er"):
        updater = Updater(method=method, epochs=10, memory_size=200, progress=False)
        for chunk in digits_scenario.train:
            updater.update(chunk)
        final[method] = updater.evaluate(digits_scenario.test[0])["accuracy"]
    assert final["finetune"] < 0.2  # chunk 0's classes are overwritten by later chunks
    assert final["er"] > final["finetune"] + 0.4


def test_er_memory_holds_a_sample_of_every_chunk(digits_scenario: Scenario) -> None:
    updater = Updater(method="er", **FAST)
    for chunk in digits_scenario.train[:3]:
        updater.update(chunk)
    assert updater.memory is not None
    stored = updater.memory.get()
    assert len(updater.memory) == 100
    classes = set(stored["y"].tolist())
    for chunk_classes in digits_scenario.chunk_classes[:3]:
        assert classes & set(chunk_classes), "the reservoir dropped a whole chunk"


def test_er_replays_memory_rows_in_every_step(digits_scenario: Scenario) -> None:
    """The loss of a step sees new rows plus memory_batch_size replayed rows."""
    updater = Updater(method="er", params={"memory_batch_size": 7}, **FAST)
    updater.update(digits_scenario.train[0])
    sizes: list[int] = []
    model = updater.model
    assert model is not None
    hook = model.register_forward_hook(lambda m, i, o: sizes.append(int(i[0].shape[0])))
    updater.update(digits_scenario.train[1])
    hook.remove()
    n = len(digits_scenario.train[1])
    per_epoch = [min(32, n - start) + 7 for start in range(0, n, 32)]  # the last batch is short
    assert sizes == per_epoch * FAST["epochs"]


def test_er_needs_a_memory() -> None:
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="er", memory_size=0)


def test_joint_keeps_every_sample_and_trains_on_all(digits_scenario: Scenario) -> None:
    updater = Updater(method="joint", **FAST)
    for chunk in digits_scenario.train[:3]:
        updater.update(chunk)
    assert updater.memory is not None
    assert len(updater.memory) == sum(len(c) for c in digits_scenario.train[:3])
    steps = updater.history[-1]["train"]["steps"]
    seen = sum(len(c) for c in digits_scenario.train[:3])
    assert steps == FAST["epochs"] * -(-seen // 32)
    old = digits_scenario.test[0]
    assert updater.evaluate(old)["accuracy"] > 0.9


def test_unknown_method_and_parameter_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown method 'ewc2'"):
        Updater(method="ewc2")
    with pytest.raises(ConfigError, match="no parameter.*alpha.*memory_batch_size"):
        Updater(method="er", params={"alpha": 1})
    with pytest.raises(ConfigError, match="memory_batch_size"):
        Updater(method="er", params={"memory_batch_size": "many"})
