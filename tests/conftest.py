"""Shared fixtures: the built-in digits data cut into a class-incremental scenario."""

from __future__ import annotations

import os

# Tests run in parallel workers (pytest -n 2) on 2 cores: one thread per process avoids the
# OpenMP oversubscription that makes tiny models 10x slower. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from ricordo.data import Scenario, load_builtin, make_scenario  # noqa: E402


@pytest.fixture(scope="session")
def digits_scenario() -> Scenario:
    """digits, 5 chunks of 2 classes each (seed 0)."""
    train, test = load_builtin("digits")
    return make_scenario("class-incremental", train, test, updates=5, seed=0)
