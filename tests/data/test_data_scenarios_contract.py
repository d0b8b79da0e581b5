"""What every registered scenario promises: chunk count, determinism, provenance, option checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ricordo.data import SCENARIOS, ArrayDataset, export_scenario, load_data, make_scenario
from ricordo.data.scenarios import scenario_options
from ricordo.errors import ConfigError

# Options that make each scenario depend on its seed (None: it must NOT depend on it).
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "class-incremental": ({}, True),
    "task-incremental": ({}, True),
    "blurry": ({"blurry": 0.2}, True),
    "permutation": ({}, True),
    "rotation": ({"split_data": True}, True),
    "hue-shift": ({"split_data": True}, True),
    "feature-sorting": ({"randomness": 0.5}, True),
    "iid": ({}, True),
    "grouped": ({}, False),
    "time-incremental": ({}, False),
}
UPDATES = 3


def _images(n_per_class: int, seed: int) -> ArrayDataset:
    """RGB 4x4 images in [0, 1], 6 classes, and a year per sample (2000..2002)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(6).repeat(n_per_class)
    x = torch.rand(len(y), 3, 4, 4, generator=g)
    return ArrayDataset(x, y, 2000 + torch.arange(len(y)) % 3)


@pytest.fixture(scope="module")
def data() -> tuple[ArrayDataset, ArrayDataset]:
    return _images(10, 0), _images(4, 1)


def _same(a, b) -> bool:
    return all(
        torch.equal(p.x, q.x) and torch.equal(p.y, q.y)
        for p, q in zip(a.train + a.test, b.train + b.test, strict=True)
    )


def test_every_registered_scenario_is_covered() -> None:
    assert sorted(CASES) == SCENARIOS.names()


@pytest.mark.parametrize("name", sorted(CASES))
def test_contract(name: str, data: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, test = data
    options, seeded = CASES[name]
    a = make_scenario(name, train, test, UPDATES, 5, options=options)
    assert a.name == name and len(a) == UPDATES == len(a.test) == len(a.chunk_classes)
    assert all(len(c) > 0 for c in a.train)
    assert all(c.feature_shape == train.feature_shape for c in a.train + a.test)
    # provenance: JSON-able, every option with its value, enough to rebuild the same scenario
    info = json.loads(json.dumps(a.info))
    assert info == a.info
    assert info["scenario"] == name and info["seed"] == 5 and info["updates"] == UPDATES
    assert set(info["options"]) == set(scenario_options(name))
    assert all(info["options"][k] == v for k, v in options.items())
    again = make_scenario(name, train, test, info["updates"], info["seed"], options=info["options"])
    assert _same(a, again) and again.info == a.info
    # determinism
    assert _same(a, make_scenario(name, train, test, UPDATES, 5, options=options))
    b = make_scenario(name, train, test, UPDATES, 6, options=options)
    assert _same(a, b) is not seeded
    # groups travel with the samples
    for chunk in a.train + a.test:
        assert chunk.group is not None and len(chunk.group) == len(chunk)


@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_option(name: str, data: tuple[ArrayDataset, ArrayDataset]) -> None:
    valid = ", ".join(sorted(scenario_options(name))) or "(none)"
    with pytest.raises(ConfigError) as info:
        make_scenario(name, *data, UPDATES, 0, options={"colour": 1, "bogus": 2})
    assert str(info.value) == (
        f"scenario {name!r} has no option 'bogus', 'colour'; valid options: {valid}"
    )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "updates", "what"),
    [
        ("class-incremental", {}, 7, "7 classes; digits has 6"),
        ("task-incremental", {}, 7, "7 classes; digits has 6"),
        ("blurry", {}, 7, "7 classes; digits has 6"),
        ("iid", {}, 61, "61 samples; digits has 60"),
        ("feature-sorting", {}, 61, "61 samples; digits has 60"),
        ("permutation", {"split_data": True}, 61, "61 samples; digits has 60"),
        ("rotation", {"split_data": True}, 61, "61 samples; digits has 60"),
        ("hue-shift", {"split_data": True}, 61, "61 samples; digits has 60"),
        ("grouped", {}, 4, "4 distinct groups; digits has 3"),
        ("time-incremental", {}, 4, "4 distinct groups; digits has 3"),
    ],
)
def test_too_many_updates(
    name: str, options: dict, updates: int, what: str, data: tuple[ArrayDataset, ArrayDataset]
) -> None:
    with pytest.raises(ConfigError, match=f"with {updates} updates needs at least {what}$"):
        make_scenario(name, *data, updates, 0, data_name="digits", options=options)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("updates", "seed"), [(0, 0), (2, -1), (1.5, 0)])
def test_bad_updates_or_seed(
    name: str, updates: Any, seed: int, data: tuple[ArrayDataset, ArrayDataset]
) -> None:
    with pytest.raises(ConfigError, match="must be an integer"):
        make_scenario(name, *data, updates, seed)


def test_option_keys_accept_dashes(data: tuple[ArrayDataset, ArrayDataset]) -> None:
    sc = make_scenario("iid", *data, 2, 0, options={"split-test": False})
    assert sc.info["options"] == {"split_test": False}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("blurry", {"blurry": 1.0}, r"option blurry must be a number in \[0, 1\), got 1.0"),
        ("blurry", {"blurry": "lots"}, "option blurry must be a number"),
        ("iid", {"split_test": "yes"}, "option split_test must be true or false, got 'yes'"),
        ("rotation", {"degrees": [0, 90]}, "option degrees has 2 values but there are 3 updates"),
        ("rotation", {"degrees": "90"}, "option degrees must be a list of numbers"),
        ("hue-shift", {"shifts": [0, 0.1, None]}, "option shifts must be a list of numbers"),
        ("feature-sorting", {"statistic": "median"}, "statistic='median' is unknown; choose"),
        ("feature-sorting", {"feature": 3}, "feature=3 is out of range; digits has 3 features"),
        ("feature-sorting", {"feature": 1.5}, "option feature must be an integer index"),
        ("feature-sorting", {"randomness": 2}, r"randomness must be a number in \[0, 1\]"),
        ("class-incremental", {"class_order": [0, 1, 2]}, "class_order must list each class"),
        ("task-incremental", {"class_order": [0, 1, 2, 3, 4, 4]}, "must list each class"),
        ("grouped", {"groupings": [[2000], [2001]]}, "has 2 groupings but there are 3 updates"),
        ("grouped", {"groupings": [[2000], [2001], [1999]]}, "only groups of digits"),
        ("grouped", {"groupings": [[2000], [2000], [2001]]}, "each group at most once"),
        ("grouped", {"groupings": [2000, 2001, 2002]}, "list of non-empty lists"),
    ],
)
def test_bad_option_values(
    name: str, options: dict, message: str, data: tuple[ArrayDataset, ArrayDataset]
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_scenario(name, *data, UPDATES, 0, data_name="digits", options=options)


def test_export_carries_groups_and_task_flag(
    tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset]
) -> None:
    sc = make_scenario("task-incremental", *data, 2, 0)
    export_scenario(sc, tmp_path)
    meta = json.loads((tmp_path / "scenario.json").read_text())
    assert meta["task_incremental"] is True and meta["info"]["task_incremental"] is True
    back = load_data(tmp_path / "train-1.npz")
    assert back.group is not None and torch.equal(back.group, sc.train[1].group)
    with np.load(tmp_path / "test-all.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["group", "x", "y"]
    plain = make_scenario("class-incremental", data[0], data[1], 2, 0)
    assert plain.task_incremental is False
    export_scenario(plain, tmp_path / "plain")
    assert (
        json.loads((tmp_path / "plain" / "scenario.json").read_text())["task_incremental"] is False
    )
