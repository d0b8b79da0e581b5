"""Check the known orderings on a finished reproduction run (issue 4's acceptance check).

    .venv/bin/python benchmarks/check_orderings.py OUTPUT [OUTPUT ...]

Reads OUTPUT/summary.json from `ricordo benchmark --seeds ...` and checks, on mean final
average accuracy: joint > der++ >= er > finetune (der++ >= er allows one standard error of
slack, since three seeds are few). Folders without joint/finetune (memory-only sweeps) check
der++ >= er alone. Exits 1 and names the broken inequality otherwise.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main(folder: str) -> int:
    summary = json.loads((Path(folder) / "summary.json").read_text())
    stats = {
        name: entry["metrics"]["average_accuracy"] for name, entry in summary["methods"].items()
    }
    if "der++" not in stats or "er" not in stats:
        print(f"{folder}: needs runs of der++ and er", file=sys.stderr)
        return 1

    def mean(m: str) -> float:
        return float(stats[m]["mean"])

    def stderr(m: str) -> float:
        n = max(1, int(stats[m].get("n") or 1))
        return float(stats[m].get("std") or 0.0) / math.sqrt(n)

    checks = [("der++ >= er", mean("der++") + stderr("der++") + stderr("er") >= mean("er"))]
    if "joint" in stats:
        checks.insert(0, ("joint > der++", mean("joint") > mean("der++")))
    if "finetune" in stats:
        checks.append(("er > finetune", mean("er") > mean("finetune")))
    for label, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {label}")
    shown = [m for m in ("joint", "der++", "er", "finetune") if m in stats]
    print(f"{folder}: average accuracy " + ", ".join(f"{m} {100 * mean(m):.1f}" for m in shown))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    folders = sys.argv[1:] or [
        "benchmarks/output/methods20-fixed/class-incremental-m100",
        "benchmarks/output/methods20-fixed/class-incremental-m500",
    ]
    sys.exit(max([main(folder) for folder in folders]))
