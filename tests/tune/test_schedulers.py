"""make_scheduler: each name's Ray Tune scheduler, and one-line errors for bad input."""

from __future__ import annotations

import sys

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from ricordo.errors import ConfigError
from ricordo.tune.pasha import PASHAScheduler
from ricordo.tune.schedulers import SCHEDULERS, make_scheduler


def test_each_name_builds_its_scheduler() -> None:
    assert SCHEDULERS == ("random", "grid", "asha", "pasha")
    common = {"metric": "objective", "mode": "max", "max_epochs": 27}
    assert type(make_scheduler("random", **common)) is FIFOScheduler
    assert type(make_scheduler("grid", **common)) is FIFOScheduler
    asha = make_scheduler("asha", **common, min_epochs=1, reduction_factor=3)
    assert isinstance(asha, ASHAScheduler)
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [27, 9, 3, 1]
    pasha = make_scheduler("pasha", **common)
    assert isinstance(pasha, PASHAScheduler)
    assert pasha.pasha.levels == [1, 3, 9] and pasha.pasha.current_max_t == 3
    assert pasha.pasha.mode == "max"


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("hyperband", {}, "unknown scheduler 'hyperband'; choose one of random, grid, asha, pasha"),
        ("asha", {"mode": "up"}, "mode must be 'min' or 'max', got 'up'"),
        ("asha", {"metric": ""}, "metric must be a non-empty name, got ''"),
        ("pasha", {"max_epochs": 0}, "max_epochs must be a whole number >= 1, got 0"),
        ("pasha", {"min_epochs": 5, "max_epochs": 3}, "min_epochs (5) must not exceed max_epochs"),
        ("asha", {"reduction_factor": 1}, "reduction_factor must be a whole number >= 2, got 1"),
        ("random", {"seed": -1}, "seed must be a whole number >= 0, got -1"),
    ],
)
def test_bad_values_are_one_line_config_errors(name: str, kwargs: dict, message: str) -> None:
    arguments = {"metric": "objective", "mode": "max", "max_epochs": 9, **kwargs}
    with pytest.raises(ConfigError) as error:
        make_scheduler(name, **arguments)
    assert str(error.value) == message or str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.tune.schedulers", None)  # import -> ImportError
    with pytest.raises(ConfigError) as error:
        make_scheduler("pasha", metric="objective", mode="max", max_epochs=9)
    assert str(error.value) == (
        'the pasha scheduler runs on Ray Tune, which is not installed; pip install "ricordo[hpo]"'
    )
