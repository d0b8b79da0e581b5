"""er-ace: it learns, survives save/load (also in a new process), and its incoming-batch loss
ignores the logits of classes absent from the batch while the replayed batch uses them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import FAST, assert_reload_continues_identically, make_context, save_and_reload

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods import Batch
from ricordo.models import grow_output_layer


def test_er_ace_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    updater = Updater(method="er-ace", **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5


def test_er_ace_reload_predicts_and_continues_identically(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="er-ace", **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario)


def _loss_gradient(updater: Updater, batch: Batch, update_index: int) -> torch.Tensor:
    """d loss / d logits of one ER-ACE step (new rows first, then the replayed rows)."""
    model = updater.model
    assert model is not None
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):  # type: ignore[no-untyped-def]
        output.retain_grad()
        captured.append(output)

    handle = model.register_forward_hook(keep)
    ctx = make_context(
        updater,
        update_index,
        seen_classes=list(range(10)),
        chunk_classes=batch.y.unique().tolist(),
    )
    updater.method.loss(batch, ctx).backward()
    handle.remove()
    assert len(captured) == 1
    return captured[0].grad


def test_er_ace_incoming_loss_ignores_absent_classes(digits_scenario: Scenario) -> None:
    updater = Updater(method="er-ace", **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.model is not None
    grow_output_layer(updater.model, 10, torch.Generator().manual_seed(1))
    chunk = digits_scenario.train[1]
    batch = Batch(chunk.x[:32], chunk.y[:32])
    present = torch.zeros(10, dtype=torch.bool)
    present[batch.y] = True
    assert 0 < int(present.sum()) < 10

    grad = _loss_gradient(updater, batch, update_index=1)
    assert grad.shape == (32 + 32, 10)  # new rows + memory_batch_size (= batch size) rows
    new, replay = grad[:32], grad[32:]
    assert torch.equal(new[:, ~present], torch.zeros_like(new[:, ~present]))
    assert new[:, present].abs().sum() > 0
    # The replayed rows (chunk 0's classes, absent from the batch) get the full cross-entropy.
    assert (replay[:, ~present].abs().sum(0) > 0).all()
    # In the first update there are no old classes to protect: plain cross-entropy (as in the
    # authors' code).
    updater.model.zero_grad()
    grad = _loss_gradient(updater, batch, update_index=0)
    assert (grad[:32, ~present].abs().sum(0) > 0).all()


def test_er_ace_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="memory_batch_size"):
        Updater(method="er-ace", params={"memory_batch_size": 0})
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="er-ace", memory_size=0)
