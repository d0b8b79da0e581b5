"""Aliases: named pointers to states (``models/latest -> v7``), moved atomically, never copying.

An alias is a small JSON file next to the states it points at, ``ROOT/NAME``, holding the target
state's name (relative, so a store can be moved), the checksum of the target's manifest when it
was published, the stack of earlier targets (for rollback) and a log of every change. Anything
that loads a state follows it: ``Updater.load("models/latest")``, ``--state models/latest``.

Guarantees: a local alias is replaced by an atomic rename (readers see the old or the new
pointer, never a torn one), a remote one (s3://...) by one object write; a change holds the
alias's lock (``NAME.lock``) so two publishers cannot lose each other's update; Ricordo replaces
only a file it wrote (its ``format`` field), never a state, a folder, a link or a user's file;
publishing and rolling back never copy, change or delete a state; following an alias whose
target was replaced since it was published (``--overwrite``) is refused, not silently served.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from ricordo.errors import StateCorruptError, StateError, StateNotFoundError
from ricordo.state.fs import Location, fsync_dir, resolve, write_file_synced
from ricordo.state.lock import StateLock
from ricordo.state.manifest import CHECKSUM_KEY, utc_now
from ricordo.state.paths import sidecar_name, state_name_problem
from ricordo.state.store import read_manifest, read_state

ALIAS_FORMAT = "ricordo-alias"
ALIAS_VERSION = 1
# Changes kept in an alias's log, and earlier targets on its rollback stack: an alias file
# stays small (about 250 KB at most) even when a state is published every hour for years.
LOG_ENTRIES = 100
STACK_ENTRIES = 1000
# A file larger than this is no alias Ricordo wrote: it is not read whole to find out.
MAX_ALIAS_BYTES = 2**20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Alias:
    """An alias file as read: where it is, the state it points at and its earlier targets."""

    url: str
    name: str
    target: str  # the state's name in the alias's folder
    manifest_sha256: str  # of the target's manifest when it was published
    previous: tuple[dict[str, str], ...]  # earlier targets, oldest first (rollback pops)
    log: tuple[dict[str, str], ...]

    @property
    def target_url(self) -> str:
        """URL of the state the alias points at."""
        return sibling_url(self.url, self.target)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ALIAS_FORMAT,
            "format_version": ALIAS_VERSION,
            "alias": self.name,
            "target": self.target,
            "manifest_sha256": self.manifest_sha256,
            "previous": list(self.previous),
            "log": list(self.log),
        }


def sibling_url(url: str, name: str) -> str:
    """URL of ``name`` in the folder holding ``url`` (``s3://b/m/latest`` -> ``s3://b/m/v7``)."""
    head, sep, _ = url.rstrip("/").rpartition("/")
    return f"{head}/{name}" if sep else name


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise StateError(f"{what} {name!r} is not a name; give a plain name such as 'latest'")
    problem = state_name_problem(name)
    if problem is not None:
        raise StateError(f"{what}: {problem}")


# -- reading -----------------------------------------------------------------------------------


def _read_pointer(loc: Location) -> bytes | None:
    """The bytes of the regular file at ``loc``; None when nothing or a folder is there.
    A local link is refused (Ricordo writes files, never links)."""
    if loc.is_local:
        try:
            mode = os.lstat(loc.path).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            raise StateError(
                f"{loc.url} is a symbolic link, not an alias file Ricordo wrote; remove it or "
                "choose another alias name"
            )
        if not stat.S_ISREG(mode):
            return None
        if os.path.getsize(loc.path) > MAX_ALIAS_BYTES:
            return b""  # not an alias
        with open(loc.path, "rb") as fh:
            return fh.read()
    if not loc.fs.isfile(loc.path):
        return None
    if loc.fs.size(loc.path) > MAX_ALIAS_BYTES:
        return b""
    return loc.fs.cat_file(loc.path)


def _parse(raw: bytes, url: str) -> Alias | None:
    """The alias in ``raw``; None when it is not a Ricordo alias file at all."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != ALIAS_FORMAT:
        return None

    def damaged(what: str) -> StateCorruptError:
        return StateCorruptError(
            f"alias file {url} is damaged ({what}); publish the state again "
            "(ricordo publish STATE --alias NAME)"
        )

    if obj.get("format_version") != ALIAS_VERSION:
        raise damaged(f"format version {obj.get('format_version')!r}, not {ALIAS_VERSION}")
    entries = obj.get("previous"), obj.get("log")
    if not all(isinstance(e, list) and all(isinstance(d, dict) for d in e) for e in entries):
        raise damaged("its previous/log are not lists of records")
    for record in [obj, *obj["previous"]]:
        target, sha = record.get("target"), record.get("manifest_sha256")
        if not isinstance(target, str) or not target or "/" in target:
            raise damaged(f"target {target!r} is not a state name")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise damaged(f"manifest checksum {sha!r} is not a sha256")
    return Alias(
        url=url,
        name=str(obj.get("alias") or resolve(url).name),
        target=obj["target"],
        manifest_sha256=obj["manifest_sha256"],
        previous=tuple(obj["previous"]),
        log=tuple(obj["log"]),
    )


def read_alias(url: str) -> Alias | None:
    """The alias at ``url``, or None when there is no alias file there (a state, nothing)."""
    loc = resolve(url)
    raw = _read_pointer(loc)
    return None if raw is None else _parse(raw, url)


def resolve_alias(url: str) -> str:
    """The URL of the state an alias at ``url`` points at; ``url`` itself when it is no alias.

    Refuses an alias whose target is gone or was replaced since it was published (its manifest
    checksum differs): serving another model under a published name is worse than failing.
    """
    alias = read_alias(url)
    if alias is None:
        return url
    _check_target(alias.target_url, alias.manifest_sha256, f"alias {url}")
    return alias.target_url


def _check_target(url: str, sha: str, what: str) -> None:
    try:
        manifest = read_manifest(url)
    except StateNotFoundError:
        raise StateNotFoundError(
            f"{what} points at {url}, which is no longer there; roll it back "
            "(ricordo rollback ALIAS) or publish another state"
        ) from None
    if manifest[CHECKSUM_KEY] != sha:
        raise StateError(
            f"{what} points at {url}, which was replaced after it was published (its manifest "
            "checksum differs); publish it again if the new state is meant, or roll back"
        )


def list_aliases(root_url: str) -> list[Alias]:
    """The alias files directly in the folder ``root_url``, by name."""
    try:
        fs, folder = url_to_fs(root_url)
    except (ValueError, ImportError) as exc:
        raise StateError(f"cannot open URL {root_url!r}: {exc}") from exc
    if not fs.isdir(folder):
        raise StateNotFoundError(f"no folder at {root_url}; check the path")
    found = []
    for entry in sorted(fs.ls(folder, detail=True), key=lambda e: e["name"]):
        if entry.get("type") != "file" or (entry.get("size") or 0) > MAX_ALIAS_BYTES:
            continue
        name = posixpath.basename(entry["name"].rstrip("/"))
        try:
            alias = read_alias(sibling_url(root_url.rstrip("/") + "/x", name))
        except StateError:
            continue
        if alias is not None:
            found.append(alias)
    return found


# -- writing -----------------------------------------------------------------------------------


def _write(loc: Location, alias: Alias) -> None:
    """Replace the pointer file atomically (local: temporary sibling, fsync, rename)."""
    data = (json.dumps(alias.to_json(), indent=1, sort_keys=True) + "\n").encode("utf-8")
    if not loc.is_local:
        loc.fs.pipe_file(loc.path, data)  # one object write: readers see old or new
        return
    tmp = loc.sibling(sidecar_name(loc.name, "tmp", os.getpid(), secrets.token_hex(4)))
    try:
        write_file_synced(tmp, data)
        os.replace(tmp, loc.path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(loc.parent_path)


def _current(loc: Location) -> Alias | None:
    """The alias being changed, or None when there is none yet; refuses to touch anything else
    at its path (a state, a folder, a link, a user's file)."""
    if loc.is_local and os.path.isdir(loc.path) or (not loc.is_local and loc.fs.isdir(loc.path)):
        raise StateError(
            f"{loc.url} is a folder (a state or your files), not an alias; Ricordo replaces only "
            "alias files it wrote: choose another alias name"
        )
    raw = _read_pointer(loc)
    if raw is None:
        return None
    alias = _parse(raw, loc.url)
    if alias is None:
        raise StateError(
            f"{loc.url} exists and is not an alias file Ricordo wrote; Ricordo replaces only its "
            "own alias files: move that file or choose another alias name"
        )
    return alias


def _entry(action: str, target: str, sha: str) -> dict[str, str]:
    return {"action": action, "target": target, "manifest_sha256": sha, "time": utc_now()}


def _verified_state(url: str, folder_url: str) -> tuple[str, str]:
    """(name, manifest checksum) of the complete, verified state at ``url`` (an alias is
    followed), which must lie in the folder of ``folder_url``."""
    target = resolve_alias(url)
    loc = resolve(target)
    if resolve(sibling_url(folder_url, loc.name)).key != loc.key:
        raise StateError(
            f"state {url} is not in the alias's folder ({resolve(folder_url).parent_path}); an "
            "alias points at a state beside it: publish it with an alias in its own folder"
        )
    state = read_state(target, lazy_prefixes=("memory/",))  # every checksum verified
    return loc.name, state.manifest[CHECKSUM_KEY]


def publish(state_url: str, alias: str) -> Alias:
    """Point the alias ``alias`` in ``state_url``'s folder at that state (verified whole first).

    The alias's previous target goes on its rollback stack. Returns the new alias.
    """
    _check_name(alias, "alias")
    state_url = resolve_alias(state_url)  # publishing "latest" as "stable" points at its state
    alias_url = sibling_url(state_url, alias)
    loc = resolve(alias_url)
    name, sha = _verified_state(state_url, alias_url)
    if name == alias:
        raise StateError(f"alias {alias!r} cannot have the name of the state it points at")
    with StateLock(loc):
        old = _current(loc)
        previous = () if old is None else (*old.previous, _stack_entry(old))[-STACK_ENTRIES:]
        log = () if old is None else old.log
        new = Alias(
            url=alias_url,
            name=alias,
            target=name,
            manifest_sha256=sha,
            previous=previous,
            log=(*log, _entry("publish", name, sha))[-LOG_ENTRIES:],
        )
        _write(loc, new)
    return new


def _stack_entry(alias: Alias) -> dict[str, str]:
    return {"target": alias.target, "manifest_sha256": alias.manifest_sha256}


def rollback(alias_url: str, to: str | None = None) -> Alias:
    """Point the alias at its previous target (or at the state ``to``, in the same folder).

    Without ``to`` the last publish (or rollback ``to``) is undone: the previous target comes
    off the stack, and must still be the very state that was published. With ``to`` the current
    target goes on the stack, so a later rollback returns to it. No state is copied or changed.
    """
    loc = resolve(alias_url)

    def missing() -> StateNotFoundError:
        return StateNotFoundError(
            f"no alias at {alias_url}; publish a state first (ricordo publish STATE --alias "
            f"{loc.name})"
        )

    if _current(loc) is None:  # before the lock: its folder may not even exist
        raise missing()
    with StateLock(loc):
        current = _current(loc)
        if current is None:
            raise missing()
        if to is None:
            if not current.previous:
                raise StateError(
                    f"alias {alias_url} has no earlier target to roll back to; name a state "
                    "with --to STATE (Python: to=...)"
                )
            back = current.previous[-1]
            target, sha = back["target"], back["manifest_sha256"]
            where = f"the previous target of {alias_url}"
            _check_target(sibling_url(alias_url, target), sha, where)
            previous = current.previous[:-1]
        else:
            target, sha = _verified_state(to, alias_url)
            previous = (*current.previous, _stack_entry(current))[-STACK_ENTRIES:]
        new = Alias(
            url=alias_url,
            name=current.name,
            target=target,
            manifest_sha256=sha,
            previous=previous,
            log=(*current.log, _entry("rollback", target, sha))[-LOG_ENTRIES:],
        )
        _write(loc, new)
    return new
