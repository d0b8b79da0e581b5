"""The method zoo reproduction table (markdown) from a finished `methods_digits.sh` run.

    .venv/bin/python benchmarks/zoo_table.py benchmarks/output/methods20-fixed
    .venv/bin/python benchmarks/zoo_table.py benchmarks/output/methods20-growing --no-source

Reads OUTPUT/<scenario>-m<memory>/summary.json (written by `ricordo benchmark --seeds ...`) and
prints final average accuracy in %, mean ± std over seeds, one row per method in the order of
the script's runs, with the source of each method's defaults (`Method.defaults_from`) as the
last column. Memory-free methods run at memory 100 only; their memory-500 cells read "–".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (
    ("class-incremental-m100", "class-IL, m100"),
    ("class-incremental-m500", "class-IL, m500"),
    ("permutation-m100", "permutation, m100"),
    ("permutation-m500", "permutation, m500"),
)


def _cells(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Methods in run order and their "mean ± std" average accuracy in one summary folder."""
    path = folder / "summary.json"
    if not path.is_file():
        return [], {}
    summary = json.loads(path.read_text())
    order = list(summary["experiment"]["methods"])
    cells = {}
    for name, entry in summary["methods"].items():
        stat = entry["metrics"]["average_accuracy"]
        if stat.get("mean") is None:
            cells[name] = "failed"
            continue
        std = stat.get("std")
        cells[name] = f"{100 * stat['mean']:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")
    return order, cells


def table(root: Path, *, source: bool) -> str:
    """The markdown table of one run of the script."""
    order: list[str] = []
    columns = []
    for folder, _ in COLUMNS:
        names, cells = _cells(root / folder)
        order += [n for n in names if n not in order]
        columns.append(cells)
    header = ["method", *(label for _, label in COLUMNS)] + (["defaults from"] if source else [])
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(COLUMNS)]
    lines[-1] += "|---|" if source else "|"
    if source:
        from ricordo.methods import METHODS

    for name in order:
        row = [f"`{name}`", *(cells.get(name, "–") for cells in columns)]
        if source:
            row.append(getattr(METHODS.get(name), "defaults_from", "") or "no hyperparameters")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="OUT folder of methods_digits.sh")
    parser.add_argument("--no-source", action="store_true", help="omit the defaults column")
    args = parser.parse_args()
    print(table(args.output, source=not args.no_source))


if __name__ == "__main__":
    main()
