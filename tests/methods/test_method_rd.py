"""rd: it learns, survives save/load (also in a new process), and follows Renate's definition:
an expert trained on the chunk gives the targets of the rows the chunk added to the memory, the
previous model those of the other rows, and the model is re-initialised and trained on the memory
with the double-distillation loss."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    assert_reload_continues_identically,
    save_and_reload,
)

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods import UpdateContext
from ricordo.methods.rd import double_distillation

# RD re-initialises the model every update and trains it on the memory only: it needs a memory
# holding the chunk and more epochs than the other methods' tests. The state and bookkeeping
# tests fit the memory for 10 epochs instead of the default recipe's 256 (test_memory_fit.py).
FAST = dict(epochs=10, lr=0.1, memory_size=300, progress=False, hidden=(64,))
QUICK = {**FAST, "params": {"fitting_epochs": 10}}


def test_rd_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    updater = Updater(method="rd", **FAST)  # the default fit: 256 epochs over the memory
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5


def test_rd_reload_predicts_and_continues_identically(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="rd", **QUICK)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario)
    assert set(updater.memory.fields) == {"x", "y"}  # targets are rebuilt, never stored


def test_rd_distils_expert_and_previous_model_into_a_fresh_model(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="rd", **{**QUICK, "memory_size": 400})
    method = updater.method
    assert method.memory is not None
    memory = method.memory
    updater.update(digits_scenario.train[0])
    before = {k: v.clone() for k, v in memory.get().items()}  # all of chunk 0 (< 400 rows)
    seen: dict[str, Any] = {}
    begin, training_data = method.begin_update, method.training_data

    def spy_begin(data: ArrayDataset, ctx: UpdateContext) -> None:
        seen["previous"] = copy.deepcopy(ctx.model)  # already grown for the new classes
        begin(data, ctx)
        seen["start"] = copy.deepcopy(ctx.model)
        seen["targets"] = method.targets.clone()

    def spy_training_data(data: ArrayDataset, ctx: UpdateContext) -> ArrayDataset:
        seen["data"] = training_data(data, ctx)
        return seen["data"]

    method.begin_update = spy_begin  # type: ignore[method-assign]
    method.training_data = spy_training_data  # type: ignore[method-assign]
    updater.update(digits_scenario.train[1])
    stored, targets = memory.get(), seen["targets"]
    # Consolidation trains on the memory, chunk 1 added, one target row per memory row.
    assert len(memory) == len(seen["data"]) == len(targets) == 400
    assert torch.equal(seen["data"].x, stored["x"])
    assert torch.equal(seen["data"].y, stored["y"])  # real labels (--mask-unseen reads them)
    # Rows kept from chunk 0: the previous model's logits (its grown head included).
    old = torch.isin(stored["y"], torch.tensor(digits_scenario.chunk_classes[0])).nonzero()[:, 0]
    assert len(old) > 100
    assert torch.equal(stored["x"][old], before["x"][old])
    with torch.no_grad():
        torch.testing.assert_close(targets[old], seen["previous"](stored["x"][old]))
    # Rows of the new chunk: the logits of an expert trained on it, which classify it.
    new = torch.isin(stored["y"], torch.tensor(digits_scenario.chunk_classes[1]))
    assert int(new.sum()) == 400 - len(old)
    assert (targets[new].argmax(1) == stored["y"][new]).float().mean() > 0.95
    with torch.no_grad():  # ... and are not the previous model's
        assert not torch.allclose(targets[new], seen["previous"](stored["x"][new]))
    # The model was re-initialised before consolidation.
    for a, b in zip(seen["start"].parameters(), seen["previous"].parameters(), strict=True):
        assert not torch.equal(a, b)
    assert method.targets is None  # dropped after the update


def test_double_distillation_centres_the_targets() -> None:
    targets = torch.tensor([[2.0, 0.0, 1.0], [5.0, 5.0, 2.0]])
    centred = targets - targets.mean(1, keepdim=True)
    assert float(double_distillation(centred, targets)) == 0.0
    assert float(double_distillation(centred, targets + 7.0)) == 0.0  # shift-invariant
    assert float(double_distillation(targets, targets)) > 0.0


def test_rd_needs_a_memory() -> None:
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="rd", memory_size=0)


def test_rd_works_with_mask_unseen(digits_scenario: Scenario) -> None:
    """RD regresses raw logits: a -inf from --mask-unseen would make the loss infinite. Neither
    the expert's nor the consolidation's loss has a cross-entropy over the model's classes to
    mask, so the flag changes nothing: the same model, bit for bit."""
    x = digits_scenario.test_all().x
    logits = []
    for mask in (True, False):
        updater = Updater(method="rd", mask_unseen=mask, **QUICK)
        updater.update(digits_scenario.train[0])
        updater.update(digits_scenario.train[1])
        logits.append(updater.predict_logits(x))
    assert torch.equal(logits[0], logits[1])
