"""Start-up cost of the install: `ricordo --help`, `import ricordo`, the update path's imports.

    python benchmarks/import_time.py [--venv PATH] [--repeats 5]

Each command runs ``--repeats`` times in a fresh process of the venv's Python (default: the
running one); the median wall time is printed, then the slowest imports of the update path by
``python -X importtime`` (cumulative microseconds), and the size of the venv's site-packages.
Numbers for the lean install (issue 10) are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "ricordo --help": ["-m", "ricordo.cli", "--help"],
    "import ricordo": ["-c", "import ricordo"],
    "import ricordo.updater (an update's imports)": ["-c", "import ricordo.updater"],
    "import lightning (only --backend fabric / mixed precision)": ["-c", "import lightning"],
}


def wall(python: str, args: list[str], repeats: int) -> float | None:
    """Median wall seconds of ``python ARGS`` over ``repeats`` runs; None when it fails."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([python, *args], capture_output=True)
        if done.returncode != 0:
            return None
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def top_imports(python: str, module: str, n: int) -> list[tuple[int, str]]:
    """The ``n`` packages with the largest cumulative import time under ``module`` (each
    package's outermost import, which includes what it imports; nested packages are listed too,
    so numpy appears inside torch)."""
    done = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True
    )
    totals: dict[str, int] = {}
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        top = parts[2].strip().split(".")[0]
        if top != module.split(".")[0]:
            totals[top] = max(totals.get(top, 0), int(parts[1]))
    return sorted(((us, mod) for mod, us in totals.items()), reverse=True)[:n]


def site_packages_size(python: str) -> int:
    """Bytes under the venv's site-packages (what the install put there)."""
    path = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="a venv folder (default: this interpreter)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = str(args.venv / "bin" / "python") if args.venv else sys.executable
    for label, argv in COMMANDS.items():
        seconds = wall(python, argv, args.repeats)
        shown = "not installed" if seconds is None else f"{seconds:.2f} s"
        print(f"{label:60s} {shown}")
    print("slowest imports of `import ricordo.updater` (cumulative):")
    for us, module in top_imports(python, "ricordo.updater", 8):
        print(f"  {module:30s} {us / 1e6:.2f} s")
    print(f"site-packages: {site_packages_size(python) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
