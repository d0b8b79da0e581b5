"""Augmentation in the engine: validated config, trained weights change, evaluation does not,
ER augments replayed rows, memories keep the raw rows."""

from __future__ import annotations

import pytest
import torch

from ricordo import Updater
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.memory import TensorMemory
from ricordo.methods import METHODS, Batch, UpdateContext

FAST = dict(
    epochs=2, lr=0.1, memory_size=50, progress=False, hidden=(32,), batch_size=32, backend="torch"
)


def test_config_validates_the_spec() -> None:
    assert UpdateConfig(augment="crop:2,flip").augment == "crop:2,flip"
    assert UpdateConfig(augment=" none ").augment is None
    assert UpdateConfig(augment="").augment is None
    config = UpdateConfig(augment="crop:1")
    assert UpdateConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="--augment 'blur'.*choose one of: crop, flip, normalize"):
        UpdateConfig(augment="blur")
    with pytest.raises(ConfigError, match="normalize is deterministic.*random ops: crop, flip"):
        UpdateConfig(augment="crop:4,flip,normalize:cifar10")
    with pytest.raises(ConfigError, match="--augment 'flip:3'"):
        UpdateConfig().replace(augment="flip:3")


def test_augmentation_changes_training_but_not_evaluation(digits_scenario: Scenario) -> None:
    chunk, test = digits_scenario.train[0], digits_scenario.test[0]
    plain = Updater(method="finetune", **FAST)
    plain.update(chunk)
    augmented = Updater(method="finetune", augment="crop:1,flip", **FAST)
    augmented.update(chunk)
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(plain.model.parameters(), augmented.model.parameters(), strict=True)
    )
    assert changed
    assert augmented.history[-1]["config"]["augment"] == "crop:1,flip"
    # the same weights evaluate identically whatever the augment setting
    logits = augmented.predict_logits(test.x)
    result = augmented.evaluate(test)
    augmented.config = augmented.config.replace(augment=None)
    assert torch.equal(augmented.predict_logits(test.x), logits)
    assert augmented.evaluate(test) == result


def test_same_seed_same_augmented_update(digits_scenario: Scenario) -> None:
    chunk = digits_scenario.train[1]
    runs = []
    for _ in range(2):
        updater = Updater(method="er", augment="crop:1,flip", **FAST)
        updater.update(chunk)
        runs.append([p.detach().clone() for p in updater.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_memory_keeps_unaugmented_rows(digits_scenario: Scenario) -> None:
    chunk = digits_scenario.train[0]
    updater = Updater(method="er", augment="flip:1", **FAST)
    updater.update(chunk)
    assert updater.memory is not None and len(updater.memory) > 0
    stored = updater.memory.get()["x"].flatten(1)
    raw = {tuple(r) for r in chunk.x.flatten(1).tolist()}
    assert all(tuple(r) in raw for r in stored.tolist())
    flipped = {tuple(r) for r in chunk.x.flip(-1).flatten(1).tolist()} - raw
    assert not any(tuple(r) in flipped for r in stored.tolist())


def test_er_replay_batch_is_augmented(digits_scenario: Scenario) -> None:
    chunk = digits_scenario.train[0]
    config = UpdateConfig(method="er", augment="flip:1", **FAST)
    er = METHODS.get("er")(METHODS.get("er").Params(), TensorMemory(10, seed=0))
    assert er.memory is not None
    er.memory.add({"x": chunk.x[:10], "y": chunk.y[:10]})
    ctx = UpdateContext(
        model=torch.nn.Identity(),
        config=config,
        update_index=0,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seen_classes=[0, 1],
        chunk_classes=[0, 1],
    )
    replay = er.replay_batch(Batch(chunk.x[:2], chunk.y[:2]), ctx)
    assert replay is not None
    stored = {tuple(r) for r in chunk.x[:10].flip(-1).flatten(1).tolist()}
    assert all(tuple(r) in stored for r in replay.x.flatten(1).tolist())
    assert torch.equal(ctx.augment(chunk.x[:3]), chunk.x[:3].flip(-1))
    ctx.config = UpdateConfig(method="er", **FAST)
    rows = chunk.x[:3]
    assert ctx.augment(rows) is rows  # no augmentation: the very same tensor
