"""Writing and reading states: a content-agnostic store of named byte files plus a JSON manifest.

Files are given as bytes, or as local files (``os.PathLike``) that are hashed and copied in chunks,
so a file larger than RAM (a memory-mapped rehearsal memory) can be stored; ``read_state`` can
likewise hand back the files under some prefixes of a local state as verified paths.

Guarantees: every file is verified (size and sha256) on read; a write is all-or-nothing. On a local
disk the state is built in ``NAME.tmp-<pid>-<hex>`` and published by rename, so a crash never leaves
a half state at NAME. Other fsspec filesystems (memory://, s3://) have no rename: files go straight
into NAME and manifest.json is written last; a state without a manifest is incomplete and refused.

What is never done: replacing anything at NAME but a verified Ricordo state that holds nothing
else (user files are never deleted, even with ``overwrite``); writing a state inside another state
or under one of the store's own bookkeeping names; following a symbolic link inside a local state;
reporting corruption because a writer replaced the state while it was being read (the reader
retries and sees the old or the new state, complete).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import posixpath
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from fsspec.core import url_to_fs

from ricordo.errors import (
    RicordoError,
    StateCorruptError,
    StateError,
    StateExistsError,
    StateNotFoundError,
)
from ricordo.state.fs import (
    CHUNK_BYTES,
    Location,
    exchange,
    file_digest,
    fsync_dir,
    resolve,
    write_file_synced,
)
from ricordo.state.lock import StateLock, pid_alive
from ricordo.state.manifest import FORMAT, build_manifest, parse_manifest
from ricordo.state.paths import (
    LOCK_SUFFIX,
    MANIFEST_NAME,
    check_relpaths,
    parse_sidecar,
    sidecar_name,
    state_name_problem,
)

log = logging.getLogger(__name__)

# A read that fails because a writer replaced the state meanwhile is retried this many times, with
# a short growing pause, before the error is reported (see read_state).
READ_ATTEMPTS = 10
_RETRY_PAUSE_S = 0.002

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
    ``overwrite`` is false, StateLockedError if another live job is writing it, and StateError
    if what is at ``url`` is not a complete Ricordo state holding nothing else (that is never
    replaced), if ``url`` lies inside another state or uses a bookkeeping name, or if the
    filesystem refuses the write. On any failure the previous state (if any) is left untouched
    on a local disk; on other filesystems an overwrite removes the old state before writing.
    """
    loc = resolve(url)
    _check_location(loc)
    blobs = _prepare(files)
    info = {rel: _describe(data) for rel, data in blobs.items()}
    manifest, manifest_bytes = build_manifest(info, meta, parent)
    try:
        if loc.is_local:
            os.makedirs(loc.parent_path, exist_ok=True)
        with StateLock(loc):
            if loc.is_local:
                _write_local(loc, blobs, manifest_bytes, overwrite)
            else:
                _write_remote(loc, blobs, manifest_bytes, overwrite)
    except RicordoError:
        raise
    except OSError as exc:  # a read-only folder, a full disk: one line that names the state
        raise _os_error(loc, exc) from exc
    return manifest


def check_writable(url: str, *, overwrite: bool = False) -> None:
    """Raise now the error ``write_state(url, overwrite=overwrite)`` would raise because of what
    is already there or of where it is: a state (without ``overwrite``), anything that is not a
    complete Ricordo state holding nothing else, a live writer's lock, a folder this process may
    not write to, a reserved name or a path inside another state. ``ricordo update`` calls it
    before training, so that an hour of training is not lost to a write that cannot happen;
    ``write_state`` checks again (things may change)."""
    loc = resolve(url)
    _check_location(loc)
    kind = _inspect_target(loc)
    if kind == "state" and not overwrite:
        raise _exists_error(loc)
    if loc.is_local:
        _check_local_permission(loc)
    StateLock(loc).check()


def _os_error(loc: Location, exc: OSError) -> StateError:
    where = f" ({exc.filename})" if exc.filename else ""
    return StateError(
        f"cannot write the state at {loc.url}: {exc.strerror or exc}{where}; check that you may "
        "write to that folder and that its disk has space"
    )


def _check_location(loc: Location) -> None:
    """Refuse a state name the store uses for its own files, and a state inside a state."""
    problem = state_name_problem(loc.name)
    if problem is not None:
        raise StateError(f"cannot write {loc.url}: {problem}")
    path = loc.path
    if loc.is_local:  # "a/../b" and links to folders: the real ancestors count
        path = os.path.join(os.path.realpath(loc.parent_path or "."), loc.name)
    outer = _enclosing_state(loc.fs, path)
    if outer is not None:
        raise StateError(
            f"cannot write a state at {loc.url}: it is inside the state at {outer}, which would "
            "delete it when replaced; choose a path outside that state"
        )


def _check_local_permission(loc: Location) -> None:
    """The write creates NAME's lock and temporary sibling in its folder (or creates the folder):
    check this process may write there, without writing anything (a read-only folder is found
    before an update trains, not after)."""
    folder = loc.parent_path or "."
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise StateError(
            f"cannot write the state at {loc.url}: {folder} is a file, not a folder; "
            "choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StateError(
            f"cannot write the state at {loc.url}: no permission to write in {folder} "
            "(read-only folder or disk); choose a folder you can write to or fix its permissions"
        )


def _looks_like_state_manifest(fs: Any, path: str) -> bool:
    """True when ``path`` is a manifest.json written by Ricordo (its format field; the checksum
    is not needed to know whose file it is, and a damaged state is still a state)."""
    try:
        if not fs.isfile(path):
            return False
        obj = json.loads(fs.cat_file(path))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _enclosing_state(fs: Any, path: str) -> str | None:
    """The nearest folder strictly above ``path`` that is a Ricordo state, or None."""
    folder = posixpath.dirname(path.rstrip("/"))
    while folder:
        if _looks_like_state_manifest(fs, posixpath.join(folder, MANIFEST_NAME)):
            return folder
        above = posixpath.dirname(folder)
        if above == folder:
            break
        folder = above
    return None


def enclosing_state(path: str) -> str | None:
    """The nearest folder above local ``path`` (a file or folder) that is a Ricordo state, or
    None; outputs of ``ricordo predict``/``evaluate`` are never written inside one."""
    loc = resolve(path)
    target = os.path.realpath(loc.path) if loc.is_local else loc.path
    return _enclosing_state(loc.fs, target)


def _not_a_state_error(loc: Location) -> StateError:
    return StateError(
        f"{loc.url} exists and is not a Ricordo state (no {MANIFEST_NAME}); "
        "remove it or choose another path"
    )


def _foreign_error(loc: Location, what: str) -> StateError:
    return StateError(
        f"{loc.url} {what}; Ricordo replaces only a complete state of its own that holds nothing "
        "else, even with overwrite: move your files out or choose another path"
    )


def _exists_error(loc: Location) -> StateExistsError:
    return StateExistsError(
        f"state already exists at {loc.url}; write to a new location or pass overwrite=True "
        "(CLI: a new --next-state, or --overwrite)"
    )


def _inspect_target(loc: Location) -> str:
    """What is at NAME before a write: "none", "empty" (an empty folder) or "state" (a complete
    Ricordo state, its manifest verified, holding nothing but the files it lists).

    Anything else raises StateError: a file, a link, a folder of user files, one with a forged
    or damaged manifest, with files the manifest does not list, or with a nested state. Ricordo
    deletes only what it can verify it wrote.
    """
    if loc.is_local:
        try:
            mode = os.lstat(loc.path).st_mode
        except FileNotFoundError:
            return "none"
        if stat.S_ISLNK(mode):
            raise _foreign_error(loc, "is a symbolic link, not a state folder")
        if not stat.S_ISDIR(mode):
            raise _foreign_error(loc, "is a file, not a state folder")
        if not os.listdir(loc.path):
            return "empty"
    else:
        if not loc.fs.exists(loc.path):
            return "none"
        if not loc.fs.isdir(loc.path):
            raise _foreign_error(loc, "is a file, not a state folder")
        if not loc.fs.find(loc.path):
            return "empty"
    try:
        manifest = _load_manifest(loc)
    except StateNotFoundError:
        raise _not_a_state_error(loc) from None
    except StateError:
        raise _foreign_error(
            loc, f"holds a {MANIFEST_NAME} that is not a valid Ricordo manifest"
        ) from None
    strays = sorted(_strays(loc, manifest))
    if strays:
        shown = ", ".join(repr(s) for s in strays[:3]) + (", ..." if len(strays) > 3 else "")
        raise _foreign_error(loc, f"holds files its manifest does not list or that differ: {shown}")
    return "state"


def _strays(loc: Location, manifest: dict) -> Iterator[str]:
    """Entries under NAME that are not the manifest, a file it lists (regular, of the listed
    size) or a folder holding one: user files, links, nested states."""
    listed = {rel: info["size"] for rel, info in manifest["files"].items()}
    listed[MANIFEST_NAME] = None  # its size is whatever it is
    folders = {posixpath.dirname(rel) for rel in listed}
    for rel in list(folders):
        while rel:
            rel = posixpath.dirname(rel)
            folders.add(rel)
    if not loc.is_local:
        for entry in loc.fs.find(loc.path, detail=True).values():
            rel = entry["name"][len(loc.path) :].lstrip("/")
            if rel not in listed or listed[rel] not in (None, entry.get("size")):
                yield rel
        return
    for top, dirs, names in os.walk(loc.path):  # never follows links: they are listed, not entered
        base = os.path.relpath(top, loc.path).replace(os.sep, "/")
        base = "" if base == "." else base
        for name in list(dirs):
            rel = posixpath.join(base, name)
            if os.path.islink(os.path.join(top, name)) or rel not in folders:
                dirs.remove(name)
                yield rel + "/"
        for name in names:
            rel = posixpath.join(base, name)
            st = os.lstat(os.path.join(top, name))
            if (
                rel not in listed
                or not stat.S_ISREG(st.st_mode)
                or listed[rel] not in (None, st.st_size)
            ):
                yield rel


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
    kind = _inspect_target(loc)  # raises for anything but nothing, an empty folder or a state
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
    kind = _inspect_target(loc)  # raises for anything but nothing, an empty folder or a state
    if kind == "state":
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


def _not_found(loc: Location, *, incomplete: bool) -> StateNotFoundError:
    if incomplete:
        return StateNotFoundError(
            f"state at {loc.url} is incomplete ({MANIFEST_NAME} missing: an interrupted write "
            "or not a state); re-run the update that writes it"
        )
    return StateNotFoundError(
        f"no Ricordo state at {loc.url} ({MANIFEST_NAME} missing); check the path, or write one "
        "there first (CLI: ricordo update --next-state; Python: Updater.save)"
    )


def _symlink_error(loc: Location, rel: str) -> StateCorruptError:
    return StateCorruptError(
        f"state at {loc.url}: {rel} is a symbolic link; a state holds only regular files and "
        "Ricordo never follows links out of it: put the real file there or restore the state "
        "from a backup"
    )


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in a state must not hang the read
_DIR_FD = os.open in os.supports_dir_fd


class _LocalReader:
    """Reads the files of one local state folder, opened once, never through a symbolic link.

    Every file is opened relative to the folder's descriptor, so a writer that swaps a new state
    in (``--overwrite``: an atomic exchange, then removal of the old folder) cannot make this
    reader mix two states: it keeps reading the folder it opened, or finds files gone from it
    and the caller retries. The state folder itself may be a link (``current -> v7``); the
    entries inside it may not.
    """

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.fd = os.open(loc.path, os.O_RDONLY | _O_DIRECTORY) if _DIR_FD else -1

    def __enter__(self) -> _LocalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def identity(self) -> tuple[int, int] | None:
        """Device and inode of the folder being read (None where descriptors are unavailable)."""
        if self.fd < 0:
            return None
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def _open(self, rel: str) -> int:
        """File descriptor of ``rel`` (a validated relative path), opened without following
        links; raises FileNotFoundError, or StateCorruptError naming a link or a non-file."""
        if self.fd < 0:  # no openat here (Windows): plain paths, links checked one by one
            path = self.loc.join(rel)
            parts = rel.split("/")
            for i in range(1, len(parts) + 1):
                if os.path.islink(self.loc.join("/".join(parts[:i]))):
                    raise _symlink_error(self.loc, "/".join(parts[:i]))
            return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        parts = rel.split("/")
        opened: list[int] = []
        folder = self.fd
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | _O_NOFOLLOW | (_O_NONBLOCK if last else _O_DIRECTORY)
                try:
                    fd = os.open(part, flags, dir_fd=folder)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise
                    prefix = "/".join(parts[: i + 1])
                    if stat.S_ISLNK(os.lstat(part, dir_fd=folder).st_mode):
                        raise _symlink_error(self.loc, prefix) from None
                    raise _corrupt(self.loc, f"{prefix} is a file, not a folder") from None
                if last:
                    return fd
                opened.append(fd)
                folder = fd
        finally:
            for fd in opened:
                os.close(fd)
        raise AssertionError("unreachable")  # pragma: no cover

    def chunks(self, rel: str) -> Iterator[bytes]:
        """The bytes of regular file ``rel`` in pieces of CHUNK_BYTES."""
        fd = self._open(rel)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise _corrupt(self.loc, f"{rel} is a folder, not a file")
            if not stat.S_ISREG(mode):
                raise _corrupt(self.loc, f"{rel} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    yield chunk
        finally:
            os.close(fd)

    def read(self, rel: str) -> bytes:
        return b"".join(self.chunks(rel))


def _load_manifest(loc: Location) -> dict:
    return parse_manifest(_manifest_bytes(loc), loc.url)


def _manifest_bytes(loc: Location, reader: _LocalReader | None = None) -> bytes:
    """The raw manifest of the state at ``loc`` (read through ``reader`` when given)."""
    fs = loc.fs
    try:
        if loc.is_local:
            if reader is not None:
                return reader.read(MANIFEST_NAME)
            with _LocalReader(loc) as fresh:
                return fresh.read(MANIFEST_NAME)
        return fs.cat_file(loc.join(MANIFEST_NAME))
    except (FileNotFoundError, NotADirectoryError):
        incomplete = bool(fs.isdir(loc.path) and fs.ls(loc.path, detail=False))
        raise _not_found(loc, incomplete=incomplete) from None
    except IsADirectoryError:
        raise _corrupt(loc, f"{MANIFEST_NAME} is a folder, not a file") from None


def read_manifest(url: str) -> dict:
    """Read and verify only the manifest (cheap: no data file is opened)."""
    return _load_manifest(resolve(url))


def _check_bytes(loc: Location, rel: str, info: dict, size: int, digest: str) -> None:
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


@dataclass
class _Seen:
    """What one read attempt saw of the state, to tell a replaced state from a corrupt one."""

    manifest: bytes | None = None
    folder: tuple[int, int] | None = None


def _read_once(loc: Location, lazy: tuple[str, ...], seen: _Seen) -> LoadedState:
    if not loc.is_local:
        seen.manifest = _manifest_bytes(loc)
        manifest = parse_manifest(seen.manifest, loc.url)
        files: dict[str, bytes | Path] = {}
        for rel, info in manifest["files"].items():
            try:
                data = loc.fs.cat_file(loc.join(rel))
            except (FileNotFoundError, NotADirectoryError):
                raise _corrupt(loc, f"{rel} is missing") from None
            except IsADirectoryError:
                raise _corrupt(loc, f"{rel} is a folder, not a file") from None
            _check_bytes(loc, rel, info, len(data), hashlib.sha256(data).hexdigest())
            files[rel] = data
        return LoadedState(url=loc.url, manifest=manifest, files=files)
    try:
        reader = _LocalReader(loc)
    except (FileNotFoundError, NotADirectoryError):
        raise _not_found(loc, incomplete=False) from None
    with reader:
        seen.folder = reader.identity
        seen.manifest = _manifest_bytes(loc, reader)
        manifest = parse_manifest(seen.manifest, loc.url)
        files = {}
        for rel, info in manifest["files"].items():
            digest, size = hashlib.sha256(), 0
            keep = not (lazy and rel.startswith(lazy))
            parts: list[bytes] = []
            try:
                for chunk in reader.chunks(rel):
                    digest.update(chunk)
                    size += len(chunk)
                    if keep:
                        parts.append(chunk)
            except FileNotFoundError:
                raise _corrupt(loc, f"{rel} is missing") from None
            _check_bytes(loc, rel, info, size, digest.hexdigest())
            # Lazy files are handed out as verified paths, read later (memory maps).
            files[rel] = b"".join(parts) if keep else Path(loc.join(rel))
        return LoadedState(url=loc.url, manifest=manifest, files=files)


def _replaced_since(loc: Location, seen: _Seen) -> bool:
    """True when the state at ``loc`` is not the one a failed read attempt saw: a writer
    replaced it meanwhile (or is between the two renames of an overwrite, lock held)."""
    try:
        if loc.is_local and seen.folder is not None:
            # The folder this attempt opened is no longer the one at NAME: an overwrite swapped
            # it out (and may be deleting it, so even its manifest may have gone missing).
            st = os.stat(loc.path)
            if (st.st_dev, st.st_ino) != seen.folder:
                return True
    except OSError:
        return True  # gone or half-swapped: look again
    if seen.manifest is None:  # nothing there: only worth waiting for while a writer works
        return bool(loc.fs.exists(loc.path + LOCK_SUFFIX))
    try:
        if loc.is_local:
            with open(loc.join(MANIFEST_NAME), "rb") as fh:
                now = fh.read()
        else:
            now = loc.fs.cat_file(loc.join(MANIFEST_NAME))
    except OSError:
        return True  # gone or half-swapped: look again
    return now != seen.manifest


def read_state(url: str, *, lazy_prefixes: tuple[str, ...] = ()) -> LoadedState:
    """Read a state, verifying format version, manifest checksum and each file's size and sha256.

    On a local disk, files whose relative path starts with one of ``lazy_prefixes`` (e.g.
    ``("memory/",)``) are verified in chunks and returned as ``Path``s into the state instead of
    bytes, so files larger than RAM can be read; elsewhere they are bytes like the others.

    A read that fails while a writer replaces the state (``overwrite``) is retried: the reader
    gets the old or the new state, complete. Corruption is reported only when the state did not
    change across the failed read; a symbolic link inside a local state is refused.
    """
    loc = resolve(url)
    lazy = tuple(lazy_prefixes) if loc.is_local else ()
    for attempt in range(1, READ_ATTEMPTS + 1):
        seen = _Seen()
        try:
            state = _read_once(loc, lazy, seen)
            return LoadedState(url=url, manifest=state.manifest, files=state.files)
        except (StateCorruptError, StateNotFoundError):
            if attempt == READ_ATTEMPTS or not _replaced_since(loc, seen):
                raise
        time.sleep(_RETRY_PAUSE_S * 2 ** min(attempt, 6))  # all retries: ~0.6 s at most
    raise AssertionError("unreachable")  # pragma: no cover


def read_state_file(url: str, rel: str) -> bytes:
    """One file of the state at ``url`` (e.g. ``history.json``), verified against the manifest,
    without reading the others (``ricordo history`` needs no weights)."""
    loc = resolve(url)
    manifest = _load_manifest(loc)
    info = manifest["files"].get(rel)
    if info is None:
        raise _corrupt(loc, f"{rel} is not listed in its manifest")
    try:
        if loc.is_local:
            with _LocalReader(loc) as reader:
                data = reader.read(rel)
        else:
            data = loc.fs.cat_file(loc.join(rel))
    except (FileNotFoundError, NotADirectoryError):
        raise _corrupt(loc, f"{rel} is missing") from None
    _check_bytes(loc, rel, info, len(data), hashlib.sha256(data).hexdigest())
    return data


def state_changed(state: LoadedState) -> bool:
    """True when the state at ``state.url`` is no longer the one ``state`` was read from (a
    writer replaced it since), so that a caller reading its lazy files later can start over."""
    try:
        return read_manifest(state.url) != state.manifest
    except StateError:
        return True


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
