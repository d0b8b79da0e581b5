"""Task-incremental (same split, task id known, logit mask) and blurry class-incremental."""

from __future__ import annotations

import pytest
import torch

from ricordo.data import ArrayDataset, make_scenario
from ricordo.data.scenarios import Scenario, mask_logits, task_mask
from ricordo.errors import ConfigError


def _data(n_classes: int = 10, per_class: int = 6) -> ArrayDataset:
    y = torch.arange(n_classes).repeat(per_class)
    return ArrayDataset(torch.arange(len(y), dtype=torch.float32).reshape(-1, 1), y)


@pytest.fixture(scope="module")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    """Digits-sized synthetic data (10 classes, 140 train / 36 test samples each), no sklearn."""
    g = torch.Generator().manual_seed(0)
    y_train, y_test = torch.arange(10).repeat(140), torch.arange(10).repeat(36)
    return (
        ArrayDataset(torch.rand(len(y_train), 1, 8, 8, generator=g), y_train),
        ArrayDataset(torch.rand(len(y_test), 1, 8, 8, generator=g), y_test),
    )


def _same_chunks(a: list[ArrayDataset], b: list[ArrayDataset]) -> bool:
    return all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(a, b, strict=True))


def test_task_incremental_is_the_class_split_with_task_ids() -> None:
    train, test = _data(), _data(per_class=2)
    ci = make_scenario("class-incremental", train, test, 5, 4)
    ti = make_scenario("task-incremental", train, test, 5, 4)
    assert ti.task_incremental is True and ci.task_incremental is False
    assert ti.chunk_classes == ci.chunk_classes
    assert _same_chunks(ti.train, ci.train) and _same_chunks(ti.test, ci.test)
    assert ti.info["class_order"] == ci.info["class_order"]
    assert ti.info["task_incremental"] is True and "task_incremental" not in ci.info


def test_class_order_option_fixes_the_split() -> None:
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    sc = make_scenario("task-incremental", _data(), _data(), 5, 0, options={"class_order": order})
    assert sc.chunk_classes == [[9, 8], [7, 6], [5, 4], [3, 2], [1, 0]]
    other_seed = make_scenario(
        "task-incremental", _data(), _data(), 5, 3, options={"class_order": order}
    )
    assert other_seed.chunk_classes == sc.chunk_classes
    assert sc.info["options"] == {"class_order": order} and sc.info["class_order"] == order


def test_task_mask_and_masked_accuracy() -> None:
    sc = make_scenario(
        "task-incremental", _data(), _data(), 5, 0, options={"class_order": list(range(10))}
    )
    mask = task_mask(sc, 1, 10)
    assert mask.dtype == torch.bool and mask.tolist() == [i in (2, 3) for i in range(10)]
    # a model with outputs for only 3 classes: chunk 1 keeps unit 2, chunk 4 keeps none
    assert task_mask(sc, 1, 3).tolist() == [False, False, True]
    assert not task_mask(sc, 4, 3).any()
    logits = torch.tensor([[5.0, 0.0, 1.0, 2.0, 9.0, 0, 0, 0, 0, 0]])
    masked = mask_logits(logits, mask)
    assert masked.argmax(1).item() == 3  # class 4 and 0 score higher but are another task's
    assert torch.isinf(masked[0, [0, 1, 4]]).all() and masked[0, 2] == 1.0
    # a fully masked row predicts an index the label cannot equal (no outputs for its classes)
    assert mask_logits(logits[:, :3], task_mask(sc, 4, 3)).argmax(1).item() not in (8, 9)
    with pytest.raises(ConfigError, match="chunk 5 is out of range; the scenario has 5"):
        task_mask(sc, 5, 10)


def test_task_flag_default_keeps_positional_construction() -> None:
    d = _data()
    sc = Scenario("x", [d], [d], [[0]], {})
    assert sc.task_incremental is False


def test_blurry_moves_the_requested_fraction(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, test = digits
    ci = make_scenario("class-incremental", train, test, 5, 0)
    sc = make_scenario("blurry", train, test, 5, 0, options={"blurry": 0.1})
    assert sc.chunk_classes == ci.chunk_classes  # nominal groups: the class-incremental ones
    assert _same_chunks(sc.test, ci.test)
    assert sum(len(c) for c in sc.train) == len(train)
    # the train chunks partition the train set: the group is used as a sample id here
    ids = make_scenario(
        "blurry", ArrayDataset(train.x, train.y, torch.arange(len(train))), test, 5, 0
    )
    all_ids = torch.cat([c.group for c in ids.train])
    assert torch.equal(torch.sort(all_ids).values, torch.arange(len(train)))
    for k, chunk in enumerate(sc.train):
        own = torch.isin(chunk.y, torch.tensor(sc.chunk_classes[k]))
        foreign = 1.0 - own.float().mean().item()
        assert 0.07 <= foreign <= 0.13, (k, foreign)
        others = set(chunk.y[~own].tolist())
        assert len(others) >= 3  # from several other chunks' classes, not one
        # each chunk lost about 10 % of its own samples
        kept = int(own.sum())
        assert abs(kept - 0.9 * len(ci.train[k])) <= 1
    moved = sc.info["moved"]
    assert all(moved[k][k] == 0 for k in range(5))
    assert [sum(r) for r in moved] == [round(0.1 * len(c)) for c in ci.train]
    assert sc.info["options"] == {"blurry": 0.1, "class_order": None}


def test_blurry_zero_is_class_incremental_and_seeded() -> None:
    train = _data()
    ci = make_scenario("class-incremental", train, train, 5, 2)
    zero = make_scenario("blurry", train, train, 5, 2, options={"blurry": 0})
    assert _same_chunks(zero.train, ci.train)
    a = make_scenario("blurry", train, train, 5, 2, options={"blurry": 0.5})
    b = make_scenario("blurry", train, train, 5, 2, options={"blurry": 0.5})
    c = make_scenario("blurry", train, train, 5, 1, options={"blurry": 0.5})
    assert _same_chunks(a.train, b.train) and not _same_chunks(a.train, c.train)
    one = make_scenario("blurry", train, train, 1, 0, options={"blurry": 0.5})
    assert len(one.train[0]) == len(train)  # nowhere to move to
