"""State store writes: refusal, overwrite, crash safety (exceptions and SIGKILL) and the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from ricordo.errors import StateError, StateExistsError, StateLockedError
from ricordo.state import fs as fs_mod
from ricordo.state import read_state, state_exists, write_state
from ricordo.state import store as store_mod
from ricordo.state.lock import StateLock, pid_alive

OLD = {"model.safetensors": b"old weights" * 100, "memory/shard-00000.safetensors": b"old mem"}
NEW = {"model.safetensors": b"new weights" * 120, "history.json": b"[]"}


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A unique memory:// folder, removed afterwards (the memory filesystem is process-global)."""
    root = f"memory://ricordo-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory://") :]):
        fs.rm(root[len("memory://") :], recursive=True)


@pytest.fixture(params=["local", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path, memory_root: str) -> str:
    return str(tmp_path) if request.param == "local" else memory_root


def _tree(url: str) -> dict[str, bytes]:
    """Every file under ``url`` (relative path -> bytes); empty when nothing is there."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return {}
    return {p[len(path) + 1 :]: fs.cat_file(p) for p in fs.find(path)}


def _entries(root: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):  # memory:// has no folders, only files under a prefix
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def _dead_pid() -> int:
    """A pid that belonged to a process on this host that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Boom(RuntimeError):
    pass


def _fail_after(monkeypatch: pytest.MonkeyPatch, n_ok: int) -> None:
    """Make the store's file writer raise after ``n_ok`` successful files."""
    real = store_mod._store_file
    calls = {"n": 0}

    def flaky(loc, path, data):  # type: ignore[no-untyped-def]
        if calls["n"] >= n_ok:
            raise Boom("disk on fire")
        calls["n"] += 1
        real(loc, path, data)

    monkeypatch.setattr(store_mod, "_store_file", flaky)


# --------------------------------------------------------------------------------- overwrite


def test_existing_state_is_refused_and_left_byte_identical(root: str) -> None:
    url = f"{root}/v1"
    write_state(url, OLD, {"v": 1})
    before = _tree(url)
    with pytest.raises(StateExistsError) as exc:
        write_state(url, NEW, {"v": 2})
    assert str(exc.value) == (
        f"state already exists at {url}; write to a new location or pass overwrite=True "
        "(CLI: a new --next-state, or --overwrite)"
    )
    assert _tree(url) == before
    assert _entries(root) == ["v1"]


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_overwrite_replaces_the_state(
    root: str, atomic_swap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not atomic_swap:  # the two-rename fallback used where renameat2 is unavailable
        monkeypatch.setattr(store_mod, "exchange", lambda a, b: False)
    url = f"{root}/v1"
    write_state(url, OLD, {"v": 1})
    write_state(url, NEW, {"v": 2}, overwrite=True)
    loaded = read_state(url)
    assert loaded.files == NEW  # the old memory shard is gone, not merged
    assert loaded.meta == {"v": 2}
    assert set(_tree(url)) == {*NEW, "manifest.json"}
    assert _entries(root) == ["v1"]


def test_empty_folder_counts_as_no_state(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    write_state(str(tmp_path / "v1"), NEW, {})
    assert read_state(str(tmp_path / "v1")).files == NEW


def test_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "precious.txt").write_bytes(b"user data")
    for overwrite in (False, True):
        with pytest.raises(StateError, match="is not a Ricordo state"):
            write_state(str(tmp_path / "v1"), NEW, {}, overwrite=overwrite)
    assert _tree(str(tmp_path / "v1")) == {"precious.txt": b"user data"}


def test_atomic_exchange_swaps_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"a")
    (tmp_path / "b").mkdir()
    if not fs_mod.exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert not (tmp_path / "a" / "x").exists()
    assert (tmp_path / "b" / "x").read_bytes() == b"a"


def test_manifest_is_written_last(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # On memory:// and s3:// there is no rename: the manifest landing last is what makes a
    # half-written state recognisable as incomplete.
    order: list[str] = []
    real = store_mod._store_file

    def record(loc, path, data):  # type: ignore[no-untyped-def]
        order.append(path.rsplit("/", 1)[-1])
        real(loc, path, data)

    monkeypatch.setattr(store_mod, "_store_file", record)
    write_state(f"{root}/v1", NEW, {})
    assert order[-1] == "manifest.json"
    assert sorted(order[:-1]) == sorted(NEW)


# --------------------------------------------------------------------------------- exceptions


@pytest.mark.parametrize("n_ok", [0, 1, len(NEW)])  # fail on first file, mid-way, on manifest
def test_failed_write_leaves_nothing(root: str, n_ok: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_after(monkeypatch, n_ok)
    url = f"{root}/v1"
    with pytest.raises(Boom):
        write_state(url, NEW, {})
    assert not state_exists(url)
    assert _tree(url) == {}
    assert _entries(root) == []  # no NAME, no tmp folder, no lock


@pytest.mark.parametrize("n_ok", [0, 1, len(NEW)])
def test_failed_overwrite_keeps_old_state(
    tmp_path: Path, n_ok: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "v1")
    write_state(url, OLD, {"v": 1})
    before = _tree(url)
    _fail_after(monkeypatch, n_ok)
    with pytest.raises(Boom):
        write_state(url, NEW, {"v": 2}, overwrite=True)
    assert _tree(url) == before
    assert read_state(url).files == OLD
    assert _entries(str(tmp_path)) == ["v1"]


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_failed_publish_keeps_old_state(
    tmp_path: Path, atomic_swap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "v1")
    write_state(url, OLD, {"v": 1})
    before = _tree(url)

    def broken_exchange(a: str, b: str) -> bool:
        raise OSError("exchange failed")

    if atomic_swap:
        monkeypatch.setattr(store_mod, "exchange", broken_exchange)
    else:  # fallback: the second rename (tmp -> NAME) fails; the old state must be put back
        monkeypatch.setattr(store_mod, "exchange", lambda a, b: False)
        real_rename = os.rename

        def rename(src: str, dst: str) -> None:
            if ".tmp-" in os.path.basename(src):
                raise OSError("rename failed")
            real_rename(src, dst)

        monkeypatch.setattr(store_mod.os, "rename", rename)
    # The OS error comes back as one StateError line naming the state and the OS's reason.
    with pytest.raises(StateError, match=r"cannot write the state at .*v1: (exchange|rename) fail"):
        write_state(url, NEW, {"v": 2}, overwrite=True)
    monkeypatch.undo()
    assert _tree(url) == before
    assert _entries(str(tmp_path)) == ["v1"]


def test_set_aside_state_of_dead_writer_is_restored(tmp_path: Path) -> None:
    # A writer killed between the two renames of an overwrite leaves NAME.old-<pid>-<hex> and no
    # NAME; the next write to NAME puts the old state back instead of losing it.
    url = str(tmp_path / "v1")
    write_state(url, OLD, {"v": 1})
    os.rename(url, str(tmp_path / f"v1.old-{_dead_pid()}-abcd1234"))
    with pytest.raises(StateExistsError):
        write_state(url, NEW, {"v": 2})
    assert read_state(url).files == OLD
    assert _entries(str(tmp_path)) == ["v1"]


# --------------------------------------------------------------------------------- SIGKILL

_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    import ricordo.state.store as store

    real = store._store_file
    count = 0

    def slow(loc, path, data):
        global count
        real(loc, path, data)
        count += 1
        if count == 2:  # two files on disk, manifest not yet: announce, then hang
            print("writing", flush=True)
            time.sleep(60)

    store._store_file = slow
    files = {f"memory/shard-{i:05d}.safetensors": bytes([i]) * 1000 for i in range(50)}
    store.write_state(sys.argv[1], files, {"writer": "killed"}, overwrite=True)
    """
)


@pytest.mark.parametrize("had_state", [False, True])
def test_sigkill_mid_write_leaves_old_state_and_next_write_succeeds(
    tmp_path: Path, had_state: bool
) -> None:
    url = str(tmp_path / "v1")
    if had_state:
        write_state(url, OLD, {"v": 1})
    before = _tree(url)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        tmp_dirs = [e for e in os.listdir(tmp_path) if e.startswith(f"v1.tmp-{proc.pid}-")]
        assert len(tmp_dirs) == 1
        assert (tmp_path / "v1.lock").exists()
        # The live writer holds the lock: a concurrent write is refused.
        with pytest.raises(StateLockedError, match=f"pid {proc.pid}"):
            write_state(url, NEW, {}, overwrite=True)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    # Killed mid-write: NAME is exactly as before; only debris (tmp folder, stale lock) remains.
    assert _tree(url) == before
    assert state_exists(url) is had_state
    # The next write takes over the stale lock and clears the dead writer's tmp folder.
    write_state(url, NEW, {"v": 2}, overwrite=True)
    assert read_state(url).files == NEW
    assert _entries(str(tmp_path)) == ["v1"]


# --------------------------------------------------------------------------------- lock


def _lock_bytes(pid: int, host: str | None = None) -> bytes:
    return json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "created": "2024-01-01T00:00:00+00:00"}
    ).encode()


def _put(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, data)


def test_live_lock_blocks_the_write(root: str) -> None:
    url = f"{root}/v1"
    lock = _lock_bytes(os.getpid())
    _put(f"{url}.lock", lock)
    with pytest.raises(StateLockedError) as exc:
        write_state(url, NEW, {})
    assert str(exc.value) == (
        f"another job (pid {os.getpid()} on host {socket.gethostname()}) is writing {url}; "
        f"wait for it or remove {url}.lock if it is dead"
    )
    assert not state_exists(url)
    fs, path = fsspec.core.url_to_fs(f"{url}.lock")
    assert fs.cat_file(path) == lock  # untouched


def test_lock_from_another_host_blocks_even_if_pid_is_dead(root: str) -> None:
    url = f"{root}/v1"
    _put(f"{url}.lock", _lock_bytes(_dead_pid(), host="some-other-host"))
    with pytest.raises(StateLockedError, match="on host some-other-host"):
        write_state(url, NEW, {})


def test_stale_lock_of_dead_pid_is_taken_over(root: str) -> None:
    url = f"{root}/v1"
    _put(f"{url}.lock", _lock_bytes(_dead_pid()))
    write_state(url, NEW, {})
    assert read_state(url).files == NEW
    assert _entries(root) == ["v1"]  # lock released


def test_unreadable_lock_blocks_until_it_is_old(tmp_path: Path) -> None:
    url = str(tmp_path / "v1")
    lock = tmp_path / "v1.lock"
    lock.write_bytes(b"")  # a writer that has created but not yet filled its lock
    with pytest.raises(StateLockedError, match="unknown holder"):
        write_state(url, NEW, {})
    old = time.time() - 3600
    os.utime(lock, (old, old))  # an hour old: debris of a crash
    write_state(url, NEW, {})
    assert not lock.exists()


def test_release_never_removes_another_jobs_lock(tmp_path: Path) -> None:
    loc = fs_mod.resolve(str(tmp_path / "v1"))
    lock = StateLock(loc)
    lock.acquire()
    other = _lock_bytes(os.getpid() + 1)
    (tmp_path / "v1.lock").write_bytes(other)  # someone took it over meanwhile
    lock.release()
    assert (tmp_path / "v1.lock").read_bytes() == other


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="zombie check needs /proc")
def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(_dead_pid())
    assert not pid_alive(0)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while pid_alive(zombie.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # exited but not reaped: a zombie must count as dead
        assert not pid_alive(zombie.pid)
    finally:
        zombie.wait()
