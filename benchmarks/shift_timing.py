"""Time and peak memory of the MMD shift test (``ricordo.shift.mmd_test``) as the samples grow.

    python benchmarks/shift_timing.py [--sizes 1000 5000 10000] [--features 512]
                                      [--permutations 200] [--threads 0] [--repeats 1]

For each size n, a fresh process draws two samples of n rows and ``--features`` Gaussian
features (the second shifted by 0.05 in every feature, so the test has something to find),
then times ``mmd_test`` (median bandwidth, ``--permutations`` permutations): wall seconds, the
process's CPU seconds (summed over its threads), its peak RSS (interpreter, torch and the two
samples included) and how much the peak rose during the test. The last column is what the
pooled (2n)^2 float32 kernel matrix alone would take if it were held whole, which the test
avoids by computing it in strips. Results are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _common import machine, median, spread, table

RUN = """
import resource, sys, time
import torch
n, d, permutations, threads = map(int, sys.argv[1:5])
if threads:
    torch.set_num_threads(threads)
from ricordo.shift import mmd_test
generator = torch.Generator().manual_seed(0)
reference = torch.randn(n, d, generator=generator)
data = torch.randn(n, d, generator=generator) + 0.05
mmd_test(reference[:200], data[:200], permutations=10)  # first-call overheads
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start, cpu = time.perf_counter(), time.process_time()
result = mmd_test(reference, data, permutations=permutations)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(seconds, peak, before, result.p_value, torch.get_num_threads(), cpu)
"""


def run(n: int, features: int, permutations: int, threads: int) -> list[float]:
    args = [str(n), str(features), str(permutations), str(threads)]
    out = subprocess.run(
        [sys.executable, "-c", RUN, *args], capture_output=True, text=True, check=True
    ).stdout
    return [float(v) for v in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(machine())
    rows = []
    for n in args.sizes:
        runs = [run(n, args.features, args.permutations, args.threads) for _ in range(args.repeats)]
        seconds = [r[0] for r in runs]
        peak, before = max(r[1] for r in runs), max(r[2] for r in runs)
        kernel_mib = (2 * n) ** 2 * 4 / 2**20
        rows.append(
            [
                f"{n} + {n}",
                args.features,
                args.permutations,
                int(runs[0][4]),
                f"{median(seconds):.1f}",
                spread(seconds),
                f"{median([r[5] for r in runs]):.1f}",
                f"{peak:.0f}",
                f"{peak - before:.0f}",
                f"{runs[0][3]:.4f}",
                f"{kernel_mib:.0f}",
            ]
        )
    headers = ["rows", "features", "permutations", "threads", "seconds", "min-max", "CPU s"]
    headers += ["peak RSS MiB", "rise MiB", "p-value", "whole kernel MiB"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
