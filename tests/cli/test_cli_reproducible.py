"""Same seed, same data, separate processes: the same state, checksum for checksum.

Two ``ricordo update`` processes with one seed write states whose model, method and memory files
have equal sha256 in their manifests (history.json and the manifest itself differ: they record
times). A third process with another seed writes different ones, so the equality is not that of
files which ignore the seed. CLS-ER is used because its state has all three kinds of files: the
weights, the EMA copies (drawn at random after each step) and a reservoir memory.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ricordo.state import read_manifest

CliResult = Any  # conftest.CliResult: code, out, err, err_lines, describe()

OPTIONS = ("--method", "cls-er", "--hidden", "32", "--memory-size", "50", "--epochs", "2")
TIMED = {"history.json"}  # records each update's duration and finishing time


def _trained_files(state: Path) -> dict[str, str]:
    """sha256 of each file the manifest lists, except the ones that record times."""
    files = read_manifest(str(state))["files"]
    return {rel: info["sha256"] for rel, info in files.items() if rel not in TIMED}


def test_two_processes_with_one_seed_write_identical_states(
    cli_proc: Callable[..., CliResult], chunks: Path, tmp_path: Path
) -> None:
    runs = {"a": "7", "b": "7", "other-seed": "8"}

    def update(name: str) -> CliResult:
        return cli_proc(
            "update", *OPTIONS, "--seed", runs[name], "--data", chunks / "train-0.npz",
            "--next-state", tmp_path / name, "--no-progress",
        )  # fmt: skip

    with ThreadPoolExecutor(len(runs)) as pool:
        results = dict(zip(runs, pool.map(update, runs), strict=True))
    for name, result in results.items():
        assert result.code == 0, f"{name}: {result.describe()}"
    a, b = _trained_files(tmp_path / "a"), _trained_files(tmp_path / "b")
    kinds = {"model.safetensors", "method.safetensors", "method.json"}
    assert kinds <= set(a) and any(rel.startswith("memory/") for rel in a)
    assert a == b
    other = _trained_files(tmp_path / "other-seed")
    assert other["model.safetensors"] != a["model.safetensors"]
    assert other["method.safetensors"] != a["method.safetensors"]
