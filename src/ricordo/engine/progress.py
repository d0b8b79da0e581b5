"""Progress display: a rich bar on a terminal, silence in logs and CI."""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any


class Progress(AbstractContextManager["Progress"]):
    """Counts training steps; draws a bar only when stderr is a TTY and CI is not set."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty() and not os.environ.get("CI")
        self._bar: Any = None
        self._task: Any = None
        self.description = description

    def __enter__(self) -> Progress:
        if self.enabled:
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
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, status=status)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
