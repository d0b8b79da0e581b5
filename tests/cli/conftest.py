"""Fixtures for the end-to-end tests of the ``ricordo`` command.

Two ways to run the CLI:

- ``cli_proc``: a real separate process (``python -m ricordo.cli ...``), for the claims that are
  about processes (a chain of update jobs, a kill in the middle of a write, a new process
  continuing a state);
- ``cli`` (in tests/conftest.py, shared by every test folder): ``ricordo.cli.main`` in this
  process with ``sys.argv`` patched, exit status and output captured; fast, used for the many
  error cases and the per-command checks.

Expensive artefacts (the exported digits chunks, the 5-update chains) are built once per test run
and shared by the pytest-xdist workers through a file lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from filelock import FileLock  # a dependency of torch

from cli_result import CliResult

# Each CLI process trains on one thread: the suite runs on 2 cores with 2 xdist workers, and the
# in-process comparisons (test_cli_chain) must use the same thread count as the subprocesses.
THREADS = 1
SUBPROCESS_TIMEOUT_S = 600
CHAIN_METHODS = ("er", "finetune")
CHAIN_OPTIONS = ("--memory-size", "200", "--epochs", "20", "--lr", "0.05", "--seed", "0")


def cli_env() -> dict[str, str]:
    """Environment of CLI subprocesses: one thread, no colour, wide help text."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(THREADS),
        MKL_NUM_THREADS=str(THREADS),
        NO_COLOR="1",
        COLUMNS="200",
    )
    env.pop("FORCE_COLOR", None)
    return env


def cli_command(*args: object) -> list[str]:
    """argv of a real ``ricordo`` process (``python -m ricordo.cli``, this interpreter)."""
    return [sys.executable, "-m", "ricordo.cli", *map(str, args)]


def run_process(*args: object, cwd: Path | None = None) -> CliResult:
    """Run ``ricordo ARGS`` as a separate process and wait for it."""
    proc = subprocess.run(
        cli_command(*args),
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (files by sha256, folders and links by kind).

    Two equal digests mean: nothing was created, removed or changed (locks and temporary
    folders included).
    """
    result: dict[str, str] = {}
    if not root.exists():
        return result
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            result[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            result[rel] = "dir"
        else:
            result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by all xdist workers of this run (the parent of their basetemps)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return base.parent
    return base


def _build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """Build ``name`` in the shared folder once per test run; later callers wait and reuse it."""
    root = _shared_root(tmp_path_factory)
    target = root / f"shared-{name}"
    done = root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            if target.exists():  # a builder failed half-way: start over
                shutil.rmtree(target)
            target.mkdir()
            build(target)
            done.write_text("ok\n")
    return target


@pytest.fixture(scope="session")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits, class-incremental, 5 updates, seed 0, exported as train-K/test-K/test-all.npz."""

    def build(out: Path) -> None:
        from ricordo.data import export_scenario, load_builtin, make_scenario

        train, test = load_builtin("digits")
        export_scenario(make_scenario("class-incremental", train, test, updates=5, seed=0), out)

    return _build_once(tmp_path_factory, "chunks", build)


def _build_chains(chunks: Path) -> Callable[[Path], None]:
    """Two lineages (er, finetune), five update jobs each, every job a separate process.

    The two lineages run side by side (one thread each, so two processes at a time); within a
    lineage each job loads the state the previous job wrote.
    """

    def chain(root: Path, method: str) -> None:
        folder = root / method
        for k in range(5):
            args = ["update", "--data", chunks / f"train-{k}.npz", "--next-state", folder / f"v{k}"]
            if k == 0:
                args += ["--method", method, *CHAIN_OPTIONS]
            else:
                args += ["--state", folder / f"v{k - 1}"]
            result = run_process(*args)
            assert result.code == 0, f"{method} update {k}: {result.describe()}"
            (folder / f"update-{k}.out").write_text(result.out)

    def build(root: Path) -> None:
        with ThreadPoolExecutor(len(CHAIN_METHODS)) as pool:
            for job in [pool.submit(chain, root, method) for method in CHAIN_METHODS]:
                job.result()

    return build


@pytest.fixture(scope="session")
def chains(tmp_path_factory: pytest.TempPathFactory, chunks: Path) -> dict[str, Path]:
    """Folders with states v0..v4 of an er and a finetune lineage on the digits chunks.

    Both use memory 200 (er), 20 epochs, lr 0.05, seed 0, and the defaults for everything else.
    """
    root = _build_once(tmp_path_factory, "chains", _build_chains(chunks))
    return {method: root / method for method in CHAIN_METHODS}


@pytest.fixture(scope="session")
def er_chain(chains: dict[str, Path]) -> Path:
    return chains["er"]


@pytest.fixture(scope="session")
def finetune_chain(chains: dict[str, Path]) -> Path:
    return chains["finetune"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """In-process training uses the same thread count as the CLI subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli_proc() -> Callable[..., CliResult]:
    """Run ``ricordo ARGS`` as a separate process."""
    return run_process


@pytest.fixture
def cli_popen() -> Callable[..., subprocess.Popen[bytes]]:
    """Start ``ricordo ARGS`` as a separate process without waiting (stdout and stderr to pipes
    only when asked: ``cli_popen(*args, stderr=subprocess.PIPE)``)."""

    def start(*args: object, **popen: object) -> subprocess.Popen[bytes]:
        popen.setdefault("stdout", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(cli_command(*args), env=cli_env(), **popen)  # type: ignore[call-overload]

    return start


@pytest.fixture
def digest() -> Callable[[Path], dict[str, str]]:
    """``digest(folder)``: sha256 of every file under it, for before/after comparisons."""
    return tree_digest


@pytest.fixture
def read_json() -> Callable[[Path], object]:
    return lambda path: json.loads(Path(path).read_text())
