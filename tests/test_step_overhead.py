"""The step loop skips the per-step work of options that are off (benchmarks/overhead.py).

One process, progress off, no loggers, data and memory on the CPU: no step moves a tensor to
the device it is on, goes through the data-parallel shard, calls the loggers or formats the
progress status. The results these skips must not change are covered by the benchmark (bit-
identical to a plain loop) and tests/test_updater.py.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.engine import distributed
from ricordo.engine.loggers import Loggers


def counting(counts: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, counting its calls under ``name`` and those made from the step loop's files
    (engine/loop.py and the methods) under ``name + " from the loop"``."""

    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        caller = sys._getframe(1).f_code.co_filename.replace(os.sep, "/")
        if caller.endswith("engine/loop.py") or "/ricordo/methods/" in caller:
            counts[f"{name} from the loop"] += 1
        return fn(*args, **kwargs)

    return counted


def test_er_steps_do_no_work_for_options_that_are_off(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    updater = Updater(method="er", epochs=2, memory_size=50, progress=False, hidden=(16,))
    updater.update(digits_scenario.train[0])  # the memory holds rows: the next update replays
    counts: Counter[str] = Counter()
    monkeypatch.setattr(torch.Tensor, "to", counting(counts, "Tensor.to", torch.Tensor.to))
    monkeypatch.setattr(distributed, "shard", counting(counts, "shard", distributed.shard))
    monkeypatch.setattr(Loggers, "step", counting(counts, "Loggers.step", Loggers.step))
    statuses: list[str] = []
    from ricordo.engine.progress import Progress

    advance = Progress.advance

    def recording(self: Progress, steps: int = 1, status: str = "") -> None:
        statuses.append(status)
        advance(self, steps, status)

    monkeypatch.setattr(Progress, "advance", recording)
    updater.update(digits_scenario.train[1])
    steps = updater.history[-1]["train"]["steps"]
    assert steps > 10 and len(statuses) == steps  # progress still counts every step
    assert statuses == [""] * steps  # the loss is formatted for a bar only
    # The memory moves its own indices (as in a plain loop); the loop and ER move nothing.
    assert counts["Tensor.to"] > 0 and counts["Tensor.to from the loop"] == 0, counts
    assert counts["shard"] == 0 and counts["Loggers.step"] == 0, counts
