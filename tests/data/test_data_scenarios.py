"""Class-incremental scenario: a seeded class partition, exact chunk contents, refusals.

Other scenarios: test_data_scenarios_classes.py, _transforms.py, _streams.py, _contract.py.
"""

from __future__ import annotations

import pytest
import torch

from ricordo.data import SCENARIOS, ArrayDataset, Scenario, make_scenario
from ricordo.data.scenarios import class_incremental
from ricordo.errors import ConfigError, DataError


def _data(n_classes: int = 10, per_class: int = 4, offset: int = 0) -> ArrayDataset:
    y = torch.arange(n_classes).repeat(per_class)  # interleaved: order inside chunks is testable
    x = (torch.arange(len(y), dtype=torch.float32) + offset).reshape(-1, 1)
    return ArrayDataset(x, y)


@pytest.mark.parametrize("updates", [1, 3, 5, 10])
def test_chunks_partition_classes_and_samples(updates: int) -> None:
    train, test = _data(), _data(per_class=2, offset=1000)
    sc = make_scenario("class-incremental", train, test, updates=updates, seed=3)
    assert isinstance(sc, Scenario) and len(sc) == updates == sc.updates
    flat = [c for cs in sc.chunk_classes for c in cs]
    assert sorted(flat) == list(range(10))
    sizes = [len(cs) for cs in sc.chunk_classes]
    assert max(sizes) - min(sizes) <= 1
    assert sum(len(t) for t in sc.train) == len(train)
    assert sum(len(t) for t in sc.test) == len(test)
    for k in range(updates):
        assert sc.train[k].classes() == sorted(sc.chunk_classes[k])
        assert sc.test[k].classes() == sorted(sc.chunk_classes[k])
        # samples keep their source order (x encodes the source index)
        assert torch.all(sc.train[k].x[1:, 0] > sc.train[k].x[:-1, 0])
        for cls in sc.chunk_classes[k]:
            assert int((sc.train[k].y == cls).sum()) == 4
    assert len(sc.test_all()) == len(test)
    assert sorted(sc.test_all().x[:, 0].tolist()) == sorted(test.x[:, 0].tolist())


def test_chunk_samples_match_source_exactly() -> None:
    train = _data()
    sc = class_incremental(train, _data(), 4, 0)
    for k, classes in enumerate(sc.chunk_classes):
        mask = torch.isin(train.y, torch.tensor(classes))
        assert torch.equal(sc.train[k].x, train.x[mask]) and torch.equal(
            sc.train[k].y, train.y[mask]
        )


def test_seed_determines_order() -> None:
    train, test = _data(), _data()
    a = make_scenario("class-incremental", train, test, 5, 7)
    b = make_scenario("class-incremental", train, test, 5, 7)
    assert a.chunk_classes == b.chunk_classes and a.info == b.info
    others = [make_scenario("class-incremental", train, test, 5, s).chunk_classes for s in range(8)]
    assert any(o != a.chunk_classes for o in others)
    assert a.info["class_order"] == [c for cs in a.chunk_classes for c in cs]
    assert a.info["seed"] == 7 and a.info["updates"] == 5


def test_non_contiguous_class_ids() -> None:
    train = ArrayDataset(torch.zeros(6, 2), torch.tensor([3, 9, 5, 3, 9, 5]))
    sc = class_incremental(train, train, 3, 0)
    assert sorted(c for cs in sc.chunk_classes for c in cs) == [3, 5, 9]


def test_test_missing_a_class_is_fine() -> None:
    train = _data()
    test = train.subset(torch.nonzero(train.y != 4, as_tuple=True)[0])
    sc = class_incremental(train, test, 10, 1)
    k = next(i for i, cs in enumerate(sc.chunk_classes) if cs == [4])
    assert len(sc.test[k]) == 0 and len(sc.train[k]) == 4


def test_too_many_updates() -> None:
    with pytest.raises(ConfigError) as info:
        make_scenario("class-incremental", _data(), _data(), 11, 0, data_name="digits")
    assert str(info.value) == (
        "class-incremental with 11 updates needs at least 11 classes; digits has 10"
    )


@pytest.mark.parametrize("updates", [0, -1, 2.5, True])
def test_bad_updates(updates) -> None:
    with pytest.raises(ConfigError, match="updates must be an integer >= 1"):
        class_incremental(_data(), _data(), updates, 0)


def test_bad_seed() -> None:
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        class_incremental(_data(), _data(), 2, -1)


def test_test_classes_unknown_to_train() -> None:
    with pytest.raises(DataError, match=r"classes \[10, 11\] that its training set lacks"):
        class_incremental(_data(), _data(n_classes=12), 2, 0)


def test_unknown_scenario_lists_known() -> None:
    assert "class-incremental" in SCENARIOS.names()
    with pytest.raises(ConfigError, match="unknown scenario 'nope'; choose one of: blurry, class-"):
        make_scenario("nope", _data(), _data(), 2, 0)


def test_scenario_shape_checked() -> None:
    d = _data()
    with pytest.raises(DataError, match="must match"):
        Scenario("x", [d, d], [d], [[0], [1]], {})
    with pytest.raises(DataError, match="no chunks"):
        Scenario("x", [], [], [], {})
