"""Where a state lives: URL resolution through fsspec plus the local-disk primitives we need.

Local disks get the crash-safe path (temporary sibling, fsync, rename); other fsspec filesystems
have no atomic rename, so the store orders its writes instead (manifest last).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import posixpath
import shutil
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ricordo.errors import StateError

# Files given as paths are hashed and copied in pieces of this size, never read whole.
CHUNK_BYTES = 8 * 2**20

# fsspec protocols whose files live in this process's memory only.
PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})


@dataclass(frozen=True)
class Location:
    """A resolved state URL: the filesystem, the path on it, and the URL as the user wrote it."""

    url: str
    fs: Any
    path: str

    @property
    def is_local(self) -> bool:
        """True when the path is on the local disk, where rename and fsync are available."""
        return isinstance(self.fs, LocalFileSystem)

    @property
    def name(self) -> str:
        """Last path component (the state's own name)."""
        return posixpath.basename(self.path)

    @property
    def parent_path(self) -> str:
        """Path of the folder holding the state (where its lock and sidecars go)."""
        return posixpath.dirname(self.path)

    def join(self, rel: str) -> str:
        """Path of ``rel`` (a validated relative path) inside the state."""
        return f"{self.path}/{rel}"

    def sibling(self, name: str) -> str:
        """Path of an entry next to the state, e.g. its lock."""
        return posixpath.join(self.parent_path, name)

    @property
    def is_process_local(self) -> bool:
        """True for filesystems that live in this process only (``memory://``): a state written
        there vanishes when the process exits, so the CLI refuses them."""
        protocols = self.fs.protocol
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        return any(p in PROCESS_LOCAL_PROTOCOLS for p in protocols)

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the location: the filesystem and the normalised path (symlinks,
        ``./`` and trailing slashes resolved on a local disk), so two spellings compare equal."""
        protocols = self.fs.protocol
        protocol = protocols if isinstance(protocols, str) else protocols[0]
        if self.is_local:
            return protocol, os.path.realpath(self.path)
        return protocol, posixpath.normpath(self.path)


def resolve(url: str) -> Location:
    """Resolve a local path or fsspec URL; reject URLs that cannot name a state directory."""
    if not isinstance(url, str) or not url.strip():
        raise StateError(f"state URL must be a non-empty string, got {url!r}")
    try:
        fs, path = url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise StateError(f"cannot open state URL {url!r}: {exc}") from exc
    path = path.rstrip("/")
    if not posixpath.basename(path) or posixpath.basename(path) in (".", ".."):
        raise StateError(f"state URL {url!r} does not name a directory; add a state name to it")
    return Location(url=url, fs=fs, path=path)


def same_location(a: str, b: str) -> bool:
    """True when the URLs ``a`` and ``b`` name the same state (e.g. ``X``, ``./X`` and ``X/``)."""
    return resolve(a).key == resolve(b).key


def write_file_synced(path: str, data: bytes | bytearray | memoryview | os.PathLike[str]) -> None:
    """Create ``path`` (it must not exist) with ``data`` and fsync it to disk.

    ``data`` may be a local file (os.PathLike), copied in chunks: it is never read whole.
    """
    with open(path, "xb") as fh:
        if isinstance(data, os.PathLike):
            with open(data, "rb") as source:
                shutil.copyfileobj(source, fh, CHUNK_BYTES)
        else:
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """sha256 (hex) and size of a local file, read in chunks of ``CHUNK_BYTES``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(path: str) -> None:
    """fsync a directory so the names created in it survive a power loss (POSIX only)."""
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError, TypeError):  # no libc, or no renameat2 (macOS, old glibc)
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()
_AT_FDCWD = -100


def exchange(a: str, b: str) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE).

    Returns False when the platform or filesystem cannot do it, so the caller falls back to two
    renames; raises OSError for any other failure.
    """
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)
