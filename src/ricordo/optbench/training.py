"""One optbench run: train a problem's model with one optimiser, learning rate and seed, and
record its learning curves the way DeepOBS's runners do (methods.md section 11.3).

The train and test sets are evaluated before the first epoch and after every epoch, so each curve
holds ``epochs + 1`` values. A run whose loss becomes NaN or infinite stops there, and the rest
of its curves repeat the values before training (DeepOBS's penalty: a diverged run counts as
never having learnt anything).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ricordo.optbench.optimizers import build_optimizer
from ricordo.optbench.problems import Problem, Split

_EVAL_BATCH = 1024


@dataclass
class RunRecord:
    """The curves and settings of one run (one problem, optimiser, learning rate and seed)."""

    problem: str
    optimizer: str
    lr: float
    seed: int
    num_epochs: int
    batch_size: int
    steps_per_epoch: int
    metric: str  # "accuracy" (higher is better) or "loss" (lower is better)
    train_losses: list[float]
    test_losses: list[float]
    train_accuracies: list[float] | None = None
    test_accuracies: list[float] | None = None
    diverged_at_epoch: int | None = None  # the epoch in which the loss became non-finite
    phase: str = "grid"  # "grid": the learning-rate search; "seeds": a rerun of the best
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def curve(self) -> list[float]:
        """The test metric after 0, 1, ..., ``num_epochs`` epochs."""
        values = self.test_accuracies if self.metric == "accuracy" else self.test_losses
        assert values is not None
        return values

    @property
    def final(self) -> float:
        """The test metric after the last epoch (DeepOBS's final performance)."""
        return self.curve[-1]

    def to_dict(self) -> dict[str, Any]:
        """The run as the JSON DeepOBS writes (its key names), plus Ricordo's fields."""
        data = asdict(self)
        data["testproblem"] = data.pop("problem")
        data["optimizer_name"] = data.pop("optimizer")
        data["random_seed"] = data.pop("seed")
        data["optimizer_hyperparams"] = {"lr": data.pop("lr")}
        if self.metric != "accuracy":
            data.pop("train_accuracies")
            data.pop("test_accuracies")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """The record :meth:`to_dict` wrote."""
        values = dict(data)
        values["problem"] = values.pop("testproblem")
        values["optimizer"] = values.pop("optimizer_name")
        values["seed"] = values.pop("random_seed")
        values["lr"] = values.pop("optimizer_hyperparams")["lr"]
        return cls(**values)


def evaluate_split(problem: Problem, model: nn.Module, split: Split) -> tuple[float, float | None]:
    """Mean loss and accuracy (None without one) of ``model`` over a whole split."""
    loss_sum, correct, count = 0.0, 0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(split), _EVAL_BATCH):
            index = torch.arange(start, min(start + _EVAL_BATCH, len(split)))
            batch = problem.evaluate(model, *split.rows(index))
            loss_sum += float(batch.loss) * len(index)
            if batch.correct is not None:
                correct += batch.correct
                count += batch.count
    model.train(was_training)
    return loss_sum / len(split), (correct / count if count else None)


def train_run(
    problem: Problem, optimizer: str, lr: float, seed: int, epochs: int, phase: str = "grid"
) -> RunRecord:
    """Train ``problem``'s model for ``epochs`` epochs and return its curves.

    ``seed`` sets the model's initialisation (torch's global generator is restored afterwards)
    and the order of the training batches. Batches are drawn without replacement; the last,
    incomplete batch of an epoch is dropped, as DeepOBS's data loaders do.
    """
    train, test = problem.data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = problem.model()
    order = torch.Generator().manual_seed(seed)
    opt = build_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr)
    steps = max(1, len(train) // problem.batch_size)
    curves: dict[str, list[float]] = {
        "train_loss": [],
        "test_loss": [],
        "train_acc": [],
        "test_acc": [],
    }

    def record() -> bool:
        """Evaluate both splits; False when a loss is not finite."""
        for name, split in (("train", train), ("test", test)):
            loss, acc = evaluate_split(problem, model, split)
            curves[f"{name}_loss"].append(loss)
            if acc is not None:
                curves[f"{name}_acc"].append(acc)
        return math.isfinite(curves["train_loss"][-1]) and math.isfinite(curves["test_loss"][-1])

    started = time.perf_counter()
    diverged: int | None = None
    record()
    model.train()
    for epoch in range(1, epochs + 1):
        permutation = torch.randperm(len(train), generator=order)
        for step in range(steps):
            index = permutation[step * problem.batch_size : (step + 1) * problem.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = problem.evaluate(model, *train.rows(index)).loss
            if not torch.isfinite(loss):
                diverged = epoch
                break
            loss.backward()
            opt.step()
        if diverged is None and not record():
            diverged = epoch
            for values in curves.values():
                if values:
                    values.pop()  # the non-finite evaluation is replaced by the penalty below
        if diverged is not None:
            break
    for values in curves.values():
        # DeepOBS's penalty for a diverged run: the untrained model's values to the end.
        values.extend([values[0]] * (epochs + 1 - len(values)) if values else [])
    accuracy = problem.metric == "accuracy"
    return RunRecord(
        problem=problem.name,
        optimizer=optimizer,
        lr=lr,
        seed=seed,
        num_epochs=epochs,
        batch_size=problem.batch_size,
        steps_per_epoch=steps,
        metric=problem.metric,
        train_losses=curves["train_loss"],
        test_losses=curves["test_loss"],
        train_accuracies=curves["train_acc"] if accuracy else None,
        test_accuracies=curves["test_acc"] if accuracy else None,
        diverged_at_epoch=diverged,
        phase=phase,
        wall_seconds=round(time.perf_counter() - started, 3),
    )
