"""State store safety: what is never replaced, where a state is never written, links never
followed, and readers that race a writer never report corruption that is not there."""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from ricordo.errors import StateCorruptError, StateError, StateExistsError
from ricordo.state import (
    check_writable,
    enclosing_state,
    read_manifest,
    read_state,
    state_changed,
    write_state,
)
from ricordo.state import store as store_mod

FILES = {"model.safetensors": b"weights" * 50, "memory/shard-00000.safetensors": b"mem" * 40}
NEW = {"model.safetensors": b"new weights" * 60, "history.json": b"[]"}


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: files by content, folders and links by kind."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes()
    return out


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://ricordo-safety-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory://") :]):
        fs.rm(root[len("memory://") :], recursive=True)


# ------------------------------------------------------------- overwrite replaces only a state


def _stray_file(state: Path) -> None:
    (state / "notes.txt").write_text("my notes")


def _fake_manifest(state: Path) -> None:
    (state / "manifest.json").write_text('{"name": "my web app"}')


def _nested_state(state: Path) -> None:
    write_state(str(state / "inner"), {"x": b"1"}, {})  # written before the outer check existed


def _link_inside(state: Path) -> None:
    (state.parent / "outside.txt").write_text("outside")
    (state / "link").symlink_to(state.parent / "outside.txt")


def _listed_file_changed(state: Path) -> None:
    (state / "model.safetensors").write_bytes(b"someone else's file")


def _empty_extra_folder(state: Path) -> None:
    (state / "photos").mkdir()


@pytest.mark.parametrize(
    ("plant", "needle"),
    [
        (_stray_file, "'notes.txt'"),
        (_fake_manifest, "not a valid Ricordo manifest"),
        (_nested_state, "'inner/'"),
        (_link_inside, "'link'"),
        (_listed_file_changed, "'model.safetensors'"),
        (_empty_extra_folder, "'photos/'"),
    ],
)
def test_overwrite_refuses_anything_but_a_clean_state(
    tmp_path: Path, plant, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "v1"
    if plant is _nested_state:  # the nested state predates the rule: plant it behind its back
        write_state(str(state), FILES, {})
        monkeypatch.setattr(store_mod, "_check_location", lambda loc: None)
        plant(state)
        monkeypatch.undo()
    else:
        write_state(str(state), FILES, {})
        plant(state)
    before = _tree(tmp_path)
    for call in (
        lambda: write_state(str(state), NEW, {}, overwrite=True),
        lambda: check_writable(str(state), overwrite=True),
    ):
        with pytest.raises(StateError) as exc:
            call()
        message = str(exc.value)
        assert needle in message and "\n" not in message
        assert "Ricordo replaces only a complete state of its own" in message or (
            "not a valid Ricordo manifest" in message
        )
    assert _tree(tmp_path) == before  # every user file is still there, byte for byte


def test_overwrite_refuses_a_remote_state_with_a_stray_file(memory_root: str) -> None:
    url = f"{memory_root}/v1"
    write_state(url, FILES, {})
    fs = fsspec.filesystem("memory")
    path = url[len("memory://") :]
    fs.pipe_file(f"{path}/notes.txt", b"mine")
    with pytest.raises(StateError, match="'notes.txt'"):
        write_state(url, NEW, {}, overwrite=True)
    assert fs.cat_file(f"{path}/notes.txt") == b"mine"
    assert read_state(url).files == FILES


def test_overwrite_still_replaces_a_clean_state(tmp_path: Path) -> None:
    write_state(str(tmp_path / "v1"), FILES, {"v": 1})
    write_state(str(tmp_path / "v1"), NEW, {"v": 2}, overwrite=True)
    assert read_state(str(tmp_path / "v1")).files == NEW


def test_exists_error_speaks_python_and_names_the_cli_flag(tmp_path: Path) -> None:
    write_state(str(tmp_path / "v1"), FILES, {})
    with pytest.raises(StateExistsError, match=r"pass overwrite=True \(CLI: .*--overwrite\)"):
        write_state(str(tmp_path / "v1"), NEW, {})


# ------------------------------------------------------------------------ where states go


@pytest.mark.parametrize(
    "name", ["v1.tmp-123-abcd", "v1.old-99-ab12", "v1.lock", "v1.lock.stale-1-a"]
)
def test_bookkeeping_names_are_refused(tmp_path: Path, name: str) -> None:
    for call in (
        lambda: write_state(str(tmp_path / name), FILES, {}),
        lambda: check_writable(str(tmp_path / name)),
    ):
        with pytest.raises(StateError, match="collides with Ricordo's own lock, temporary"):
            call()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("inner", ["v0/inner", "v0/memory/inner", "v0/new/deeper/inner"])
def test_a_state_inside_a_state_is_refused(tmp_path: Path, inner: str) -> None:
    write_state(str(tmp_path / "v0"), FILES, {})
    before = _tree(tmp_path)
    for call in (
        lambda: write_state(str(tmp_path / inner), NEW, {}),
        lambda: check_writable(str(tmp_path / inner)),
    ):
        with pytest.raises(StateError, match=f"inside the state at {tmp_path / 'v0'}"):
            call()
    assert _tree(tmp_path) == before


def test_a_state_inside_a_remote_state_is_refused(memory_root: str) -> None:
    write_state(f"{memory_root}/v0", FILES, {})
    with pytest.raises(StateError, match="inside the state at"):
        write_state(f"{memory_root}/v0/inner", NEW, {})


def test_a_foreign_manifest_above_does_not_block(tmp_path: Path) -> None:
    # A web project's manifest.json is not a Ricordo state: states may live below it.
    (tmp_path / "manifest.json").write_text('{"name": "app", "version": "1"}')
    write_state(str(tmp_path / "states" / "v0"), FILES, {})
    assert enclosing_state(str(tmp_path / "states" / "v0" / "x.npy")) == str(
        tmp_path / "states" / "v0"
    )
    assert enclosing_state(str(tmp_path / "other.npy")) is None


def test_read_only_folder_is_found_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, where chmod does not stop writes: the check asks os.access.
    real_access = os.access
    target = tmp_path / "ro"
    target.mkdir()

    def access(path: object, mode: int) -> bool:
        return False if os.fspath(path) == str(target) else real_access(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(store_mod.os, "access", access)
    with pytest.raises(StateError, match=f"no permission to write in {target}"):
        check_writable(str(target / "v1"))
    with pytest.raises(StateError, match=f"no permission to write in {target}"):
        check_writable(str(target / "new" / "v1"))  # the nearest existing folder counts
    check_writable(str(tmp_path / "v1"))  # elsewhere is fine


def test_an_os_error_while_writing_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(loc, path, data):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(store_mod, "_store_file", denied)
    with pytest.raises(StateError) as exc:
        write_state(str(tmp_path / "v1"), FILES, {})
    message = str(exc.value)
    assert message.startswith(f"cannot write the state at {tmp_path / 'v1'}: Permission denied")
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no temporary folder, no lock


# ------------------------------------------------------------------------------- symlinks


def test_a_linked_file_is_refused_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "v1"
    write_state(str(state), FILES, {})
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(FILES["model.safetensors"])  # same bytes: only the link is wrong
    (state / "model.safetensors").unlink()
    (state / "model.safetensors").symlink_to(outside)
    with pytest.raises(StateCorruptError, match="model.safetensors is a symbolic link"):
        read_state(str(state))


@pytest.mark.parametrize("lazy", [(), ("memory/",)])
def test_a_linked_folder_is_refused_not_followed(tmp_path: Path, lazy: tuple[str, ...]) -> None:
    state = tmp_path / "v1"
    write_state(str(state), FILES, {})
    (state / "memory").rename(tmp_path / "mem-elsewhere")
    (state / "memory").symlink_to(tmp_path / "mem-elsewhere")
    with pytest.raises(StateCorruptError, match=r": memory is a symbolic link; a state holds only"):
        read_state(str(state), lazy_prefixes=lazy)


def test_a_linked_manifest_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "v1"
    write_state(str(state), FILES, {})
    (state / "manifest.json").rename(tmp_path / "m.json")
    (state / "manifest.json").symlink_to(tmp_path / "m.json")
    with pytest.raises(StateCorruptError, match="manifest.json is a symbolic link"):
        read_manifest(str(state))


def test_the_state_folder_itself_may_be_a_link(tmp_path: Path) -> None:
    write_state(str(tmp_path / "v7"), FILES, {})
    (tmp_path / "current").symlink_to(tmp_path / "v7")
    assert read_state(str(tmp_path / "current")).files == FILES


def test_a_fifo_in_a_state_does_not_hang(tmp_path: Path) -> None:
    state = tmp_path / "v1"
    write_state(str(state), {"pipe": b""}, {})
    (state / "pipe").unlink()
    os.mkfifo(state / "pipe")
    with pytest.raises(StateCorruptError, match="pipe is not a regular file"):
        read_state(str(state))


# -------------------------------------------------------------------- readers racing a writer


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_reader_racing_an_overwriting_writer_never_sees_corruption(
    tmp_path: Path, atomic_swap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not atomic_swap:  # two renames: NAME is briefly missing, the lock is held meanwhile
        monkeypatch.setattr(store_mod, "exchange", lambda a, b: False)
    url = str(tmp_path / "v1")
    names = [f"memory/shard-{i:05d}.safetensors" for i in range(20)]
    write_state(url, {n: os.urandom(3000) for n in names}, {"n": 0})
    stop = threading.Event()
    writes = [0]
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                writes[0] += 1
                files = {n: os.urandom(3000) for n in names}
                write_state(url, files, {"n": writes[0]}, overwrite=True)
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    errors: list[str] = []
    reads = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            for lazy in ((), ("memory/",)):
                try:
                    loaded = read_state(url, lazy_prefixes=lazy)
                    assert set(loaded.files) == set(names)
                    reads += 1
                except StateError as exc:
                    errors.append(str(exc))
    finally:
        stop.set()
        thread.join()
    assert not failures, failures
    assert writes[0] >= 5 and reads >= 20  # they really raced (the old reader failed ~1 in 60)
    assert errors == []


def test_corruption_is_still_reported_at_once(tmp_path: Path) -> None:
    url = str(tmp_path / "v1")
    write_state(url, FILES, {})
    (tmp_path / "v1" / "model.safetensors").write_bytes(b"X" * len(FILES["model.safetensors"]))
    started = time.monotonic()
    with pytest.raises(StateCorruptError, match="model.safetensors fails its sha256 check"):
        read_state(url)
    assert time.monotonic() - started < 0.5  # a stable manifest: no retries, no waiting


def test_state_changed_tells_a_replaced_state(tmp_path: Path) -> None:
    url = str(tmp_path / "v1")
    write_state(url, FILES, {})
    loaded = read_state(url)
    assert not state_changed(loaded)
    write_state(url, NEW, {}, overwrite=True)
    assert state_changed(loaded)


def test_nesting_is_judged_on_real_paths(tmp_path: Path) -> None:
    write_state(str(tmp_path / "a"), FILES, {})
    write_state(str(tmp_path / "a" / ".." / "b"), FILES, {})  # b is beside a, not inside it
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(StateError, match=f"inside the state at {tmp_path / 'a'}"):
        write_state(str(tmp_path / "link" / "inner"), FILES, {})
