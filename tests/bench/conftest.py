"""Fixtures of the benchmark tests: tiny digits settings and an in-process ``ricordo`` call."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ricordo.config import UpdateConfig

# Small and quick, but trained enough that accuracies mean something.
TINY = {"hidden": (32,), "epochs": 2, "lr": 0.1, "threads": 1, "progress": False}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def describe(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


@pytest.fixture
def tiny() -> Callable[..., UpdateConfig]:
    """UpdateConfig of a tiny run: ``tiny("er", memory_size=50)``."""

    def make(method: str, **changes: object) -> UpdateConfig:
        return UpdateConfig(method=method, **{**TINY, **changes})

    return make


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """Run ``ricordo ARGS`` in this process (``ricordo.cli.main``); return code and output."""
    from ricordo.cli import main

    def run(*args: object) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["ricordo", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "200")
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: starts extra processes (Ray, a crashing worker); deselect: -m 'not slow'"
    )
