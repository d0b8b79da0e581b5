"""EB early stopping vs validation-based early stopping vs none, in update jobs (issue 15).

Protocol. digits, class-incremental, 5 chunks of 2 classes (scenario seed = run seed); ER with a
200-row reservoir memory, the built-in MLP with one hidden layer of 100 units (the default
(256, 128) makes the every-step EB statistic several times dearer), SGD at the library's lr
0.05, batch 32, an epoch budget of ``--epochs`` (30) per update. Two label regimes: ``clean``,
and ``noisy``: 30 % of each training chunk's labels moved to the chunk's other class (seeded;
the test labels stay clean), where fitting the training labels longer can hurt. Each update
stops by one rule:

- ``none``: every epoch of the budget;
- ``validation``: 10 % of the chunk held out (``--val-fraction 0.1``), stop after 3 epochs
  without a better validation accuracy (``--patience 3``) and restore the best epoch's weights;
- ``eb``: the EB criterion on the per-example gradients of every training batch (new rows plus
  as many memory rows), every step, EMA-smoothed (0.2), all trainable parameters;
- ``eb-last``: the same on the output layer only (closed form).

Then, as a check that the criterion fires where it should, the problem of
``tests/optim/test_eb.py``: 100 rows of a 20-D linear boundary with 30 % of the labels flipped,
an MLP (64,) trained 60 epochs (lr 0.1, batch 20), scored on 2000 clean rows.

Reported per regime and rule (mean ± sd over seeds): the final model's average accuracy over the
test split of every chunk, the epochs trained summed over the 5 updates (an epoch cut short by
EB counts as begun), how many updates stopped early, and the wall seconds of the 5 updates.

    .venv/bin/python benchmarks/eb_study.py                 # the table in benchmarks/README.md
    .venv/bin/python benchmarks/eb_study.py --seeds 0 --epochs 5    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

NOISE = 0.3
RULES: dict[str, dict[str, Any]] = {
    "none": {"early_stopping": "none"},
    "validation": {"early_stopping": "validation", "val_fraction": 0.1, "patience": 3},
    "eb": {"early_stopping": "eb"},
    "eb-last": {"early_stopping": "eb", "eb_layers": "last"},
}


def noisy(chunk: Any, fraction: float, seed: int) -> Any:
    """``chunk`` with ``fraction`` of its labels moved to another of its classes (seeded)."""
    import torch

    from ricordo.data import ArrayDataset

    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(chunk.y)
    flip = torch.rand(len(chunk.y), generator=generator) < fraction
    shift = torch.randint(1, len(classes), (len(chunk.y),), generator=generator)
    moved = classes[(torch.searchsorted(classes, chunk.y) + shift) % len(classes)]
    return ArrayDataset(chunk.x, torch.where(flip, moved, chunk.y))


def run_one(rule: str, seed: int, epochs: int, noise: float) -> dict[str, float]:
    """Five ER updates under ``rule``; final average test accuracy, epochs and seconds."""
    from ricordo import Updater
    from ricordo.data import load_builtin, make_scenario

    train, test = load_builtin("digits")
    scenario = make_scenario("class-incremental", train, test, updates=5, seed=seed)
    updater = Updater(
        method="er",
        memory_size=200,
        hidden=(100,),
        seed=seed,
        epochs=epochs,
        progress=False,
        threads=1,
        **RULES[rule],
    )
    trained, stops, began = 0, 0, time.perf_counter()
    for k, chunk in enumerate(scenario.train):
        if noise:
            chunk = noisy(chunk, noise, 1000 * seed + k)
        record = updater.update(chunk)
        trained += record["train"]["epochs"]
        stops += record["train"]["stop_reason"] is not None
    seconds = time.perf_counter() - began
    accuracy = statistics.mean(updater.evaluate(t)["accuracy"] for t in scenario.test)
    return {"accuracy": accuracy, "epochs": trained, "seconds": seconds, "stops": stops}


def overfitting_check(epochs: int = 60) -> None:
    """Where the validation loss is known to rise: when EB stops, and the loss there."""
    import torch

    from ricordo import Updater
    from ricordo.data import ArrayDataset

    def problem(seed: int, rows: int, noise: float) -> ArrayDataset:
        generator = torch.Generator().manual_seed(seed)
        w = torch.randn(20, generator=torch.Generator().manual_seed(99))
        x = torch.randn(rows, 20, generator=generator)
        y = (x @ w > 0).long()
        flip = torch.rand(rows, generator=generator) < noise
        return ArrayDataset(x, torch.where(flip, 1 - y, y))

    train, val = problem(0, 100, 0.3), problem(1, 2000, 0.0)
    options = {"method": "finetune", "memory_size": 0, "hidden": (64,), "lr": 0.1}
    options |= {"batch_size": 20, "num_classes": 2, "epochs": epochs, "progress": False}
    losses: list[float] = []
    Updater(**options).update(train, on_epoch_end=lambda e: losses.append(e.evaluate(val)["loss"]))
    best = min(range(epochs), key=losses.__getitem__)
    rows = [["none (full run)", epochs, f"{losses[-1]:.3f}"]]
    rows.append(["best epoch, in hindsight", best + 1, f"{losses[best]:.3f}"])
    for label, extra in (("eb", {}), ("eb-last", {"eb_layers": "last"})):
        updater = Updater(early_stopping="eb", **extra, **options)
        record = updater.update(train)["train"]
        rows.append([label, record["epochs"], f"{updater.evaluate(val)['loss']:.3f}"])
    print()
    print("100 noisy rows (30 % flipped), MLP (64,), 60 epochs; validation loss on 2000 rows")
    print(table(["rule", "epochs", "validation loss"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    parser.add_argument("--epochs", type=int, default=30, help="epoch budget per update")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rules")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for regime, noise in (("clean", 0.0), ("noisy", NOISE)):
        for rule in args.rules.split(","):
            runs = [run_one(rule, seed, args.epochs, noise) for seed in seeds]
            print(regime, rule, runs, flush=True)

            def stat(key: str, digits: int, runs: list[dict[str, float]] = runs) -> str:
                values = [r[key] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

            stopped = f"{sum(r['stops'] for r in runs)}/{5 * len(seeds)}"
            rows.append(
                [regime, rule, stat("accuracy", 3), stat("epochs", 1), stopped, stat("seconds", 1)]
            )
    print()
    print(
        f"digits, class-incremental, 5 chunks, ER (memory 200), MLP (100,), budget "
        f"{args.epochs} epochs, seeds {args.seeds}; {machine()}"
    )
    headers = ["labels", "rule", "final avg accuracy", "epochs (5 updates)", "stopped", "seconds"]
    print(table(headers, rows))
    overfitting_check()


if __name__ == "__main__":
    main()
