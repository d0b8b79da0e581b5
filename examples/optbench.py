"""Benchmark optimisers the DeepOBS way, from Python.

Run: ``.venv/bin/python examples/optbench.py`` (about 20 s on a laptop CPU; writes
``optbench-example/`` in the current folder, which must be new, empty or an earlier run's).

SGD, Adam and M-SVAG on the digits MLP and the noisy quadratic with the quick budget: each
optimiser runs at 8 learning rates (1e-5 to 1e2) with seed 42, its best learning rate is run
again with seed 43, and the table reports the final test performance, the epochs to the weakest
baseline's final performance (speed) and how many learning rates come close to the best
(tuneability). The folder holds one JSON per run, the plots and table.tex.
"""

from __future__ import annotations

from rich.console import Console

from ricordo.optbench import run
from ricordo.optbench.table import rich_table


def main(folder: str = "optbench-example") -> None:
    result = run(
        problems=["quadratic_deep", "digits_mlp"],
        optimizers=["sgd", "adam", "m-svag"],
        budget="quick",
        output=folder,
    )
    Console(width=140).print(rich_table(result))
    for setting in result.settings:
        runs = ", ".join(f"{r.final:.3f}" for r in setting.runs)
        print(f"{setting.problem} {setting.optimizer}: lr {setting.best_lr:g}, finals {runs}")


if __name__ == "__main__":
    main()
