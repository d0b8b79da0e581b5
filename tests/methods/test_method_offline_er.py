"""offline-er: it learns, survives save/load (also in a new process), its memory changes only at
the end of an update (never holding rows of the chunk being trained on), and it weights the new
rows' loss by N_t / (N_t + N_previous)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    make_context,
    save_and_reload,
)
from torch.nn import functional as F

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods import Batch, UpdateContext


def test_offline_er_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    updater = Updater(method="offline-er", **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5


def test_offline_er_reload_predicts_and_continues_identically(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="offline-er", **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert (
        reloaded.method.state_json()
        == updater.method.state_json()
        == {"rows_seen": len(digits_scenario.train[0]) + len(digits_scenario.train[1])}
    )
    assert_reload_continues_identically(updater, reloaded, digits_scenario)


def _rows_of(rows: torch.Tensor, chunk_x: torch.Tensor) -> torch.Tensor:
    """For each row of ``rows``, whether it is a row of ``chunk_x``."""
    return (rows.flatten(1)[:, None] == chunk_x.flatten(1)[None]).all(-1).any(1)


def test_offline_er_memory_changes_only_at_the_end_of_an_update(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="offline-er", **FAST)
    method = updater.method
    memory = method.memory
    assert memory is not None
    snapshots: list[dict[str, torch.Tensor]] = []
    loss = method.loss

    def spy_loss(batch: Batch, ctx: UpdateContext) -> torch.Tensor:
        snapshots.append({k: v.clone() for k, v in memory.get().items()} if len(memory) else {})
        return loss(batch, ctx)

    method.loss = spy_loss  # type: ignore[method-assign]
    chunk0, chunk1 = digits_scenario.train[:2]
    updater.update(chunk0)
    assert snapshots and all(not s for s in snapshots)  # empty during the first update
    assert len(memory) == 100 and memory.seen == len(chunk0)
    after0 = {k: v.clone() for k, v in memory.get().items()}
    assert _rows_of(after0["x"], chunk0.x).all()

    snapshots.clear()
    updater.update(chunk1)
    assert len(snapshots) == updater.history[-1]["train"]["steps"]
    for seen in snapshots:  # every step saw the memory as the first update left it
        assert seen.keys() == after0.keys()
        for field, value in after0.items():
            assert torch.equal(seen[field], value)
    assert not _rows_of(after0["x"], chunk1.x).any()
    after1 = memory.get()
    from_chunk1 = _rows_of(after1["x"], chunk1.x)
    assert len(memory) == 100 and memory.seen == len(chunk0) + len(chunk1)
    assert 0 < int(from_chunk1.sum()) < 100  # reservoir over both chunks' rows
    assert (from_chunk1 | _rows_of(after1["x"], chunk0.x)).all()


def test_offline_er_weights_new_rows_by_their_share_of_all_rows(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="offline-er", **FAST)
    chunk0, chunk1 = digits_scenario.train[:2]
    updater.update(chunk0)
    model, memory = updater.model, updater.memory
    assert model is not None and memory is not None
    updater.method.begin_update(chunk1, None)  # type: ignore[arg-type]
    from ricordo.models import grow_output_layer

    grow_output_layer(model, 10, torch.Generator().manual_seed(1))
    ctx = make_context(updater, 1, seen_classes=list(range(10)), chunk_classes=chunk1.classes())
    batch = Batch(chunk1.x[:32], chunk1.y[:32])
    state = memory.generator.get_state()
    loss = updater.method.loss(batch, ctx).detach()
    memory.generator.set_state(state)
    rows = memory.sample(32)
    w = len(chunk1) / (len(chunk0) + len(chunk1))
    with torch.no_grad():
        expected = w * F.cross_entropy(model(batch.x), batch.y) + (1 - w) * F.cross_entropy(
            model(rows["x"]), rows["y"]
        )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # A fixed weight of 1 ignores the memory rows in the loss.
    fixed = Updater(method="offline-er", params={"loss_weight_new_data": 1.0}, **FAST)
    fixed.method.memory = memory
    with torch.no_grad():
        only_new = F.cross_entropy(model(batch.x), batch.y)
    torch.testing.assert_close(fixed.method.loss(batch, ctx).detach(), only_new)


def test_offline_er_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="loss_weight_new_data"):
        Updater(method="offline-er", params={"loss_weight_new_data": 1.5})
    with pytest.raises(ConfigError, match="memory_batch_size"):
        Updater(method="offline-er", params={"memory_batch_size": 0})
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="offline-er", memory_size=0)
