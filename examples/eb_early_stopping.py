"""Early stopping without a validation set (EB criterion), and a Fisher diagnostic.

A small noisy problem that overfits: 100 rows of a linear boundary in 20 dimensions with 30 % of
the labels flipped. A 60-epoch update fits the noise; with ``early_stopping="eb"`` the update
stops when its training batches' gradients are within their own noise, using all 100 rows (no
validation split). Then the true and empirical Fisher of the stopped model are compared.

    python examples/eb_early_stopping.py
"""

from __future__ import annotations

import torch

from ricordo import Updater
from ricordo.data import ArrayDataset
from ricordo.optim.fisher_diagnostics import compare_fisher


def noisy_problem(seed: int, rows: int, noise: float) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(20, generator=torch.Generator().manual_seed(99))
    x = torch.randn(rows, 20, generator=generator)
    y = (x @ w > 0).long()
    flip = torch.rand(rows, generator=generator) < noise
    return ArrayDataset(x, torch.where(flip, 1 - y, y))


def main() -> None:
    train, clean = noisy_problem(0, 100, 0.3), noisy_problem(1, 2000, 0.0)
    options = {"method": "finetune", "memory_size": 0, "hidden": (64,), "lr": 0.1}
    options |= {"batch_size": 20, "num_classes": 2, "epochs": 60, "progress": False}

    full = Updater(**options)
    full.update(train)
    eb = Updater(early_stopping="eb", **options)
    record = eb.update(train)["train"]
    print(f"full run: 60 epochs, held-out loss {full.evaluate(clean)['loss']:.3f}")
    print(
        f"eb: stopped ({record['stop_reason']}) in epoch {record['epochs']} at step "
        f"{record['stopped_step']}, held-out loss {eb.evaluate(clean)['loss']:.3f}"
    )
    print("smoothed EB at each epoch's end:", [round(v, 2) for v in record["eb_values"]])

    # True vs empirical Fisher on the stopped model (float64: the angles are exact).
    model = eb.model.double()
    result = compare_fisher(model, train.x.double(), train.y)
    summary = result.to_dict()
    print(
        f"{summary['parameters']} parameters: trace EF / trace F = {summary['trace_ratio']:.2f}; "
        f"natural-gradient angle F vs EF: {summary['angle_diagonal']:.1f} deg (diagonal), "
        f"{summary['angle_full']:.1f} deg (full)"
    )


if __name__ == "__main__":
    main()
