"""Fetch dataset files: a local data folder, checksum-verified downloads and safe tar extraction.

Downloads go to a ``.part`` file that is renamed only after its checksum matches, so a broken
or tampered download never sits where a loader would read it. Archives are extracted member by
member: absolute paths, ``..``, links and device files are refused instead of trusted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ricordo.errors import DataError

ENV_VAR = "RICORDO_DATA"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One file to download: its name in the data folder, mirror URLs and expected checksum."""

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        if not self.urls:
            raise DataError(f"resource {self.filename!r} has no URL; give at least one")
        if self.md5 is None and self.sha256 is None:
            raise DataError(
                f"resource {self.filename!r} has no checksum; pass md5= or sha256= so the "
                "download can be verified"
            )


def default_root() -> Path:
    """The data folder: ``$RICORDO_DATA`` if set, else ``~/.cache/ricordo/datasets``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ricordo" / "datasets"


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """``root`` as a path (``~`` expanded), or the default data folder when None."""
    return default_root() if root is None else Path(root).expanduser()


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest (``md5`` or ``sha256``) of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_error(path: Path, resource: Resource) -> str | None:
    """None when ``path`` matches the resource's checksum(s), else what differs."""
    for algorithm, expected in (("sha256", resource.sha256), ("md5", resource.md5)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            return f"expected {algorithm} {expected.lower()}, got {actual}"
    return None


def fetch(resource: Resource, folder: Path, *, progress: bool = True) -> Path:
    """Download ``resource`` into ``folder`` (trying each mirror) unless a verified copy is there.

    Raises ``DataError`` naming the URLs tried and the fix when no mirror gives a file with the
    right checksum; a file that fails its checksum is deleted.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / resource.filename
    if target.is_file() and checksum_error(target, resource) is None:
        return target
    failures = []
    for url in resource.urls:
        try:
            _download(url, target, resource, progress=progress)
            return target
        except DataError as error:
            failures.append(str(error))
    if len(failures) == 1:
        raise DataError(failures[0])
    raise DataError(
        f"could not download {resource.filename} from any mirror: " + " | ".join(failures)
    )


def _download(url: str, target: Path, resource: Resource, *, progress: bool) -> None:
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _Bar(resource.filename, total, enabled=progress) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    bar.advance(len(block))
    except (urllib.error.URLError, OSError, ValueError) as error:
        part.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise DataError(
            f"could not download {resource.filename} from {url} ({reason}); check the network "
            f"or place the file in {target.parent} yourself"
        ) from None
    mismatch = checksum_error(part, resource)
    if mismatch is not None:
        part.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {resource.filename} downloaded from {url}: {mismatch}; "
            "the file was deleted; retry later or place a good copy there yourself"
        )
    part.replace(target)


class _Bar:
    """A rich download bar on a terminal, nothing in logs and CI."""

    def __init__(self, name: str, total: int | None, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty() and not os.environ.get("CI")
        self.name, self.total = name, total
        self._bar = self._task = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            self._bar = Progress(
                *Progress.get_default_columns(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(f"download {self.name}", total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def safe_extract_tar(archive: Path, dest: Path, *, members: Sequence[str] | None = None) -> None:
    """Extract regular files and folders of a tar archive into ``dest``.

    Refuses the whole archive (before writing anything) if a member has an absolute path, a
    ``..`` component, or is a link or device file. ``members``: extract only these names.
    """
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            entries = tar.getmembers()
            for member in entries:
                _check_member(member, archive, base)
            wanted = None if members is None else set(members)
            for member in entries:
                if wanted is not None and member.name not in wanted:
                    continue
                path = base.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular file, checked above
                part = path.with_name(path.name + ".part")
                with source, part.open("wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
                part.replace(path)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(
            f"{archive} is not a readable tar archive ({error}); delete it and download again"
        ) from None


def _check_member(member: tarfile.TarInfo, archive: Path, base: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    unsafe = (
        name.startswith(("/", "\\"))
        or PurePosixPath(name).is_absolute()
        or (len(name) > 1 and name[1] == ":")  # a Windows drive letter
        or ".." in parts
        or "\\" in name
    )
    if unsafe:
        raise DataError(
            f"{archive} has an unsafe member path {name!r} (absolute or with '..'); "
            "refusing to extract it"
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive} has a link or special file {name!r}; refusing to extract it "
            "(only regular files and folders are allowed)"
        )
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise DataError(f"{archive} member {name!r} would land outside {base}; refusing it")
