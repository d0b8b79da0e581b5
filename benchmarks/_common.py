"""Helpers shared by the benchmark scripts: machine description, medians, plain-text tables."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence


def machine() -> str:
    """One line naming what the numbers were measured on."""
    import torch

    cores = os.cpu_count() or 0
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, {cores} CPU core(s), "
        f"{platform.machine()}"
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """min-max of a series, e.g. ``1.02-1.31``: shows how noisy the machine was."""
    return f"{min(values):.2f}-{max(values):.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (readable as plain text too); first column left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)
    )
    return "\n".join([line(cells[0]), rule + "|", *(line(r) for r in cells[1:])])
