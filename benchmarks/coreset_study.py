"""Gradient-matching coresets and selective backprop on digits (issue 14).

Protocol. digits (1437 train / 360 test rows), 5 chunks, two scenarios: class-incremental (2
classes per chunk, class order drawn from the run's seed) and permutation (all 10 classes in
every chunk, chunk k > 0 permutes the 64 pixels). Seeds 0, 1, 2 (the scenario's seed too). Every
arm is ER with the library's defaults (MLP 256-128, SGD lr 0.05, batch 32, replayed batch 32, a
fixed 10-class head), 10 epochs per update (the default; ``--epochs`` changes it for all arms).
Scored on the test split of every chunk after the last update: average accuracy (mean over
chunks) and forgetting, mean ± sd over the 3 seeds.

Table 1, memory policies (methods.md 4): gradient-matching (its defaults) vs reservoir vs
class-balanced vs herding, at memory sizes 20, 50, 100 and 200.

Table 2, selective backprop (methods.md 10): ER with a reservoir memory of 200 rows and
``--selective-backprop`` loss / gradient-matching / random at ``--keep-fraction`` 0.25 and 0.5,
plus every row (keep 1.0, no option). Also the estimated share of the new rows' compute saved
(``engine.selective``: a backward pass counted as two forwards), and for gradient-matching the
mean sum of its NNLS weights per step (1: the step has an ordinary step's scale).

    .venv/bin/python benchmarks/coreset_study.py                 # the tables in benchmarks/README
    .venv/bin/python benchmarks/coreset_study.py --seeds 0 --epochs 1 --memory-sizes 20  # smoke
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

SCENARIOS = ("class-incremental", "permutation")
POLICIES = ("reservoir", "class-balanced", "herding", "gradient-matching")
STRATEGIES = ("loss", "gradient-matching", "random")
KEEP_FRACTIONS = (0.25, 0.5)
SB_MEMORY = 200


def arms(args: argparse.Namespace) -> dict[str, Any]:
    """Name -> UpdateConfig of every arm of both tables."""
    from ricordo.config import UpdateConfig

    base = UpdateConfig(method="er", epochs=args.epochs, progress=False, threads=1)
    named = {
        f"{policy} m={size}": base.replace(memory_size=size, memory_policy=policy)
        for size in args.memory_sizes
        for policy in POLICIES
    }
    sb = base.replace(memory_size=SB_MEMORY)
    named["sb keep=1.0"] = sb
    for keep in KEEP_FRACTIONS:
        for strategy in STRATEGIES:
            named[f"sb {strategy} keep={keep}"] = sb.replace(
                selective_backprop=strategy, keep_fraction=keep
            )
    return named


def saved_fraction(strategy: str | None, keep: float) -> float:
    """The estimated compute saving of engine.selective for a batch of 32 rows."""
    from ricordo.engine.selective import SelectiveBackprop, kept_count

    if strategy is None:
        return 0.0
    counter = SelectiveBackprop(strategy, keep)
    counter.seen_rows, counter.kept_rows = 32, kept_count(32, keep)
    counter.forward_only_rows = 0 if strategy == "random" else 32
    return counter.saved_fraction()


def mean_weight_sums(out: Path, summary: dict[str, Any]) -> dict[str, float]:
    """Arm -> the gradient-matching weights' mean sum per step, over its updates and seeds."""
    sums: dict[str, list[float]] = {}
    for run in summary["runs"]:
        if run["status"] != "ok":
            continue
        results = json.loads((out / run["file"]).read_text())
        for update in results["per_update"]:
            counts = update.get("selective_backprop") or {}
            if counts.get("mean_weight_sum") is not None:
                sums.setdefault(run["name"], []).append(counts["mean_weight_sum"])
    return {name: sum(values) / len(values) for name, values in sums.items()}


def cell(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "-"
    sd = stat.get("std")
    return (
        f"{100 * stat['mean']:.1f} ± {100 * sd:.1f}"
        if sd is not None
        else f"{100 * stat['mean']:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--memory-sizes", default="20,50,100,200")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    args.memory_sizes = [int(s) for s in args.memory_sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    from ricordo.bench.sweep import run_sweep

    named = arms(args)
    print(f"`{shlex.join(['python', *sys.argv])}`  ({machine()})\n")
    began = time.perf_counter()
    for scenario in args.scenarios.split(","):
        spec = {"dataset": "digits", "scenario": scenario, "updates": 5}
        with tempfile.TemporaryDirectory() as out:
            summary = run_sweep(spec, named, seeds, out, workers=args.workers)
            weight_sums = mean_weight_sums(Path(out), summary)
        if summary["failed"]:
            print("FAILED:", summary["failed"])
        results = summary["methods"]

        def row(name: str, results: dict[str, Any] = results) -> tuple[str, str, str]:
            metrics = results[name]["metrics"]
            return cell(metrics.get("average_accuracy")), cell(metrics.get("forgetting")), name

        print(f"### {scenario}: memory policies (ER, {args.epochs} epochs), average accuracy %\n")
        rows = []
        for size in args.memory_sizes:
            rows.append([size, *(row(f"{p} m={size}")[0] for p in POLICIES)])
        print(table(["memory", *POLICIES], rows) + "\n")
        print(f"### {scenario}: memory policies, forgetting %\n")
        rows = [[size, *(row(f"{p} m={size}")[1] for p in POLICIES)] for size in args.memory_sizes]
        print(table(["memory", *POLICIES], rows) + "\n")

        print(f"### {scenario}: selective backprop (ER, memory {SB_MEMORY}, reservoir)\n")
        rows = []
        for name, config in named.items():
            if not name.startswith("sb "):
                continue
            saving = saved_fraction(config.selective_backprop, config.keep_fraction)
            accuracy, forgetting, _ = row(name)
            weight_sum = weight_sums.get(name)
            rows.append(
                [
                    config.selective_backprop or "every row",
                    config.keep_fraction if config.selective_backprop else 1.0,
                    accuracy,
                    forgetting,
                    f"{100 * saving:.0f}",
                    "-" if weight_sum is None else f"{weight_sum:.2f}",
                ]
            )
        headers = [
            "strategy",
            "keep",
            "avg acc %",
            "forgetting %",
            "est. saved %",
            "weight sum",
        ]
        print(table(headers, rows) + "\n")
    print(f"total wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
