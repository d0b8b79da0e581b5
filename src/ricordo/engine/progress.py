"""Progress display: a rich bar on a terminal, one plain line per epoch in logs.

A job under cron, Kubernetes or SLURM has no terminal: a bar would print nothing until the end
(or escape codes into the log), so there each epoch prints one plain line to stderr instead:
update, epoch/epochs, mean loss, steps/s and the update's ETA.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any


def _interactive() -> bool:
    """A terminal a bar can redraw: stderr is a TTY and this is not CI (whose logs are files)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (``"?"`` when unknown)."""
    if math.isnan(seconds) or math.isinf(seconds):
        return "?"
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class Progress(AbstractContextManager["Progress"]):
    """Counts training steps; a bar on a terminal, else a line per epoch (``enabled``: either).

    ``mode`` is ``"bar"``, ``"lines"`` or ``"off"``, chosen when the update starts.
    """

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.total = total
        self.description = description
        self.mode = "off" if not enabled else ("bar" if _interactive() else "lines")
        self._bar: Any = None
        self._task: Any = None
        self._done = 0
        self._epoch_start = time.perf_counter()
        self._epoch_done = 0

    def __enter__(self) -> Progress:
        self._epoch_start = time.perf_counter()
        if self.mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        return self

    def advance(self, steps: int = 1, status: str = "") -> None:
        self._done += steps
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, status=status)

    def epoch_end(
        self, epoch: int, epochs: int, loss: float, val_accuracy: float | None = None
    ) -> float:
        """After ``epoch`` (0-based) of ``epochs``: in ``lines`` mode print its line.

        Returns the epoch's steps/s (its steps over its time, validation included, so that the
        ETA of the remaining epochs counts their validation too).
        """
        now = time.perf_counter()
        steps = self._done - self._epoch_done
        rate = steps / max(now - self._epoch_start, 1e-9)
        self._epoch_start, self._epoch_done = now, self._done
        if self.mode == "lines":
            eta = (self.total - self._done) / rate if rate > 0 else float("inf")
            line = (
                f"{self.description}: epoch {epoch + 1}/{epochs}  loss {loss:.4f}  "
                f"{rate:.1f} steps/s  ETA {format_eta(eta)}"
            )
            if val_accuracy is not None:
                line += f"  val accuracy {val_accuracy:.4f}"
            print(line, file=sys.stderr, flush=True)
        return rate

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
