"""Held-out rows and the regression gate (issue 13): split, storage, verdicts, flip rates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ricordo import Updater
from ricordo.data import ArrayDataset, load_builtin, make_scenario
from ricordo.errors import ConfigError, UpdateRejectedError
from ricordo.gate import HOLDOUT_FILE, Gate, compare_predictions, judge, split_holdout
from ricordo.state import read_manifest

FAST = {"epochs": 5, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def weeks() -> list[ArrayDataset]:
    """digits cut into 3 chunks of the same distribution (every class in each)."""
    train, test = load_builtin("digits")
    return make_scenario("iid", train, test, updates=3, seed=0).train


def harmful(chunk: ArrayDataset) -> ArrayDataset:
    """The chunk with every label moved to the next class: an update that teaches garbage."""
    return ArrayDataset(chunk.x, (chunk.y + 1) % 10)


def weights(updater: Updater) -> dict[str, torch.Tensor]:
    assert updater.model is not None
    return {k: v.clone() for k, v in updater.model.state_dict().items()}


# -- the split ---------------------------------------------------------------------------------


def test_split_is_seeded_stratified_and_keeps_a_training_row_per_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 1 + [3] * 2)
    train, held = split_holdout(labels, 0.2, cap=1000, seed=7)
    again_train, again_held = split_holdout(labels, 0.2, cap=1000, seed=7)
    assert torch.equal(train, again_train) and torch.equal(held, again_held)
    assert not torch.equal(held, split_holdout(labels, 0.2, cap=1000, seed=8)[1])
    counts = torch.bincount(labels[held], minlength=4).tolist()
    assert counts == [10, 6, 0, 0]  # round(n * 0.2), but a class of 1 or 2 rows keeps them
    assert sorted(train.tolist() + held.tolist()) == list(range(len(labels)))
    assert set(labels[train].tolist()) == {0, 1, 2, 3}


def test_split_is_capped_per_chunk() -> None:
    labels = torch.arange(10).repeat_interleave(100)  # 1,000 rows, 10 classes
    _, held = split_holdout(labels, 0.5, cap=25, seed=0)
    assert len(held) == 25
    per_class = torch.bincount(labels[held], minlength=10)
    assert int(per_class.max() - per_class.min()) <= 1  # still spread over the classes


def test_holdout_off_by_default_writes_nothing(weeks: list[ArrayDataset], tmp_path: Path) -> None:
    updater = Updater(method="finetune", **FAST)
    record = updater.update(weeks[0])
    assert record["data"]["samples"] == len(weeks[0]) and "held_out" not in record["data"]
    assert "holdout" not in record
    updater.save(str(tmp_path / "v0"))
    manifest = read_manifest(str(tmp_path / "v0"))
    assert HOLDOUT_FILE not in manifest["files"] and "holdout" not in manifest["meta"]


# -- never trained on, stored, carried -----------------------------------------------------------


def test_held_out_rows_never_reach_training_and_round_trip(tmp_path: Path) -> None:
    # Unique rows, and a reservoir large enough to keep every row ER trains on: the memory is
    # then exactly the training rows, and must share none with the held-out rows.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    updater = Updater(
        method="er", memory_size=1000, memory_insert="once", holdout=0.25, holdout_max=30, **FAST
    )
    record = updater.update(x, y)
    held = updater.holdout
    assert record["data"] == {**record["data"], "samples": 170, "held_out": 30}
    assert updater.memory is not None and len(updater.memory) == 170
    memory_rows = {tuple(r.tolist()) for r in updater.memory.get()["x"]}
    held_rows = {tuple(r.tolist()) for r in held.x}
    assert len(held_rows) == 30 and not memory_rows & held_rows
    assert memory_rows | held_rows == {tuple(r.tolist()) for r in x}

    updater.save(str(tmp_path / "v0"))
    loaded = Updater.load(str(tmp_path / "v0"))
    for name in ("x", "y", "update"):
        assert torch.equal(getattr(loaded.holdout, name), getattr(held, name))
    loaded.update(x[:100] + 0.01, y[:100])  # a second chunk adds its own rows
    assert loaded.holdout.per_update() == {0: 30, 1: 25}
    assert torch.equal(loaded.holdout.x[:30], held.x)
    manifest = read_manifest(str(tmp_path / "v0"))
    assert manifest["meta"]["holdout"] == {"rows": 30, "per_update": {"0": 30}}


# -- flip rates ----------------------------------------------------------------------------------


def test_flip_rates_on_a_hand_example() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1])
    old = torch.tensor([0, 1, 2, 3, 0])  # right on rows 0, 1, 2
    new = torch.tensor([0, 2, 2, 0, 1])  # right on rows 0, 2, 3, 4
    flips = compare_predictions(old, new, labels)
    assert (flips.old_accuracy, flips.new_accuracy) == (0.6, 0.8)
    assert flips.negative_flip_rate == 0.2  # row 1: old right, new wrong
    assert flips.positive_flip_rate == 0.4  # rows 3, 4
    assert judge(flips, 0.02, "rows").passed  # better accuracy, yet one negative flip
    back = judge(compare_predictions(new, old, labels), 0.02, "rows")
    assert not back.passed and back.regression == pytest.approx(0.2)
    assert back.negative_flip_rate == 0.4
    assert judge(compare_predictions(new, old, labels), 0.2, "rows").passed  # at the limit


def test_max_regression_is_validated() -> None:
    with pytest.raises(ConfigError) as error:
        Gate(max_regression=-0.1)
    assert str(error.value) == (
        "--max-regression -0.1 is invalid; expected an accuracy drop in [0, 1], such as 0.02"
    )


# -- the gate ------------------------------------------------------------------------------------


def test_gate_passes_a_good_update_and_refuses_a_harmful_one(
    weeks: list[ArrayDataset], tmp_path: Path
) -> None:
    updater = Updater(method="finetune", holdout=0.2, **FAST)
    first = updater.update(weeks[0], gate=True)  # nothing to regress from: passes
    assert first["gate"]["passed"] and first["gate"]["old_accuracy"] is None

    good = updater.update(weeks[1], gate=Gate(max_regression=0.02))
    verdict = good["gate"]
    assert verdict["passed"] and verdict["compared_on"] == "held-out rows of updates 0"
    assert verdict["samples"] == updater.holdout.per_update()[0]
    assert verdict["new_accuracy"] > 0.5 and verdict["regression"] <= 0.02
    assert updater.history[-1]["gate"] == verdict

    before = weights(updater)
    holdout, history = updater.holdout, list(updater.history)
    with pytest.raises(UpdateRejectedError) as refused:
        updater.update(harmful(weeks[2]), gate=Gate(), lr=0.2)
    result = refused.value.result
    assert not result.passed and result.regression > 0.3
    assert result.compared_on == "held-out rows of updates 0,1"
    assert result.negative_flip_rate >= result.regression  # fewer right: at least as many flips
    # The Updater is as it was; the candidate holds the refused model and its verdict.
    after = weights(updater)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert updater.holdout is holdout and updater.history == history
    assert updater.config.lr == FAST.get("lr", 0.05)
    candidate = refused.value.candidate
    assert candidate.updates == 3 and candidate.history[-1]["gate"]["passed"] is False
    candidate.save(str(tmp_path / "rejected"))
    assert read_manifest(str(tmp_path / "rejected"))["meta"]["gate"]["passed"] is False


def test_gate_without_held_out_rows_refuses_before_training(weeks: list[ArrayDataset]) -> None:
    updater = Updater(method="finetune", **FAST)
    updater.update(weeks[0])
    before = weights(updater)
    with pytest.raises(ConfigError, match="the gate has nothing to compare on"):
        updater.update(weeks[1], gate=True)
    assert updater.updates == 1
    assert all(torch.equal(before[k], v) for k, v in weights(updater).items())


def test_gate_on_given_data(weeks: list[ArrayDataset]) -> None:
    train, test = load_builtin("digits")
    updater = Updater(method="finetune", **FAST)
    updater.update(weeks[0])
    record = updater.update(weeks[1], gate=Gate(data=test))
    assert record["gate"]["compared_on"] == "the gate data"
    assert record["gate"]["samples"] == len(test)
    assert record["gate"]["new_accuracy"] == pytest.approx(updater.evaluate(test)["accuracy"])


def test_lazy_chunks_hold_out_rows_too(weeks: list[ArrayDataset]) -> None:
    from ricordo.data import LazyDataset

    chunk = weeks[0]
    pairs = [(chunk.x[i], int(chunk.y[i])) for i in range(len(chunk))]  # a map-style dataset
    lazy = Updater(method="finetune", holdout=0.1, **FAST)
    record = lazy.update(LazyDataset(pairs))
    eager = Updater(method="finetune", holdout=0.1, **FAST)
    eager.update(chunk)
    assert record["data"]["held_out"] == len(lazy.holdout) == len(eager.holdout) > 0
    assert torch.equal(lazy.holdout.x, eager.holdout.x)  # the same seeded rows
    assert record["data"]["samples"] == len(chunk) - len(lazy.holdout)
