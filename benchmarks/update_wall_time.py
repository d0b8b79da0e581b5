"""Benchmark: wall time of one ``ricordo update`` job, the unit a production pipeline runs.

Each measurement is a fresh process (``subprocess``), as in a pipeline: the digits MLP, method
``er``, memory 200, default epochs; the first update (chunk 0, no state) and a second update from
that state (chunk 1). For scale: ``python -c "import torch"`` (the floor any PyTorch job pays),
``python -c "import ricordo"`` and ``ricordo --version``. Commands are interleaved and the median
of ``--repeats`` runs is reported. Renate needs about 10 s for such a job; the goal is < 3 s.

Then it breaks one update process down: module import times (``python -X importtime``, grouped
by top-level package, cumulative microseconds of the outermost imports), which heavy packages the
update path imports at all, and the training seconds the job reports itself.

Usage: ``python benchmarks/update_wall_time.py [--repeats 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, median, spread, table

BIN = Path(sys.executable).parent
RICORDO = str(BIN / "ricordo")
PY = sys.executable
UPDATE_OPTIONS = ["--method", "er", "--memory-size", "200", "--no-progress"]
# Packages whose import cost is worth knowing on the update path.
WATCH = [
    "torch",
    "torch._dynamo",
    "torch.optim",
    "numpy",
    "safetensors",
    "fsspec",
    "typer",
    "rich",
    "click",
    "lightning",
    "sklearn",
    "scipy",
    "matplotlib",
    "pandas",
    "pyarrow",
]


# The floor of any PyTorch training process: import torch, build an optimizer, take one step
# (torch.optim imports torch._dynamo on first use).
TORCH_STEP = (
    "import torch; m = torch.nn.Linear(64, 10); o = torch.optim.SGD(m.parameters(), lr=0.1); "
    "m(torch.randn(8, 64)).sum().backward(); o.step()"
)


FLOOR = "python: import torch + 1 SGD step"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")
    return elapsed, done


def import_times(stderr: str) -> dict[str, int]:
    """Cumulative microseconds per module from ``-X importtime`` output."""
    result: dict[str, int] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| *(\S+)", line)
        if match:
            cumulative, module = int(match.group(2)), match.group(3)
            result[module] = max(result.get(module, 0), cumulative)
    return result


def self_by_package(stderr: str) -> dict[str, int]:
    """Exclusive (self) import microseconds summed per top-level package, whoever imported it."""
    groups: dict[str, int] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| *(\S+)", line)
        if match:
            package = match.group(3).split(".")[0]
            groups[package] = groups.get(package, 0) + int(match.group(1))
    return groups


def train_seconds(stdout: str) -> float:
    match = re.search(r"steps in ([\d.]+) s", stdout)
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ricordo update --threads N (0: torch's default, all cores)",
    )
    args = parser.parse_args()
    env = dict(os.environ)
    env.pop("CI", None)
    threads = ["--threads", str(args.threads)] if args.threads else []
    work = Path(tempfile.mkdtemp(prefix="ricordo-bench-"))
    try:
        chunks = work / "chunks"
        run([RICORDO, "data", "digits", "--out", str(chunks)], env)
        first = [RICORDO, "update", "--data", str(chunks / "train-0.npz"), *UPDATE_OPTIONS]
        first += threads
        second = [RICORDO, "update", "--data", str(chunks / "train-1.npz"), *threads]
        base = work / "base"  # the state every timed second update starts from
        run([*first, "--next-state", str(base)], env)

        commands: dict[str, list[str]] = {
            'python -c "import torch"': [PY, "-c", "import torch"],
            FLOOR: [PY, "-c", TORCH_STEP],
            'python -c "import ricordo"': [PY, "-c", "import ricordo"],
            "ricordo --version": [RICORDO, "--version"],
            "ricordo update (first, chunk 0)": first,
            "ricordo update (second, from state)": second,
        }
        wall: dict[str, list[float]] = {name: [] for name in commands}
        trained: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(args.repeats):
            names = list(commands)
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                cmd = list(commands[name])
                if name.startswith("ricordo update"):
                    out = work / f"out-{r}-{len(wall[name])}-{name.split()[2].strip('(,')}"
                    cmd += ["--next-state", str(out)]
                    if "second" in name:
                        cmd += ["--state", str(base)]
                seconds, done = run(cmd, env)
                wall[name].append(seconds)
                trained[name].append(train_seconds(done.stdout))

        print(machine())
        print(
            f"median of {args.repeats} fresh processes each; default epochs (10); "
            f"update threads: {args.threads or 'torch default'}\n"
        )
        floor = median(wall[FLOOR])
        rows = []
        for name, values in wall.items():
            job = name.startswith("ricordo update")
            t = median(trained[name]) if job else None
            rows.append(
                [
                    name,
                    f"{median(values):.2f}",
                    spread(values),
                    "-" if t is None else f"{t:.2f}",
                    f"{median(values) - floor:+.2f}" if job else "-",
                ]
            )
        print(
            table(
                ["command", "median s", "min-max s", "training s (reported)", "minus floor s"],
                rows,
            )
        )
        print(
            f"floor = `{FLOOR}`, what any PyTorch training process pays; training s = the "
            "seconds the job reports for its training loop"
        )

        # Where does the start-up go? One instrumented second update.
        out = work / "importtime"
        cmd = [PY, "-X", "importtime", "-m", "ricordo.cli", *second[1:]]
        cmd += ["--state", str(base), "--next-state", str(out)]
        _, done = run(cmd, env)
        groups = self_by_package(done.stderr)
        modules = import_times(done.stderr)
        total = sum(groups.values())
        print(f"\nImports of one second update (-X importtime): {total / 1e6:.2f} s in total")
        ranked = sorted(groups.items(), key=lambda kv: -kv[1])[:12]
        print(
            table(
                ["top-level package", "self import s"],
                [[k, f"{v / 1e6:.3f}"] for k, v in ranked],
            )
        )
        print("\nHeavy packages on the update path (cumulative import s, '-' = not imported):")
        print(
            table(
                ["package", "imported?", "cumulative s"],
                [
                    [p, "yes" if p in modules else "no", f"{modules[p] / 1e6:.3f}"]
                    if p in modules
                    else [p, "no", "-"]
                    for p in WATCH
                ],
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
