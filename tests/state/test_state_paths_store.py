"""State files given as local paths (streamed, chunk-hashed) and read back lazily as paths."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from ricordo.errors import StateCorruptError, StateError
from ricordo.state import fs as fs_mod
from ricordo.state import read_state, write_state
from ricordo.state import store as store_mod


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://ricordo-paths-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory://") :]):
        fs.rm(root[len("memory://") :], recursive=True)


@pytest.fixture
def big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file several chunks long (the chunk size is shrunk so the test stays small)."""
    monkeypatch.setattr(fs_mod, "CHUNK_BYTES", 1000)
    path = tmp_path / "source.bin"
    path.write_bytes(bytes(range(256)) * 41 + b"tail")
    return path


def test_path_values_are_streamed_and_hashed(big: Path, tmp_path: Path) -> None:
    url = str(tmp_path / "state")
    manifest = write_state(url, {"memory/a.npy": big, "model.safetensors": b"w"}, {"k": 1})
    data = big.read_bytes()
    assert manifest["files"]["memory/a.npy"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    assert (Path(url) / "memory" / "a.npy").read_bytes() == data
    assert big.read_bytes() == data  # the source is only read
    eager = read_state(url)
    assert eager.files["memory/a.npy"] == data and eager.files["model.safetensors"] == b"w"


def test_lazy_prefixes_give_verified_paths_for_local_states(big: Path, tmp_path: Path) -> None:
    url = str(tmp_path / "state")
    write_state(url, {"memory/a.npy": big, "memory/index.json": b"{}", "m.bin": b"x"}, {})
    state = read_state(url, lazy_prefixes=("memory/",))
    assert isinstance(state.files["memory/a.npy"], Path)
    assert state.files["memory/a.npy"] == Path(url) / "memory" / "a.npy"
    assert state.files["memory/a.npy"].read_bytes() == big.read_bytes()
    assert state.files["m.bin"] == b"x"  # outside the prefixes: bytes as before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"!"), "sha256"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "bytes but the manifest says"),
        (lambda p: p.unlink(), "missing"),
        (lambda p: (p.unlink(), p.mkdir()), "folder"),
    ],
)
def test_lazy_reads_still_verify_every_file(big: Path, tmp_path: Path, damage, message) -> None:  # type: ignore[no-untyped-def]
    url = str(tmp_path / "state")
    write_state(url, {"memory/a.npy": big}, {})
    damage(Path(url) / "memory" / "a.npy")
    with pytest.raises(StateCorruptError, match=message):
        read_state(url, lazy_prefixes=("memory/",))


def test_remote_states_take_paths_and_read_back_bytes(big: Path, memory_root: str) -> None:
    url = f"{memory_root}/state"
    write_state(url, {"memory/a.npy": big, "x.bin": b"1"}, {})
    state = read_state(url, lazy_prefixes=("memory/",))
    assert state.files["memory/a.npy"] == big.read_bytes()  # no local path to hand out


def test_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a file"):
        write_state(str(tmp_path / "s"), {"a.bin": tmp_path}, {})
    with pytest.raises(StateError, match="not a file"):
        write_state(str(tmp_path / "s"), {"a.bin": tmp_path / "nope"}, {})
    with pytest.raises(StateError, match="bytes or a local path"):
        write_state(str(tmp_path / "s"), {"a.bin": str(tmp_path)}, {})  # type: ignore[dict-item]
    assert not (tmp_path / "s").exists()


def test_a_crash_while_copying_a_path_leaves_no_state(
    big: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_mod._store_file

    def crash(loc, path, data):  # type: ignore[no-untyped-def]
        if not isinstance(data, bytes):
            raise RuntimeError("disk full")
        real(loc, path, data)

    monkeypatch.setattr(store_mod, "_store_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_state(str(tmp_path / "s"), {"m.bin": b"1", "memory/a.npy": big}, {})
    assert not (tmp_path / "s").exists()
    leftovers = {p.name for p in tmp_path.iterdir()} - {"source.bin", "s.lock"}
    assert leftovers == set()  # no half state, no temporary folder
