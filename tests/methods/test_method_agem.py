"""a-gem: learns, survives save/load (also in a new process), fills a reservoir with past chunks
only, and projects every gradient onto the half-space where it does not conflict with g_ref.
Its gradient by hand and the 1/5/20-epoch question: test_agem_fidelity.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    save_and_reload,
)
from torch.nn import functional as F

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods import Batch, UpdateContext


def test_agem_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    updater = Updater(method="a-gem", **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5
    updater.update(digits_scenario.train[1])
    assert updater.evaluate(digits_scenario.test[1])["accuracy"] > 0.4  # chance: 0.25


def test_agem_reload_predicts_and_continues_identically(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="a-gem", **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario)


def test_agem_memory_is_a_reservoir_of_past_chunks(digits_scenario: Scenario) -> None:
    """Each chunk's rows are offered once, after its update: the memory never holds rows of
    the chunk being learnt (the paper, Mammoth and Avalanche store past tasks only)."""
    updater = Updater(method="a-gem", **FAST)
    first, second = digits_scenario.train[:2]
    seen_during: list[int] = []
    before_step = updater.method.before_step

    def spy(batch: Batch, ctx: UpdateContext) -> None:
        seen_during.append(len(updater.memory))
        before_step(batch, ctx)

    updater.method.before_step = spy  # type: ignore[method-assign]
    updater.update(first)
    assert set(seen_during) == {0}  # the first update trains with an empty memory
    assert updater.memory.seen == len(first) and len(updater.memory) == 100
    stored = set(updater.memory.get()["y"].tolist())
    assert stored == set(digits_scenario.chunk_classes[0])
    seen_during.clear()
    updater.update(second)
    assert set(seen_during) == {100}
    assert updater.memory.seen == len(first) + len(second)
    assert set(updater.memory.get()["y"].tolist()) > stored  # now both chunks


def test_agem_projected_gradient_does_not_conflict_with_the_reference(
    digits_scenario: Scenario,
) -> None:
    """Around each before_step: recompute g_ref from the very rows the method sampled; after the
    projection g . g_ref >= 0, with g . g_ref = 0 exactly where the raw gradient conflicted, and
    the gradient is untouched where it did not."""
    updater = Updater(method="a-gem", params={"memory_batch_size": 16}, **FAST)
    method = updater.method
    memory = method.memory
    assert memory is not None
    sampled: list[dict[str, torch.Tensor]] = []
    sample, before_step = memory.sample, method.before_step
    projected, kept, empty = [], [], []

    def spy_sample(n: int) -> dict[str, torch.Tensor]:
        sampled.append(sample(n))
        return sampled[-1]

    def spy_before_step(batch: Batch, ctx: UpdateContext) -> None:
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        if len(memory) == 0:  # the first update: nothing to project on
            empty.append(1)
            return before_step(batch, ctx)
        raw = torch.cat([p.grad.flatten() for p in params])
        before_step(batch, ctx)
        after = torch.cat([p.grad.flatten() for p in params])
        rows = sampled[-1]
        assert len(rows["y"]) == 16
        loss = F.cross_entropy(ctx.logits(rows["x"]), rows["y"])
        ref = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        scale = float(ref.norm() * after.norm())
        assert float(after @ ref) >= -1e-5 * scale
        if float(raw @ ref) < 0:
            expected = raw - (raw @ ref) / (ref @ ref) * ref
            torch.testing.assert_close(after, expected)
            assert abs(float(after @ ref)) <= 1e-4 * scale
            projected.append(1)
        else:
            assert torch.equal(after, raw)
            kept.append(1)

    memory.sample, method.before_step = spy_sample, spy_before_step  # type: ignore[method-assign]
    for chunk in digits_scenario.train[:2]:  # mostly agreeing, then mostly conflicting
        updater.update(chunk)
    first, second = (record["train"]["steps"] for record in updater.history)
    assert len(empty) == first and len(projected) + len(kept) == second
    assert projected and kept  # both branches were exercised


def test_agem_needs_a_memory() -> None:
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="a-gem", memory_size=0)
    with pytest.raises(ConfigError, match="memory_batch_size"):
        Updater(method="a-gem", params={"memory_batch_size": 0})
