"""``CliResult``: exit status and output of one ``ricordo`` run, in process or as a process.

A module of its own, not in a conftest.py: pytest imports every conftest.py (none is in a
package) under the one name ``conftest``, so tests/cli/conftest.py could not import it from
tests/conftest.py. tests/ is on sys.path (pytest puts it there to import tests/conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CliResult:
    """Exit status and output of one CLI run."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def describe(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"
