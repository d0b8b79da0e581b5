"""Peak memory of an update on a chunk larger than RAM: ``ricordo update --lazy`` vs in memory.

    python benchmarks/lazy_memory.py [--gib 3] [--limit-mib 1024] [--eager-mib 256]
                                     [--data-workers 0 2] [--folder DIR]

Writes a ``--gib`` GiB chunk of uint8 images (3x64x64, 4 classes, stored uncompressed in a .npz
that is written in pieces, never held whole) to a temporary folder (``--folder``: where; check
its free space), then runs ``ricordo update --lazy`` on it in a subprocess (ER, memory 200, one
epoch, batch 256, MLP 32) while a watchdog samples the resident memory (RSS) of the process and
its DataLoader workers every 20 ms and kills the tree above ``--limit-mib``. For contrast, the
same update reads a ``--eager-mib`` chunk into memory (no --lazy; watchdog limit 8x higher).
Prints the chunk's size, the peak RSS of the update process, the peak PSS of it and its workers
together (shared pages split between the processes), the wall time (process start-up
included) and the command's last line. The files are deleted at the end.
Results are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from _common import machine, table

SHAPE = (3, 64, 64)
CLASSES = 4


def write_chunk(path: Path, size_bytes: int, seed: int = 0) -> int:
    """A .npz with uint8 ``x`` (N, 3, 64, 64) written in pieces (uncompressed) and ``y``;
    class c has a brighter channel c % 3 and quadrant c, so an update can learn it."""
    from numpy.lib import format as npy_format

    row = int(np.prod(SHAPE))
    n = max(1, size_bytes // row)
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % CLASSES).astype(np.int64)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            npy_format.write_array_header_2_0(
                member, {"descr": "|u1", "fortran_order": False, "shape": (n, *SHAPE)}
            )
            for start in range(0, n, 8192):
                labels = y[start : start + 8192]
                block = rng.integers(0, 120, size=(len(labels), *SHAPE), dtype=np.uint8)
                for c in range(CLASSES):
                    rows = labels == c
                    half = SHAPE[1] // 2
                    top, left = (c // 2) * half, (c % 2) * half
                    block[rows, c % 3, top : top + half, left : left + half] += 120
                member.write(block.tobytes())
        with archive.open("y.npy", "w") as member:
            npy_format.write_array(member, y)
    return n


def memory(pid: int) -> tuple[int, int]:
    """(RSS of process ``pid``, PSS of it and its descendants) in bytes. PSS (proportional set
    size) splits a page shared by n processes n ways, so forked DataLoader workers, which share
    the parent's torch and Python pages, are not counted n times as RSS would. Without psutil:
    VmRSS of the process alone, for both."""
    try:
        import psutil
    except ImportError:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    return rss, rss
        except OSError:
            pass
        return 0, 0
    try:
        parent = psutil.Process(pid)
        rss = parent.memory_info().rss
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    pss = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            pss += process.memory_full_info().pss
    return rss, pss


def run(command: list[str], limit: int) -> tuple[int, int, float, str]:
    """(peak RSS of the process, peak PSS of its tree, seconds, outcome) of ``command`` under
    a watchdog that kills it when either goes above ``limit`` bytes."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_rss, peak_pss, outcome = 0, 0, "ok"
    while process.poll() is None:
        rss, pss = memory(process.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        if max(rss, pss) > limit:
            outcome = f"killed above {limit / 2**20:.0f} MiB"
            try:
                import psutil

                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
            except Exception:  # psutil missing or the child gone: kill the parent anyway
                pass
            process.kill()
            break
        time.sleep(0.02)
    output = process.communicate()[0]
    seconds = time.perf_counter() - start
    if outcome == "ok" and process.returncode != 0:
        outcome = f"failed ({process.returncode}): {output.strip().splitlines()[-1:]}"
    elif outcome == "ok":  # "update 0 (er): N samples, ..., S steps in T s, final loss L -> ..."
        found = re.search(r"(\d+) steps in ([\d.]+) s, final loss ([\d.]+)", output)
        outcome = f"{found[1]} steps, training {found[2]} s, loss {found[3]}" if found else "ok"
    return peak_rss, peak_pss, seconds, outcome


def update_command(data: Path, state: Path, lazy: bool, workers: int) -> list[str]:
    command = [sys.executable, "-m", "ricordo.cli", "update", "--data", str(data)]
    command += ["--next-state", str(state), "--method", "er", "--memory-size", "200"]
    command += ["--epochs", "1", "--batch-size", "256", "--hidden", "32", "--no-progress"]
    # Raw uint8 values (0..255, as an in-memory .npz is read): Adam's bounded steps keep the
    # loss finite without rescaling the data.
    command += ["--optimizer", "adam", "--lr", "0.0001"]
    if lazy:
        command += ["--lazy", "--data-workers", str(workers)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=3.0, help="size of the lazy chunk")
    parser.add_argument("--limit-mib", type=int, default=1024, help="RSS limit of the lazy run")
    parser.add_argument("--eager-mib", type=int, default=256, help="size of the eager chunk")
    parser.add_argument("--data-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--folder", default=None, help="where to write the chunks")
    args = parser.parse_args()
    limit = args.limit_mib * 2**20
    rows = []
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        big, small = folder / "big.npz", folder / "small.npz"
        started = time.perf_counter()
        n_big = write_chunk(big, int(args.gib * 2**30))
        n_small = write_chunk(small, args.eager_mib * 2**20, seed=1)
        print(f"wrote the chunks in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        cases = [("lazy", big, n_big, True, w, limit) for w in args.data_workers]
        cases.append(("in memory", small, n_small, False, 0, 8 * limit))
        for name, data, n, lazy, workers, cap in cases:
            state = folder / f"state-{name}-{workers}"
            peak, pss, seconds, outcome = run(update_command(data, state, lazy, workers), cap)
            size = os.path.getsize(data)
            rows.append(
                [
                    name,
                    workers if lazy else "-",
                    f"{size / 2**30:.2f} GiB ({n} rows)",
                    f"{cap / 2**20:.0f} MiB",
                    f"{peak / 2**20:.0f} MiB",
                    f"{pss / 2**20:.0f} MiB",
                    f"{seconds:.0f} s",
                    outcome,
                ]
            )
            print(f"{name} (workers {workers}): {rows[-1][4:]}", file=sys.stderr)
    print(machine())
    print(
        table(
            [
                "update",
                "workers",
                "chunk",
                "limit",
                "peak RSS",
                "peak PSS (tree)",
                "time",
                "result",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
