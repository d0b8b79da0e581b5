"""The tuning objective, measured the continual-learning way (never on test data).

Before any trial, the job sets aside, with a seed of its own:

* ``holdout`` (default 0.2) of the new chunk's rows: the *new* part of the validation set;
* ``holdout`` of the rows in the loaded state's rehearsal memory (rounded, at least one when the
  memory has two rows or more): the *memory* part, the only rows of earlier chunks an update job
  still has. The trials' memory is the state's memory without them (``TensorMemory.without``:
  a reservoir of capacity smaller by as many rows), so no trial ever trains on them.

Every trial trains on the rest of the chunk with that memory and, after each epoch, reports

    accuracy          = correct predictions on (new part + memory part) / their rows
    accuracy_new      = accuracy on the new part      (how well it learns the chunk)
    accuracy_memory   = accuracy on the memory part   (how much of the past it keeps)

``accuracy`` is the metric the schedulers rank trials by (mode max). A fresh lineage (no state),
a method without a memory, or a memory policy other than reservoir has no memory part: the
metric is then the new part's accuracy, and the job's record says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.memory import TensorMemory

METRIC = "accuracy"
MODE = "max"
DEFAULT_HOLDOUT = 0.2


@dataclass
class ValidationSplit:
    """What the trials train on and what they are scored on."""

    train: ArrayDataset
    new: ArrayDataset
    memory: ArrayDataset | None
    trial_memory: TensorMemory | None
    note: str = ""

    def describe(self) -> dict[str, Any]:
        """Row counts and how they were chosen (recorded in the state's history)."""
        return {
            "metric": "accuracy on held-out rows of the new chunk plus held-out memory rows",
            "new_rows": len(self.new),
            "memory_rows": 0 if self.memory is None else len(self.memory),
            "train_rows": len(self.train),
            "note": self.note,
        }


def split_for_tuning(
    chunk: ArrayDataset,
    memory: TensorMemory | None,
    *,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
) -> ValidationSplit:
    """Set aside ``holdout`` of the chunk and of the memory (see the module docstring)."""
    if not 0 < holdout < 1:
        raise ConfigError(f"--tune-holdout {holdout!r} is invalid; expected a fraction in (0, 1)")
    if len(chunk) < 2:
        raise ConfigError(
            f"the chunk has {len(chunk)} row(s); tuning needs at least 2 to hold some out"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(chunk), generator=generator)
    n_new = min(max(1, round(holdout * len(chunk))), len(chunk) - 1)
    train, new = chunk.subset(order[n_new:]), chunk.subset(order[:n_new])
    if memory is None or len(memory) < 2:
        note = "no memory rows to hold out: the metric is the new rows' accuracy"
        return ValidationSplit(train, new, None, memory, note)
    if memory.policy_name != "reservoir":
        note = (
            f"memory policy {memory.policy_name!r} cannot set rows aside: the metric is the "
            "new rows' accuracy"
        )
        return ValidationSplit(train, new, None, memory, note)
    n_memory = max(1, round(holdout * len(memory)))
    picks = torch.randperm(len(memory), generator=generator)[:n_memory]
    rows = memory.get(picks)
    held = ArrayDataset(rows["x"], rows[memory.label_field])
    note = f"{n_memory} of {len(memory)} memory rows held out (seeded, uniform)"
    return ValidationSplit(train, new, held, memory.without(picks), note)


def score(
    evaluate: Callable[[ArrayDataset], dict[str, float]], split: ValidationSplit
) -> dict[str, float]:
    """The objective's metrics for the model as ``evaluate`` sees it now."""
    new = evaluate(split.new)["accuracy"]
    metrics = {"accuracy_new": new, "new_rows": float(len(split.new))}
    correct, rows = new * len(split.new), len(split.new)
    if split.memory is not None:
        old = evaluate(split.memory)["accuracy"]
        metrics["accuracy_memory"] = old
        correct, rows = correct + old * len(split.memory), rows + len(split.memory)
    metrics["memory_rows"] = float(0 if split.memory is None else len(split.memory))
    metrics[METRIC] = correct / rows
    return metrics
