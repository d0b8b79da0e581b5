"""ASHA vs PASHA vs random search, tuning ER's update on digits (issue 12).

Protocol. digits, class-incremental, 3 chunks (scenario seed 0). Per seed: ER (memory 200,
reservoir) learns chunk 1 with the library defaults; then each scheduler tunes the updates on
chunks 2 and 3 in turn with ``ricordo.tune.tune`` (the state of the tuned update 2 is the start
of update 3; the second job warm-starts from the first one's best, as ``ricordo tune`` does).
Searched: lr (log-uniform 0.001-0.3), momentum (uniform 0-0.95), batch size (16/32/64) and ER's
memory batch (8/16/32/64). Every job runs ``--trials`` configurations for at most
``--max-epochs`` epochs; rungs at 1, 3, 9 epochs (reduction factor 3, the PASHA paper's
setting). Trials are chosen on the CL-correct objective of ``ricordo.tune.objective`` (held-out
rows of the new chunk plus held-out memory rows); only the final state is then scored on the
test split of every chunk seen (average accuracy), which no choice ever looks at.

Reported per scheduler (mean ± sd over seeds): epochs consumed by the trials of both jobs (the
resource the schedulers save; the best configuration's final re-run on the whole chunk is
counted apart), wall seconds of the two jobs (this machine, trials two at a time), the most
epochs any trial trained (PASHA: its final maximum resource) and the final average test accuracy.

    .venv/bin/python benchmarks/tune_study.py                  # the table in benchmarks/README.md
    .venv/bin/python benchmarks/tune_study.py --seeds 0 --trials 4 --max-epochs 3   # a smoke run
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

SCHEDULERS = ("random", "asha", "pasha")
SPACE: dict[str, Any] = {
    "lr": {"loguniform": [0.001, 0.3]},
    "momentum": {"uniform": [0.0, 0.95]},
    "batch_size": {"choice": [16, 32, 64]},
    "params.memory_batch_size": {"choice": [8, 16, 32, 64]},
}
MEMORY_SIZE = 200


def run_one(
    scheduler: str, seed: int, args: argparse.Namespace, scenario: Any, start: str, work: Path
) -> dict[str, float]:
    """Tune updates 2..N from ``start`` with ``scheduler``; the final state's test accuracy."""
    from ricordo.tune import tune

    state, epochs, final_epochs, wall, longest = start, 0, 0, 0.0, 0
    result = None
    for k in range(1, len(scenario.train)):
        next_state = str(work / f"{scheduler}-seed{seed}-u{k}")
        began = time.perf_counter()
        result = tune(
            scenario.train[k],
            state=state,
            next_state=next_state,
            overwrite=True,
            space=SPACE,
            scheduler=scheduler,
            trials=args.trials,
            max_epochs=args.max_epochs,
            seed=seed,
        )
        wall += time.perf_counter() - began
        epochs += sum(t.epochs for t in result.trials)
        longest = max([longest, *(t.epochs for t in result.trials)])
        final_epochs += result.best.epochs
        state = next_state
    assert result is not None
    # Only now, after every choice: the test split of every chunk seen.
    accuracy = statistics.fmean(result.updater.evaluate(test)["accuracy"] for test in scenario.test)
    return {
        "epochs": epochs,
        "final_epochs": final_epochs,
        "wall": wall,
        "longest": longest,
        "accuracy": accuracy,
    }


def mean_sd(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--trials", type=int, default=12, help="configurations per job")
    parser.add_argument("--max-epochs", type=int, default=27, help="most epochs of one trial")
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    schedulers = args.schedulers.split(",")

    import ray

    from ricordo.data import load_builtin, make_scenario
    from ricordo.updater import Updater

    print(f"# {machine()}")
    print("$ " + shlex.join([".venv/bin/python", "benchmarks/tune_study.py", *sys.argv[1:]]))
    train, test = load_builtin("digits")
    scenario = make_scenario("class-incremental", train, test, updates=3, seed=0)
    # One embedded Ray for every job (tune() reuses it instead of starting its own each time).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in schedulers}
    with tempfile.TemporaryDirectory(prefix="ricordo-tune-study-") as folder:
        work = Path(folder)
        try:
            for seed in seeds:
                start = str(work / f"seed{seed}-u0")
                first = Updater(method="er", memory_size=MEMORY_SIZE, seed=seed, progress=False)
                first.update(scenario.train[0])
                first.save(start)
                for name in schedulers:
                    run = run_one(name, seed, args, scenario, start, work)
                    runs[name].append(run)
                    print(
                        f"seed {seed} {name}: {run['epochs']} epochs (+{run['final_epochs']} "
                        f"final), {run['wall']:.0f} s, longest trial {run['longest']}, "
                        f"test accuracy {run['accuracy']:.4f}",
                        flush=True,
                    )
        finally:
            ray.shutdown()
    reference = runs.get("asha")
    rows = []
    for name in schedulers:
        done = runs[name]
        epochs = [r["epochs"] for r in done]
        saving = "-"
        if reference:
            asha_epochs = statistics.fmean(r["epochs"] for r in reference)
            saving = f"{asha_epochs / statistics.fmean(epochs):.2f}x"
        rows.append(
            [
                name,
                mean_sd(epochs, 0),
                saving,
                mean_sd([r["wall"] for r in done], 0),
                mean_sd([r["longest"] for r in done], 1),
                mean_sd([100 * r["accuracy"] for r in done], 2),
            ]
        )
    print()
    print(
        table(
            [
                "scheduler",
                "trial epochs (2 jobs)",
                "ASHA epochs / these",
                "wall s",
                "longest trial",
                "test avg acc %",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
