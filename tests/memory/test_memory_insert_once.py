"""--memory-insert: "every-epoch" (default, Mammoth's) re-offers a chunk's rows every epoch;
"once" offers each row once per update, so a reservoir is a uniform sample of distinct rows."""

from __future__ import annotations

import pytest
import torch

from ricordo import Updater
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.memory import TensorMemory

FAST = {"hidden": (16,), "progress": False, "threads": 1}


def _distinct(memory: TensorMemory) -> int:
    return int(torch.unique(memory.get()["x"].flatten(1), dim=0).shape[0])


def test_once_fills_the_memory_with_distinct_rows(digits_scenario: Scenario) -> None:
    chunk = digits_scenario.train[0]
    rows = int(torch.unique(chunk.x.flatten(1), dim=0).shape[0])
    for capacity in (200, 1000):
        updater = Updater(method="er", memory_size=capacity, epochs=5, memory_insert="once", **FAST)
        updater.update(chunk)
        memory = updater.memory
        assert memory is not None
        assert len(memory) == _distinct(memory) == min(capacity, rows)
        assert memory.seen == len(chunk)  # each row offered once, not once per epoch


def test_every_epoch_stays_the_default_and_repeats_rows(digits_scenario: Scenario) -> None:
    chunk = digits_scenario.train[0]
    default = Updater(method="er", memory_size=200, epochs=5, **FAST)
    explicit = Updater(method="er", memory_size=200, epochs=5, memory_insert="every-epoch", **FAST)
    assert default.config.memory_insert == "every-epoch"
    default.update(chunk)
    explicit.update(chunk)
    memory = default.memory
    assert memory is not None and explicit.memory is not None
    assert memory.seen == 5 * len(chunk)
    assert torch.equal(memory.get()["x"], explicit.memory.get()["x"])
    assert _distinct(memory) < 190  # re-offered rows take several slots (20 epochs: 146 of 200)


def test_once_gives_each_chunk_its_share_of_rows_whatever_the_epochs(
    digits_scenario: Scenario,
) -> None:
    """Chunk 0 trained 1 epoch, chunk 1 trained 6: with "once" each chunk holds a share of the
    memory proportional to its rows (a uniform sample of distinct rows); "every-epoch" gives
    chunk 1 about 6/7 of it, because its rows were offered six times."""
    first, second = digits_scenario.train[0], digits_scenario.train[1]
    expected = len(first) / (len(first) + len(second))
    share: dict[str, list[float]] = {"once": [], "every-epoch": []}
    for mode in share:
        for seed in range(4):
            updater = Updater(
                method="er", memory_size=200, epochs=1, memory_insert=mode, seed=seed, **FAST
            )
            updater.update(first)
            updater.update(second, epochs=6)
            assert updater.memory is not None
            labels = updater.memory.get()["y"]
            old = torch.isin(labels, torch.tensor(digits_scenario.chunk_classes[0]))
            share[mode].append(float(old.float().mean()))
    once = sum(share["once"]) / len(share["once"])
    every = sum(share["every-epoch"]) / len(share["every-epoch"])
    assert abs(once - expected) < 0.06, share  # binomial sd of a 4-seed mean: about 0.02
    assert every < expected / 2, share  # about 1/7


def test_memory_insert_is_validated_and_can_change_between_updates(
    digits_scenario: Scenario,
) -> None:
    with pytest.raises(ConfigError, match="--memory-insert 'twice' is invalid"):
        UpdateConfig(memory_insert="twice")
    updater = Updater(method="er", memory_size=50, epochs=2, **FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1], memory_insert="once")
    assert updater.history[-1]["config"]["memory_insert"] == "once"


def test_a_closed_memory_stores_and_counts_nothing() -> None:
    memory = TensorMemory(10, "reservoir", seed=0)
    batch = {"x": torch.arange(4.0)[:, None], "y": torch.arange(4)}
    memory.add(batch)
    with memory.closed():
        slots = memory.add(batch)
    assert slots.tolist() == [-1, -1, -1, -1]
    assert len(memory) == 4 and memory.seen == 4
    memory.add(batch)  # open again after the block
    assert len(memory) == 8 and memory.seen == 8
