"""CSV reading: pyarrow's reader against the built-in one on a generated ~90 MB table.

    python benchmarks/csv_read.py [--rows 500000] [--features 20]

Writes a table of ``--rows`` rows, ``--features`` float columns (6 decimals) and an integer
``label`` column to a temporary folder, then reads it with each reader in a fresh process and
prints the wall time and the process's peak RSS (the Python interpreter, numpy and torch
included, measured the same way for both, and shown before reading). Results are in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

READ = """
import resource, sys, time
from pathlib import Path
from ricordo.data import loaders
import numpy as np
path = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
if sys.argv[2] == "builtin":
    columns = loaders._read_csv_builtin(path, path.name)
else:
    columns = loaders._read_csv_arrow(path)
    assert columns is not None, "pyarrow is not installed or refused the file"
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{seconds:.2f} {peak:.0f} {before:.0f}")
"""


def write_table(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """A CSV of ``features`` float columns and an integer ``label``, written in blocks."""
    rng = np.random.default_rng(seed)
    header = ",".join([f"f{i}" for i in range(features)] + ["label"])
    with path.open("w", encoding="utf-8") as out:
        out.write(header + "\n")
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            block = np.column_stack([rng.normal(size=(n, features)), rng.integers(0, 10, n)])
            fmt = ",".join(["%.6f"] * features + ["%d"])
            np.savetxt(out, block, fmt=fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        write_table(path, args.rows, args.features)
        size = path.stat().st_size / 2**20
        print(f"table: {args.rows} rows x {args.features + 1} columns, {size:.0f} MiB")
        for reader in ("builtin", "pyarrow"):
            done = subprocess.run(
                [sys.executable, "-c", READ, str(path), reader],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds, peak, before = map(float, done.stdout.split())
            print(
                f"{reader:8s} {seconds:6.2f} s   peak RSS {peak:6.0f} MiB "
                f"({before:.0f} MiB before reading: Python, numpy, torch)"
            )


if __name__ == "__main__":
    main()
