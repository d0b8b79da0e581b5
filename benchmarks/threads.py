"""Benchmark: one ``ricordo update`` job while other processes keep the CPUs busy, by thread choice.

Issue 8: with other work on a 2-core machine, ``ricordo update`` on digits took 14.6 s with
torch's default threads against 3.9 s with ``--threads 1``. This script reproduces that setting:
``--busy`` background processes spin in Python (each wants one core), and a fresh ``ricordo
update`` process (digits chunk 0, er, memory 200, 20 epochs, ``--hidden`` layers) runs with

- ``default``: no ``--threads``; ``auto`` since issue 8, torch's default before (run the script
  with ``PYTHONPATH=<old checkout>/src`` to time an older Ricordo: the jobs are ``python -m
  ricordo.cli`` processes of this interpreter, which honour it),
- ``--threads 1``,
- ``--threads T``: torch's default on this machine (the physical cores, or ``OMP_NUM_THREADS``).

It reports the median and min-max of the job's wall time and of the training seconds the job
prints, over ``--repeats`` runs (variants interleaved, order rotated each repeat).

Usage: ``python benchmarks/threads.py [--busy 0 1 2] [--repeats 3] [--hidden 256,128]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, median, spread, table

OPTIONS = ["--method", "er", "--memory-size", "200", "--epochs", "20", "--no-progress"]


def spin() -> None:  # pragma: no cover - a background load, killed by the parent
    while True:
        pass


def torch_default_threads() -> int:
    """torch.get_num_threads() of a fresh process (what an unset thread count gives)."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def run_update(chunk: Path, out: Path, hidden: str, threads: list[str]) -> tuple[float, float]:
    """Wall seconds of one ``ricordo update`` process and the training seconds it reports."""
    args = [sys.executable, "-m", "ricordo.cli", "update", "--data", str(chunk)]
    args += ["--next-state", str(out), "--hidden", hidden, *OPTIONS, *threads]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"update failed: {proc.stderr.strip()}")
    match = re.search(r"steps in ([0-9.]+) s", proc.stdout)
    return wall, float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", default="256,128")
    args = parser.parse_args()

    from ricordo.data import export_scenario, load_builtin, make_scenario

    work = Path(tempfile.mkdtemp(prefix="ricordo-threads-"))
    train, test = load_builtin("digits")
    export_scenario(make_scenario("class-incremental", train, test, updates=5, seed=0), work)
    chunk = work / "train-0.npz"
    default = torch_default_threads()
    variants = {
        "default (no --threads)": [],
        "--threads 1": ["--threads", "1"],
        f"--threads {default} (torch default)": ["--threads", str(default)],
    }
    print(f"{machine()}; digits chunk 0, mlp {args.hidden}, er, 20 epochs")
    print(f"ricordo from {Path(__import__('ricordo').__file__).parent}\n")
    rows = []
    runs = 0
    for busy in args.busy:
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            time.sleep(1.0)  # let the load settle
            walls: dict[str, list[float]] = {name: [] for name in variants}
            trains: dict[str, list[float]] = {name: [] for name in variants}
            names = list(variants)
            for repeat in range(args.repeats):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                    runs += 1
                    wall, train_s = run_update(
                        chunk, work / f"s{runs}", args.hidden, variants[name]
                    )
                    walls[name].append(wall)
                    trains[name].append(train_s)
        finally:
            for process in spinners:
                process.terminate()
                process.join()
        for name in variants:
            rows.append(
                [
                    busy,
                    name,
                    f"{median(walls[name]):.2f}",
                    spread(walls[name]),
                    f"{median(trains[name]):.3f}",
                    spread(trains[name]),
                ]
            )
    headers = ["busy", "threads", "wall s", "min-max", "train s", "min-max"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
