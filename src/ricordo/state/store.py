"""Writing and reading states: a content-agnostic store of named byte files plus a JSON manifest.

Files are given as bytes, or as local files (``os.PathLike``) that are hashed and copied in chunks,
so a file larger than RAM (a memory-mapped rehearsal memory) can be stored; ``read_state`` can
likewise hand back the files under some prefixes of a local state as verified paths.

Guarantees: every file is verified (size and sha256) on read; a write is all-or-nothing. On a local
disk the state is built in ``NAME.tmp-<pid>-<hex>`` and published by rename, so a crash never leaves
a half state at NAME. Other fsspec filesystems (memory://, s3://) have no rename: files go straight
into NAME and manifest.json is written last; a state without a manifest is incomplete and refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from fsspec.core import url_to_fs

from ricordo.errors import StateCorruptError, StateError, StateExistsError, StateNotFoundError
from ricordo.state.fs import (
    Location,
    exchange,
    file_digest,
    fsync_dir,
    resolve,
    write_file_synced,
)
from ricordo.state.lock import StateLock, pid_alive
from ricordo.state.manifest import build_manifest, parse_manifest
from ricordo.state.paths import (
    LOCK_SUFFIX,
    MANIFEST_NAME,
    check_relpaths,
    parse_sidecar,
    sidecar_name,
)

log = logging.getLogger(__name__)

# What a state file may be given as: its bytes, or a local file copied in chunks.
FileData = Union[bytes, bytearray, memoryview, "os.PathLike[str]"]


@dataclass(frozen=True)
class LoadedState:
    """A verified state: its URL, full manifest and the bytes of every file it lists.

    Files read lazily (``read_state(..., lazy_prefixes=...)``) are verified local ``Path``s
    inside the state instead of bytes: read them, never write them.
    """

    url: str
    manifest: dict
    files: dict[str, bytes | Path] = field(repr=False)  # may be gigabytes: keep it out of repr

    @property
    def meta(self) -> dict:
        """The caller's metadata stored in the manifest (method, model spec, history, ...)."""
        return self.manifest["meta"]


# ---------------------------------------------------------------------------------------------
# writing


def _store_file(loc: Location, path: str, data: bytes | os.PathLike[str]) -> None:
    """Write one file of a state (data files and manifest alike); tests patch this to crash.

    ``data`` is bytes or a local file, which is streamed (never read whole).
    """
    if loc.is_local:
        write_file_synced(path, data)
    elif isinstance(data, os.PathLike):
        loc.fs.put_file(os.fspath(data), path)
    else:
        loc.fs.pipe_file(path, data)


def _prepare(files: Mapping[str, FileData]) -> dict[str, bytes | Path]:
    """Validate paths and contents; copy mutable buffers so what is hashed is what is written."""
    if not isinstance(files, Mapping):
        raise StateError(f"files must be a mapping of relative path to bytes, got {type(files)}")
    blobs: dict[str, bytes | Path] = {}
    for rel in check_relpaths(files.keys()):
        data = files[rel]
        if isinstance(data, os.PathLike):
            if not os.path.isfile(data):
                raise StateError(f"file {rel!r} is given as {os.fspath(data)!r}, not a file")
            blobs[rel] = Path(data)
            continue
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise StateError(
                f"file {rel!r} must be bytes or a local path (os.PathLike), "
                f"got {type(data).__name__}"
            )
        blobs[rel] = data if isinstance(data, bytes) else bytes(data)
    return blobs


def _describe(data: bytes | Path) -> dict[str, Any]:
    """sha256 and size of one file; a local file is hashed in chunks."""
    if isinstance(data, Path):
        digest, size = file_digest(data)
        return {"sha256": digest, "size": size}
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def write_state(
    url: str,
    files: Mapping[str, FileData],
    meta: Mapping[str, Any],
    *,
    parent: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a complete state at ``url`` (all files, then the manifest) and return the manifest.

    Each file is bytes or a local file (``os.PathLike``, hashed and copied in chunks; it must not
    change while the state is written). Raises StateExistsError if a state is there and
    ``overwrite`` is false, StateLockedError if another live job is writing it. On any failure the
    previous state (if any) is left untouched on a local disk; on other filesystems an overwrite
    removes the old state before writing.
    """
    loc = resolve(url)
    blobs = _prepare(files)
    info = {rel: _describe(data) for rel, data in blobs.items()}
    manifest, manifest_bytes = build_manifest(info, meta, parent)
    if loc.is_local:
        os.makedirs(loc.parent_path, exist_ok=True)
    with StateLock(loc):
        if loc.is_local:
            _write_local(loc, blobs, manifest_bytes, overwrite)
        else:
            _write_remote(loc, blobs, manifest_bytes, overwrite)
    return manifest


def check_writable(url: str, *, overwrite: bool = False) -> None:
    """Raise now the error ``write_state(url, overwrite=overwrite)`` would raise because of what
    is already there: a state (without ``overwrite``), a folder that is not a state, or a live
    writer's lock. ``ricordo update`` calls it before training, so that an hour of training is
    not lost to a write that cannot happen; ``write_state`` checks again (things may change)."""
    loc = resolve(url)
    if loc.is_local:
        kind = _local_target_kind(loc.path)
        if kind == "other":
            raise _not_a_state_error(loc)
        if kind == "state" and not overwrite:
            raise _exists_error(loc)
    elif not overwrite and state_exists(url):
        raise _exists_error(loc)
    StateLock(loc).check()


def _not_a_state_error(loc: Location) -> StateError:
    return StateError(
        f"{loc.url} exists and is not a Ricordo state (no {MANIFEST_NAME}); "
        "remove it or choose another path"
    )


def _exists_error(loc: Location) -> StateExistsError:
    return StateExistsError(
        f"state already exists at {loc.url}; choose a new --next-state or pass --overwrite"
    )


def _local_target_kind(path: str) -> str:
    """What is at NAME: "none", "empty" (an empty folder), "state", or "other" (foreign data)."""
    if not os.path.lexists(path):
        return "none"
    if os.path.isdir(path) and not os.path.islink(path):
        if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            return "state"
        if not os.listdir(path):
            return "empty"
    return "other"


def _clean_sidecars(loc: Location) -> None:
    """Remove temporary/set-aside siblings of NAME left by dead writers (we hold the lock).

    A set-aside ``NAME.old-*`` with no NAME means a writer died between the two renames of an
    overwrite: it is the last complete state, so it is put back rather than deleted.
    """
    for entry in sorted(os.listdir(loc.parent_path)):
        parsed = parse_sidecar(entry)
        if parsed is None or parsed[0] != loc.name or pid_alive(parsed[2]):
            continue
        path = loc.sibling(entry)
        if (
            parsed[1] == "old"
            and not os.path.lexists(loc.path)
            and os.path.isfile(os.path.join(path, MANIFEST_NAME))
        ):
            log.warning("restoring %s from %s left by a dead writer", loc.url, entry)
            os.rename(path, loc.path)
        else:
            log.info("removing %s left by dead pid %d", entry, parsed[2])
            shutil.rmtree(path, ignore_errors=True)


def _write_local(
    loc: Location, blobs: dict[str, bytes | Path], manifest: bytes, overwrite: bool
) -> None:
    _clean_sidecars(loc)
    kind = _local_target_kind(loc.path)
    if kind == "other":
        raise _not_a_state_error(loc)  # never replace user data, even with overwrite
    if kind == "state" and not overwrite:
        raise _exists_error(loc)
    tmp = loc.sibling(sidecar_name(loc.name, "tmp", os.getpid(), secrets.token_hex(4)))
    os.mkdir(tmp)
    try:
        dirs = {tmp}
        for rel, data in blobs.items():
            dest = os.path.join(tmp, *rel.split("/"))
            folder = os.path.dirname(dest)
            if folder not in dirs:
                os.makedirs(folder, exist_ok=True)
                dirs.update(_ancestors(folder, tmp))
            _store_file(loc, dest, data)
        # The manifest goes last: a folder with a manifest is complete by construction.
        _store_file(loc, os.path.join(tmp, MANIFEST_NAME), manifest)
        for folder in sorted(dirs, key=len, reverse=True):
            fsync_dir(folder)
        _publish_local(loc, tmp, replace=kind == "state")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ancestors(folder: str, root: str) -> set[str]:
    out = set()
    while len(folder) > len(root):
        out.add(folder)
        folder = os.path.dirname(folder)
    return out


def _publish_local(loc: Location, tmp: str, *, replace: bool) -> None:
    """Move the finished ``tmp`` folder to NAME, swapping out an old state if there is one."""
    if not replace:
        os.rename(tmp, loc.path)  # also replaces an empty folder at NAME
    elif exchange(tmp, loc.path):
        # Atomic swap: NAME was never missing. ``tmp`` now holds the old state.
        fsync_dir(loc.parent_path)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        # No atomic swap here: two renames, so NAME is briefly missing (a reader in that
        # instant gets StateNotFoundError and may retry). A crash in between leaves the old
        # state in NAME.old-<pid>-<hex>, which the next write to NAME puts back.
        old = loc.sibling(sidecar_name(loc.name, "old", os.getpid(), secrets.token_hex(4)))
        os.rename(loc.path, old)
        try:
            os.rename(tmp, loc.path)
        except BaseException:
            os.rename(old, loc.path)
            raise
        fsync_dir(loc.parent_path)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(loc.parent_path)


def _write_remote(
    loc: Location, blobs: dict[str, bytes | Path], manifest: bytes, overwrite: bool
) -> None:
    fs = loc.fs
    manifest_path = loc.join(MANIFEST_NAME)
    if fs.exists(manifest_path):
        if not overwrite:
            raise _exists_error(loc)
        # Manifest first: from this instant readers see an incomplete state, never a mixed one.
        fs.rm(manifest_path)
        if fs.exists(loc.path):
            fs.rm(loc.path, recursive=True)
    existed = fs.exists(loc.path)
    written: list[str] = []
    try:
        for rel, data in blobs.items():
            path = loc.join(rel)
            _store_file(loc, path, data)
            written.append(path)
        _store_file(loc, manifest_path, manifest)
    except BaseException:
        _remove_quietly(fs, [loc.path] if not existed else written)
        raise


def _remove_quietly(fs: Any, paths: list[str]) -> None:
    for path in paths:
        try:
            fs.rm(path, recursive=True)
        except (OSError, ValueError):
            log.warning("could not remove %s after a failed write", path)


# ---------------------------------------------------------------------------------------------
# reading


def _corrupt(loc: Location, what: str) -> StateCorruptError:
    return StateCorruptError(
        f"state at {loc.url} is corrupt: {what}; "
        "restore it from a backup or re-run the update that wrote it"
    )


def _load_manifest(loc: Location) -> dict:
    fs = loc.fs
    try:
        raw = fs.cat_file(loc.join(MANIFEST_NAME))
    except (FileNotFoundError, NotADirectoryError):
        if fs.isdir(loc.path) and fs.ls(loc.path, detail=False):
            raise StateNotFoundError(
                f"state at {loc.url} is incomplete ({MANIFEST_NAME} missing: an interrupted write "
                "or not a state); re-run the update that writes it"
            ) from None
        raise StateNotFoundError(
            f"no Ricordo state at {loc.url} ({MANIFEST_NAME} missing); check the path or run an "
            f"update with --next-state {loc.url}"
        ) from None
    except IsADirectoryError:
        raise _corrupt(loc, f"{MANIFEST_NAME} is a folder, not a file") from None
    return parse_manifest(raw, loc.url)


def read_manifest(url: str) -> dict:
    """Read and verify only the manifest (cheap: no data file is opened)."""
    return _load_manifest(resolve(url))


def _verify_local_file(loc: Location, rel: str, info: dict) -> Path:
    """Check a file of a local state in chunks and return its path (read lazily later)."""
    path = loc.join(rel)
    if not os.path.lexists(path):
        raise _corrupt(loc, f"{rel} is missing")
    if os.path.isdir(path):
        raise _corrupt(loc, f"{rel} is a folder, not a file")
    digest, size = file_digest(path)
    if size != info["size"]:
        raise _corrupt(
            loc,
            f"{rel} has {size} bytes but the manifest says {info['size']} "
            "(truncated or overwritten)",
        )
    if digest != info["sha256"]:
        raise _corrupt(
            loc,
            f"{rel} fails its sha256 check (expected {info['sha256'][:12]}…, got {digest[:12]}…)",
        )
    return Path(path)


def read_state(url: str, *, lazy_prefixes: tuple[str, ...] = ()) -> LoadedState:
    """Read a state, verifying format version, manifest checksum and each file's size and sha256.

    On a local disk, files whose relative path starts with one of ``lazy_prefixes`` (e.g.
    ``("memory/",)``) are verified in chunks and returned as ``Path``s into the state instead of
    bytes, so files larger than RAM can be read; elsewhere they are bytes like the others.
    """
    loc = resolve(url)
    manifest = _load_manifest(loc)
    files: dict[str, bytes | Path] = {}
    lazy = tuple(lazy_prefixes) if loc.is_local else ()
    for rel, info in manifest["files"].items():
        if lazy and rel.startswith(lazy):
            files[rel] = _verify_local_file(loc, rel, info)
            continue
        try:
            data = loc.fs.cat_file(loc.join(rel))
        except (FileNotFoundError, NotADirectoryError):
            raise _corrupt(loc, f"{rel} is missing") from None
        except IsADirectoryError:
            raise _corrupt(loc, f"{rel} is a folder, not a file") from None
        if len(data) != info["size"]:
            raise _corrupt(
                loc,
                f"{rel} has {len(data)} bytes but the manifest says {info['size']} "
                "(truncated or overwritten)",
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != info["sha256"]:
            raise _corrupt(
                loc,
                f"{rel} fails its sha256 check (expected {info['sha256'][:12]}…, "
                f"got {digest[:12]}…)",
            )
        files[rel] = data
    return LoadedState(url=url, manifest=manifest, files=files)


def state_exists(url: str) -> bool:
    """True when a complete state (its manifest) is at ``url``; nothing is verified."""
    loc = resolve(url)
    return bool(loc.fs.isfile(loc.join(MANIFEST_NAME)))


def _child_url(root_url: str, name: str) -> str:
    if root_url.endswith("://"):
        return root_url + name
    return root_url.rstrip("/") + "/" + name


def list_states(root_url: str) -> list[dict]:
    """States directly under ``root_url`` as ``{"url", "name", "created", "parent", "meta"}``.

    Sorted by creation time. Folders that are not states, incomplete states and writer debris are
    skipped; a state whose manifest fails verification is skipped with a logged warning.
    """
    try:
        fs, root = url_to_fs(root_url)
    except (ValueError, ImportError) as exc:
        raise StateError(f"cannot open URL {root_url!r}: {exc}") from exc
    if not fs.isdir(root):
        raise StateNotFoundError(f"no folder at {root_url}; check the path")
    found = []
    for entry in fs.ls(root, detail=True):
        if entry.get("type") != "directory":
            continue
        name = posixpath.basename(entry["name"].rstrip("/"))
        if parse_sidecar(name) is not None or name.endswith(LOCK_SUFFIX):
            continue
        url = _child_url(root_url, name)
        try:
            manifest = read_manifest(url)
        except StateNotFoundError:
            continue
        except StateError as exc:
            log.warning("skipping %s: %s", url, exc)
            continue
        found.append(
            {
                "url": url,
                "name": name,
                "created": manifest["created"],
                "parent": manifest["parent"],
                "meta": manifest["meta"],
            }
        )
    found.sort(key=lambda s: (s["created"], s["name"]))
    return found
