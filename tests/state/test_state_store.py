"""State store: round trips, integrity checks, format versions, path rules and listing."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator

import fsspec
import pytest

from ricordo import __version__
from ricordo.errors import (
    StateCorruptError,
    StateError,
    StateExistsError,
    StateLockedError,
    StateNotFoundError,
    StateVersionError,
)
from ricordo.state import (
    FORMAT_VERSION,
    LoadedState,
    check_writable,
    list_states,
    read_manifest,
    read_state,
    state_exists,
    write_state,
)
from ricordo.state import manifest as manifest_mod

FILES = {
    "model.safetensors": os.urandom(3000),
    "method.json": b'{"lam": 0.5}',
    "empty.bin": b"",
    "memory/shard-00000.safetensors": os.urandom(1500),
    "memory/index/part-1.npy": bytes(range(256)) * 3,
}
META = {"method": "er", "hparams": {"lr": 0.01, "sizes": [1, 2, 3]}, "note": "caffè ☕"}


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A unique memory:// folder, removed afterwards (the memory filesystem is process-global)."""
    root = f"memory://ricordo-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root[len("memory://") :]
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(params=["local", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: os.PathLike, memory_root: str) -> str:
    """Run a test on the local disk (crash-safe rename path) and on memory:// (manifest-last)."""
    return str(tmp_path) if request.param == "local" else memory_root


def _fs_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def _cat(url: str, rel: str) -> bytes:
    fs, path = _fs_path(url)
    return fs.cat_file(f"{path}/{rel}")


def _put(url: str, rel: str, data: bytes) -> None:
    fs, path = _fs_path(url)
    fs.makedirs(os.path.dirname(f"{path}/{rel}"), exist_ok=True)
    fs.pipe_file(f"{path}/{rel}", data)


def _all_files(url: str) -> dict[str, bytes]:
    fs, path = _fs_path(url)
    return {p[len(path) + 1 :]: fs.cat_file(p) for p in fs.find(path)}


def _reseal(manifest: dict) -> bytes:
    """Re-seal a hand-edited manifest with a valid checksum, as a forger or newer Ricordo would."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["manifest_sha256"] = hashlib.sha256(manifest_mod.canonical_json(body).encode()).hexdigest()
    return (manifest_mod.canonical_json(body) + "\n").encode()


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------- round trip


def test_round_trip_bit_for_bit(root: str) -> None:
    url = f"{root}/v1"
    written = write_state(url, FILES, META, parent=f"{root}/v0")
    loaded = read_state(url)
    assert isinstance(loaded, LoadedState)
    assert loaded.url == url
    assert loaded.files == FILES
    assert loaded.meta == META
    assert loaded.manifest == written == read_manifest(url)
    assert loaded.manifest["parent"] == f"{root}/v0"
    assert loaded.manifest["format"] == "ricordo-state"
    assert loaded.manifest["format_version"] == FORMAT_VERSION == 1
    assert loaded.manifest["library_version"] == __version__
    assert loaded.manifest["created"].endswith("+00:00")
    assert state_exists(url)
    # No pickle, nothing extra: the folder holds exactly the given bytes plus a JSON manifest.
    on_disk = _all_files(url)
    manifest_bytes = on_disk.pop("manifest.json")
    assert on_disk == FILES
    assert json.loads(manifest_bytes) == written
    assert manifest_bytes == (manifest_mod.canonical_json(written) + "\n").encode()
    # No lock or temporary sibling is left next to the state.
    fs, path = _fs_path(root)
    assert sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)) == ["v1"]


def test_meta_is_normalised_to_what_reads_back(tmp_path: os.PathLike) -> None:
    url = f"{tmp_path}/s"
    written = write_state(url, {}, {"t": (1, 2), "n": None})
    assert written["meta"] == {"t": [1, 2], "n": None}
    assert read_state(url).files == {}


def test_repr_leaves_out_file_bytes(tmp_path: os.PathLike) -> None:
    write_state(f"{tmp_path}/s", {"big": b"x" * 10_000}, {})
    assert len(repr(read_state(f"{tmp_path}/s"))) < 2000


# --------------------------------------------------------------------------------- integrity


def _positions(size: int) -> list[int]:
    return sorted({0, size // 2, size - 1})


@pytest.mark.parametrize("mask", [0xFF, 0x01])
def test_every_flipped_byte_is_detected_and_named(root: str, mask: int) -> None:
    url = f"{root}/s"
    write_state(url, FILES, META)
    originals = _all_files(url)
    checked = 0
    for rel, data in originals.items():
        if not data:
            continue  # an empty file has no byte to flip (its size is still checked)
        for pos in _positions(len(data)):
            flipped = bytearray(data)
            flipped[pos] ^= mask
            _put(url, rel, bytes(flipped))
            with pytest.raises(StateCorruptError) as exc:
                read_state(url)
            msg = _one_line(exc)
            assert rel in msg, msg
            assert url in msg
            if rel != "manifest.json":
                assert "sha256" in msg
            _put(url, rel, data)
            checked += 1
    assert checked == 3 * 5  # 4 non-empty data files + manifest, 3 positions each
    assert read_state(url).files == FILES  # restored bytes read fine again


def test_flipped_manifest_byte_fails_read_manifest_too(tmp_path: os.PathLike) -> None:
    url = f"{tmp_path}/s"
    write_state(url, FILES, META)
    raw = _cat(url, "manifest.json")
    for pos in _positions(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x20
        _put(url, "manifest.json", bytes(bad))
        with pytest.raises(StateCorruptError, match="manifest.json"):
            read_manifest(url)


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: raw.replace(b'","', b'", "', 1),  # extra whitespace
        lambda raw: raw + b"\n",  # extra trailing newline
        lambda raw: raw.rstrip(b"\n"),  # missing trailing newline
        lambda raw: json.dumps(json.loads(raw), indent=2).encode(),  # pretty-printed
    ],
)
def test_manifest_whitespace_changes_are_detected(tmp_path: os.PathLike, edit) -> None:
    url = f"{tmp_path}/s"
    write_state(url, FILES, META)
    _put(url, "manifest.json", edit(_cat(url, "manifest.json")))
    with pytest.raises(StateCorruptError, match="manifest.json"):
        read_state(url)


def test_tampered_meta_is_detected(root: str) -> None:
    url = f"{root}/s"
    write_state(url, FILES, META)
    manifest = json.loads(_cat(url, "manifest.json"))
    manifest["meta"]["method"] = "ewc"  # canonical rendering kept, checksum not updated
    _put(url, "manifest.json", (manifest_mod.canonical_json(manifest) + "\n").encode())
    with pytest.raises(StateCorruptError) as exc:
        read_state(url)
    assert "manifest.json" in _one_line(exc) and "checksum" in str(exc.value)


def test_resealed_manifest_with_unsafe_path_is_refused(tmp_path: os.PathLike) -> None:
    # The checksum catches accidents, not forgers: paths are validated on read as well.
    url = f"{tmp_path}/s"
    write_state(url, {"a": b"1"}, {})
    manifest = json.loads(_cat(url, "manifest.json"))
    manifest["files"]["../escape"] = manifest["files"]["a"]
    _put(url, "manifest.json", _reseal(manifest))
    with pytest.raises(StateCorruptError, match="unsafe"):
        read_state(url)


def test_truncated_file_is_detected(root: str) -> None:
    url = f"{root}/s"
    write_state(url, FILES, META)
    rel = "memory/shard-00000.safetensors"
    _put(url, rel, FILES[rel][:-10])
    with pytest.raises(StateCorruptError) as exc:
        read_state(url)
    msg = _one_line(exc)
    assert rel in msg and "1490 bytes" in msg and "1500" in msg


def test_missing_file_is_detected(root: str) -> None:
    url = f"{root}/s"
    write_state(url, FILES, META)
    fs, path = _fs_path(url)
    fs.rm(f"{path}/memory/index/part-1.npy")
    with pytest.raises(StateCorruptError) as exc:
        read_state(url)
    assert "memory/index/part-1.npy is missing" in _one_line(exc)
    assert read_manifest(url)["meta"] == META  # read_manifest opens no data file


def test_missing_state_and_missing_manifest(root: str) -> None:
    with pytest.raises(StateNotFoundError) as exc:
        read_state(f"{root}/nothing")
    assert "no Ricordo state" in _one_line(exc) and "manifest.json missing" in str(exc.value)
    assert not state_exists(f"{root}/nothing")
    url = f"{root}/s"
    write_state(url, FILES, META)
    fs, path = _fs_path(url)
    fs.rm(f"{path}/manifest.json")
    assert not state_exists(url)
    with pytest.raises(StateNotFoundError) as exc:
        read_state(url)
    assert "incomplete" in _one_line(exc)


def test_state_path_that_is_a_file(tmp_path: os.PathLike) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StateNotFoundError):
        read_state(str(tmp_path / "f"))


def test_file_url_scheme(tmp_path: os.PathLike) -> None:
    write_state(f"file://{tmp_path}/s", {"a": b"1"}, {})
    assert read_state(f"{tmp_path}/s").files == {"a": b"1"}


# --------------------------------------------------------------------------------- versions


def test_newer_format_version_is_refused(root: str) -> None:
    url = f"{root}/s"
    write_state(url, FILES, META)
    manifest = json.loads(_cat(url, "manifest.json"))
    manifest["format_version"] = 2
    _put(url, "manifest.json", _reseal(manifest))
    with pytest.raises(StateVersionError) as exc:
        read_state(url)
    assert _one_line(exc) == (
        f"state at {url} has format version 2 but this Ricordo ({__version__}) reads up to 1; "
        "upgrade ricordo"
    )
    # A newer Ricordo may seal its manifest differently: still a version error, not "corrupt".
    manifest["extra"] = "sealed another way"
    _put(url, "manifest.json", (manifest_mod.canonical_json(manifest) + "\n").encode())
    with pytest.raises(StateVersionError, match="upgrade ricordo"):
        read_manifest(url)


def test_older_version_is_migrated(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{tmp_path}/s"
    write_state(url, {"a": b"1"}, {"old": True})
    monkeypatch.setattr(manifest_mod, "FORMAT_VERSION", 2)
    with pytest.raises(StateVersionError) as exc:
        read_state(url)
    assert "no migration from version 1" in _one_line(exc)

    def upgrade(m: dict) -> dict:
        return {**m, "meta": {**m["meta"], "migrated": True}}

    monkeypatch.setitem(manifest_mod.MIGRATIONS, 1, upgrade)
    loaded = read_state(url)
    assert loaded.manifest["format_version"] == 2
    assert loaded.meta == {"old": True, "migrated": True}
    assert loaded.files == {"a": b"1"}


@pytest.mark.parametrize(("key", "value"), [("format", "other"), ("format_version", 0)])
def test_wrong_format_is_corrupt(tmp_path: os.PathLike, key: str, value: object) -> None:
    url = f"{tmp_path}/s"
    write_state(url, {"a": b"1"}, {})
    manifest = json.loads(_cat(url, "manifest.json"))
    manifest[key] = value
    _put(url, "manifest.json", _reseal(manifest))
    with pytest.raises(StateCorruptError, match="manifest.json"):
        read_state(url)


# --------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "rel",
    [
        "/abs/x",
        "../x",
        "a/../../x",
        "a/./b",
        ".",
        "a\\b",
        "",
        "a//b",
        "a/",
        "manifest.json",
        "x.lock",
        "memory/s.tmp-1-ab",
        "v1.old-2-cd",
        "a\nb",
    ],
)
def test_unsafe_relative_paths_are_rejected(root: str, rel: str) -> None:
    url = f"{root}/s"
    with pytest.raises(StateError) as exc:
        write_state(url, {"ok": b"1", rel: b"2"}, {})
    _one_line(exc)
    assert not state_exists(url)
    fs, path = _fs_path(url)
    assert not fs.exists(path)


def test_nested_names_are_allowed(tmp_path: os.PathLike) -> None:
    files = {"memory/shard-00000.safetensors": b"1", "sub/manifest.json": b"2", "a.b.c": b"3"}
    write_state(f"{tmp_path}/s", files, {})
    assert read_state(f"{tmp_path}/s").files == files


@pytest.mark.parametrize(
    ("files", "meta", "match"),
    [
        ({"a": b"1", "a/b": b"2"}, {}, "also stored as a file"),
        ({"a": "text"}, {}, "must be bytes"),
        ({"a": b"1"}, {"x": object()}, "JSON"),
        ({"a": b"1"}, {"x": float("nan")}, "JSON"),
        ({"a": b"1"}, ["not", "a", "mapping"], "mapping"),
    ],
)
def test_bad_inputs_are_rejected_before_writing(
    tmp_path: os.PathLike, files: dict, meta: object, match: str
) -> None:
    with pytest.raises(StateError, match=match):
        write_state(f"{tmp_path}/s", files, meta)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_bytes_like_values_are_stored(tmp_path: os.PathLike) -> None:
    write_state(f"{tmp_path}/s", {"a": bytearray(b"12"), "b": memoryview(b"34")}, {})
    assert read_state(f"{tmp_path}/s").files == {"a": b"12", "b": b"34"}


def test_url_without_a_name_is_rejected() -> None:
    with pytest.raises(StateError, match="does not name"):
        write_state("/", {}, {})


# ------------------------------------------------------------------------ checking a target


def test_check_writable_raises_what_the_write_would(
    root: str, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    check_writable(f"{root}/free")  # nothing there
    write_state(f"{root}/taken", {"x": b"1"}, {})
    with pytest.raises(StateExistsError, match="--overwrite"):
        check_writable(f"{root}/taken")
    check_writable(f"{root}/taken", overwrite=True)
    live = {"pid": os.getpid(), "host": socket.gethostname(), "created": "2024-01-01T00:00:00"}
    _put(root, "busy.lock", json.dumps(live).encode())
    with pytest.raises(StateLockedError, match=f"pid {os.getpid()}"):
        check_writable(f"{root}/busy")
    dead = {**live, "pid": 2**22 + 12345}  # above Linux's pid_max: never a live process
    _put(root, "stale.lock", json.dumps(dead).encode())
    check_writable(f"{root}/stale")  # a stale lock would be taken over: no error, no warning
    assert "taking over" not in caplog.text
    assert _cat(root, "stale.lock") == json.dumps(dead).encode()  # and nothing was changed
    if root.startswith("memory://"):
        return
    _put(root, "user/data.txt", b"mine")
    with pytest.raises(StateError, match="exists and is not a Ricordo state"):
        check_writable(f"{root}/user", overwrite=True)


# --------------------------------------------------------------------------------- listing


def test_list_states(root: str) -> None:
    write_state(f"{root}/b-first", {"x": b"1"}, {"n": 1})
    write_state(f"{root}/a-second", {"x": b"2"}, {"n": 2}, parent=f"{root}/b-first")
    write_state(f"{root}/broken", {"x": b"3"}, {"n": 3})
    _put(root, "broken/manifest.json", b"{not json")  # corrupt: skipped, logged
    _put(root, "not-a-state/data.bin", b"4")
    _put(root, "c.tmp-123-abcd/manifest.json", b"{}")  # writer debris
    _put(root, "c.lock", b"{}")
    _put(root, "loose-file", b"5")
    states = list_states(root)
    assert [s["name"] for s in states] == ["b-first", "a-second"]
    assert states[1] == {
        "url": f"{root}/a-second",
        "name": "a-second",
        "created": read_manifest(f"{root}/a-second")["created"],
        "parent": f"{root}/b-first",
        "meta": {"n": 2},
    }
    assert read_state(states[0]["url"]).files == {"x": b"1"}


def test_list_states_of_missing_folder(tmp_path: os.PathLike) -> None:
    with pytest.raises(StateNotFoundError):
        list_states(str(tmp_path / "nope"))
    assert list_states(str(tmp_path)) == []


def test_import_does_not_pull_torch() -> None:
    import subprocess
    import sys

    code = "import sys, ricordo.state; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
