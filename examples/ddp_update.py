"""A data-parallel ER update on digits: two CPU processes (gloo) through Lightning Fabric.

Fabric starts rank 1 by running this script again, so every process runs all of it (keep the
work under ``if __name__ == "__main__"`` and make it deterministic); each trains on its half of
every batch, the gradients are averaged, and rank 0 alone writes the state and prints.

CLI (the same update):
    ricordo data digits --out chunks
    ricordo update --data chunks/train-0.npz --next-state state/v0 --method er \
        --memory-size 200 --strategy ddp --devices 2 --accelerator cpu
On a GPU machine: --accelerator cuda --devices 4 (NCCL); on a cluster: torchrun or srun start
the processes and Fabric joins them (--devices per node, --num-nodes M).

Python:
    .venv/bin/python examples/ddp_update.py state-ddp
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits

from ricordo import Updater
from ricordo.engine.distributed import is_writer


def main(folder: str) -> None:
    data = load_digits()
    x = torch.tensor(data.data / 16, dtype=torch.float32)
    y = torch.tensor(data.target)
    train, test = slice(0, 1400), slice(1400, None)
    updater = Updater(
        method="er",
        memory_size=200,
        epochs=3,
        seed=0,
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        progress=False,
    )
    updater.update(x[train], y[train])
    updater.save(folder)  # rank 0 writes; the other rank returns without writing
    if is_writer():
        accuracy = (updater.predict(x[test]) == y[test]).float().mean().item()
        print(f"2-process ER update: test accuracy {accuracy:.3f}, state at {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "state-ddp")
