"""Shared fixtures: the built-in digits data cut into a class-incremental scenario."""

from __future__ import annotations

import pytest

from ricordo.data import Scenario, load_builtin, make_scenario


@pytest.fixture(scope="session")
def digits_scenario() -> Scenario:
    """digits, 5 chunks of 2 classes each (seed 0)."""
    train, test = load_builtin("digits")
    return make_scenario("class-incremental", train, test, updates=5, seed=0)
