"""Throughput of one `ricordo update` on 1 vs N data-parallel processes (issue 16).

Each arm is a real ``ricordo update`` command on the same chunk of generated images (3x32x32,
10 classes, class-dependent means so that it learns), ER with a 200-row memory, ``--model cnn``:

- ``1 proc x 1 thread``  the default single process at one CPU thread;
- ``1 proc x T threads`` one process using every core it is given (``--threads T``);
- ``N proc x 1 thread``  ``--strategy ddp --devices N --accelerator cpu`` (gloo), one thread each.

Throughput is new training samples per second of the epochs after the first (from the update's
``--logger csv`` epoch times: steps, memory inserts, all-reduces; not the start-up, the process
launch or the first epoch's warm-up); the update's whole training time (``train.seconds``, which
under ddp includes starting the other ranks) and the command's wall time are reported beside it.
``end s`` is the update's time after its last epoch (the method's end-of-update pass: EWC's
Fisher, herding, ...), which every rank repeats on the whole chunk. Medians over ``--repeats``
runs. ``--method``/``--memory-size`` pick the method (ER with a 200-row memory by default).

    .venv/bin/python benchmarks/scaling.py                      # 4096 images, 2 epochs, 3 runs
    .venv/bin/python benchmarks/scaling.py --rows 1024 --repeats 1 --processes 2
    .venv/bin/python benchmarks/scaling.py --method ewc --memory-size 0   # a Fisher pass at the end
    bash benchmarks/scaling_gpu.sh        # 1 vs every visible GPU (prepared; needs CUDA)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median, spread  # noqa: E402

RICORDO = Path(sys.executable).with_name("ricordo")


def make_images(path: Path, rows: int, seed: int = 0) -> None:
    """Generated 3x32x32 images of 10 classes (per-class mean pattern + noise) as an .npz."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, size=(10, 3, 32, 32)).astype("float32")
    y = rng.integers(0, 10, size=rows)
    x = means[y] + rng.normal(0, 2, size=(rows, 3, 32, 32)).astype("float32")
    np.savez(path, x=x, y=y)


def run_arm(
    chunk: Path,
    folder: Path,
    processes: int,
    threads: int,
    epochs: int,
    accelerator: str,
    method: str = "er",
    memory_size: int = 200,
) -> dict:
    """One update; its training seconds (from the state) and the command's wall seconds."""
    state = folder / f"state-{processes}-{threads}-{time.monotonic_ns()}"
    command = [str(RICORDO), "update", "--data", str(chunk), "--next-state", str(state)]
    command += ["--model", "cnn", "--method", method, "--memory-size", str(memory_size)]
    command += ["--epochs", str(epochs), "--batch-size", "64", "--seed", "0"]
    command += ["--accelerator", accelerator, "--threads", str(threads), "--no-progress"]
    command += ["--logger", f"csv:{state}-logs"]
    if processes > 1:
        command += ["--strategy", "ddp", "--devices", str(processes)]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=1800)
    wall = time.perf_counter() - started
    record = json.loads((state / "history.json").read_text())[-1]
    with open(f"{state}-logs/update-0/epochs.csv", encoding="utf-8") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    epoch_s = (seconds[-1] - seconds[0]) / (len(seconds) - 1)  # epochs 2.. (after warm-up)
    train_s = float(record["train"]["seconds"])
    # After the last epoch: the method's end-of-update pass (EWC's Fisher, herding, ...), which
    # every rank repeats on the whole chunk under ddp.
    return {"epoch_s": epoch_s, "train_s": train_s, "end_s": train_s - seconds[-1], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu", help="cpu (gloo) or cuda (nccl)")
    parser.add_argument("--method", default="er", help="any method (default er)")
    parser.add_argument("--memory-size", type=int, default=200, help="0 for memory-free methods")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is warm-up and is not timed")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    arms = [(1, 1), (1, args.processes), (args.processes, 1)]
    if args.accelerator != "cpu":  # one process per GPU; CPU threads are not the question
        arms = [(1, 1), (args.processes, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        chunk = folder / "images.npz"
        make_images(chunk, args.rows)
        results: dict[tuple[int, int], list[dict]] = {arm: [] for arm in arms}
        for _ in range(args.repeats):  # interleaved, so machine load hits every arm alike
            for arm in arms:
                results[arm].append(
                    run_arm(
                        chunk,
                        folder,
                        *arm,
                        args.epochs,
                        args.accelerator,
                        args.method,
                        args.memory_size,
                    )
                )
    print(
        f"# {machine()}; {cores} usable core(s); --accelerator {args.accelerator}; "
        f"{args.rows} images 3x32x32, {args.method} (memory {args.memory_size}), cnn"
    )
    print(f"# {args.epochs} epochs, batch 64 per step (global), {args.repeats} run(s) per arm")
    print("| arm | samples/s (median) | epoch s (min-max) | train s | end s | command wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for (processes, threads), runs in results.items():
        epoch = [r["epoch_s"] for r in runs]
        rate = args.rows / median(epoch)
        base = base or rate
        print(
            f"| {processes} proc x {threads} thread{'s' if threads > 1 else ''} "
            f"| {rate:.0f} ({rate / base:.2f}x) | {spread(epoch)} "
            f"| {median([r['train_s'] for r in runs]):.1f} "
            f"| {median([r['end_s'] for r in runs]):.1f} "
            f"| {median([r['wall_s'] for r in runs]):.1f} |"
        )


if __name__ == "__main__":
    main()
