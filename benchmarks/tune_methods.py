"""The tuning protocol: choose each method's parameters on a validation split, test them once.

For each method, a small grid of its main parameter(s) runs on a validation split of the training
chunks (``ricordo benchmark --validation``: 20 % of each chunk, stratified by class, held out
from training and evaluated on instead of the test sets), seeds 0, 1, 2. The values with the
best mean validation average accuracy are chosen (ties: the first in grid order), then ONE
benchmark of the chosen values runs on the test sets, with the same seeds. No test number
influences a choice. Output, in ``--out`` (default ``benchmarks/output/tuning``):

- ``validation.yaml``, ``validation/``: the grid, as an experiment file and its results;
- ``test.yaml``, ``test/``: the chosen values and their test results;
- ``tuning.md``: the table "method, grid, chosen, validation accuracy, test accuracy".

    .venv/bin/python benchmarks/tune_methods.py                # every grid below, 20 epochs
    .venv/bin/python benchmarks/tune_methods.py --methods der,ewc --grid der:alpha=0.3,1 \\
        --grid ewc:ewc_lambda=1,100 --epochs 5                 # a small demonstration

Each default grid is the parameter's default (from the method's named source, see ``ricordo
methods NAME``) and a third and three times it (two significant digits): it is tied to the
source, not to any accuracy, and follows the defaults if they change. A choice on a grid's edge
says to widen the grid (``--grid``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# The main parameter(s) of each method: the weight that trades old against new knowledge.
# Methods without such a parameter (finetune, joint, er, er-ace, a-gem, gdumb, icarl, offline-er,
# rd) are not tuned here.
MAIN_PARAMETERS: dict[str, tuple[str, ...]] = {
    "der": ("alpha",),
    "der++": ("alpha", "beta"),
    "ewc": ("ewc_lambda",),
    "online-ewc": ("ewc_lambda",),
    "si": ("c",),
    "lwf": ("alpha",),
    "cls-er": ("consistency_weight",),
    "pod-er": ("pod_weight",),
}


def default_grid(method: str) -> dict[str, list[Any]]:
    """Each main parameter's default, a third of it and three times it (2 significant digits)."""
    from ricordo.methods.describe import describe

    defaults = {p.name: p.default for p in describe(method).params}
    return {
        name: [float(f"{defaults[name] * factor:.2g}") for factor in (1 / 3, 1, 3)]
        for name in MAIN_PARAMETERS.get(method, ())
    }


def parse_grid(text: str) -> tuple[str, str, list[Any]]:
    """``der:alpha=0.1,0.3`` -> ("der", "alpha", [0.1, 0.3])."""
    method, sep, rest = text.partition(":")
    name, sep2, values = rest.partition("=")
    if not (sep and sep2 and method and name and values):
        raise SystemExit(f"--grid {text!r} must look like METHOD:PARAM=V1,V2 (der:alpha=0.1,1)")
    parsed = []
    for item in values.split(","):
        try:
            parsed.append(json.loads(item))
        except ValueError:
            parsed.append(item)
    return method, name, parsed


def benchmark(config: Path, output: Path) -> dict[str, Any]:
    """Run ``ricordo benchmark -c config --output output``; return its summary.json.

    A grid point may fail (e.g. a penalty weight that makes the loss diverge): the benchmark
    then exits 1 after finishing the other runs, and its summary lists the failed runs.
    """
    command = [sys.executable, "-m", "ricordo.cli", "benchmark", "-c", str(config)]
    command += ["--output", str(output)]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT)
    summary = output / "summary.json"
    if done.returncode != 0 and not summary.is_file():
        raise SystemExit(f"the benchmark failed before it ran (exit {done.returncode})")
    return json.loads(summary.read_text())


def accuracy(entry: dict[str, Any]) -> str:
    stat = entry["metrics"].get("average_accuracy")
    if entry["failed"] or not stat:
        return f"{entry['failed']} of {entry['runs']} runs failed"
    text = f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['std']:.1f}" if stat["std"] is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(MAIN_PARAMETERS), help="methods to tune")
    parser.add_argument(
        "--grid", action="append", default=[], help="METHOD:PARAM=V1,V2 replaces that grid"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/output/tuning")
    parser.add_argument("--validation", type=float, default=0.2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--memory-size", type=int, default=500)
    parser.add_argument("--scenario", default="class-incremental")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    given: dict[str, dict[str, list[Any]]] = {}
    for text in args.grid:
        method, name, values = parse_grid(text)
        if method not in methods:
            raise SystemExit(f"--grid names {method!r}, which is not among --methods {methods}")
        given.setdefault(method, {})[name] = values
    # A method's --grid options replace its whole default grid.
    grids = {m: given.get(m) or default_grid(m) for m in methods}
    untuned = [m for m, grid in grids.items() if not grid]
    if untuned:
        raise SystemExit(f"no grid for {untuned}; pass --grid METHOD:PARAM=V1,V2")

    shared = {
        "dataset": "digits",
        "scenario": args.scenario,
        "updates": args.updates,
        "seeds": [int(s) for s in args.seeds.split(",")],
        "epochs": args.epochs,
        "memory_size": args.memory_size,
        "threads": 1,
        "workers": args.workers,
        "progress": False,
        "methods": methods,
    }
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. Every grid point on the validation split (a list of values is a grid).
    validation = {
        **shared,
        "validation": args.validation,
        "method_options": {m: {"params": grid} for m, grid in grids.items()},
    }
    validation_file = args.out / "validation.yaml"
    validation_file.write_text(yaml.safe_dump(validation, sort_keys=False))
    tuned = benchmark(validation_file, args.out / "validation")
    resolved = tuned["experiment"]["method_options"]

    # 2. The best grid point of each method by mean validation average accuracy.
    chosen: dict[str, dict[str, Any]] = {}
    best_entry: dict[str, dict[str, Any]] = {}
    for method, grid in grids.items():
        best = None
        for label, entry in tuned["methods"].items():
            stat = entry["metrics"].get("average_accuracy")
            if entry["method"] != method or entry["failed"] or not stat:
                continue  # a point with a failed seed is not comparable
            if best is None or stat["mean"] > best[1]:
                best = (label, stat["mean"])
        if best is None:  # nothing to test; the table says so
            print(f"every grid point of {method} failed; see {args.out}/validation")
            continue
        params = resolved[best[0]]["params"]
        chosen[method] = {k: params[k] for k in grid}
        best_entry[method] = tuned["methods"][best[0]]

    # 3. One run of the chosen values on the test sets.
    tested: dict[str, Any] = {"methods": {}}
    if chosen:
        test = {
            **shared,
            "methods": list(chosen),
            "method_options": {m: {"params": v} for m, v in chosen.items()},
        }
        test_file = args.out / "test.yaml"
        test_file.write_text(yaml.safe_dump(test, sort_keys=False))
        tested = benchmark(test_file, args.out / "test")

    rows = []
    for method, grid in grids.items():
        failed = [
            label
            for label, entry in tuned["methods"].items()
            if entry["method"] == method and entry["failed"]
        ]
        rows.append(
            [
                method,
                "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in grid.items())
                + (f" (failed: {', '.join(failed)})" if failed else ""),
                ", ".join(f"{k}={v}" for k, v in chosen[method].items())
                if method in chosen
                else "none: every grid point failed",
                accuracy(best_entry[method]) if method in chosen else "-",
                accuracy(tested["methods"][method]) if method in chosen else "-",
            ]
        )
    headers = ["method", "grid", "chosen", "validation accuracy", "test accuracy"]
    seeds = ", ".join(map(str, shared["seeds"]))
    text = "\n".join(
        [
            f"# Tuning on a validation split ({args.validation:g} of each training chunk)",
            "",
            f"digits, {args.scenario}, {args.updates} updates, memory {args.memory_size}, "
            f"{args.epochs} epochs, seeds {seeds}; average accuracy in %, mean ± std over "
            "seeds. Chosen by validation accuracy only; the test column is one run of the "
            "chosen values.",
            "",
            table(headers, rows),
            "",
        ]
    )
    (args.out / "tuning.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
