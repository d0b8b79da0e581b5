"""Names inside and around a state directory, and validation of the relative paths it stores.

Relative paths come from callers (and, on read, from a manifest anyone could edit), so they are
checked before they touch a filesystem: nothing may escape the state directory or shadow the
store's own bookkeeping files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ricordo.errors import StateError

MANIFEST_NAME = "manifest.json"
LOCK_SUFFIX = ".lock"
TMP_MARK = ".tmp-"
OLD_MARK = ".old-"
STALE_MARK = ".stale-"  # a lock set aside while a stale one is taken over (state/lock.py)

# Sidecars a writer leaves next to NAME: NAME.tmp-<pid>-<hex> and NAME.old-<pid>-<hex>.
_SIDECAR_RE = re.compile(r"^(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<tag>[0-9a-f]+)$")


def sidecar_name(name: str, kind: str, pid: int, tag: str) -> str:
    """Name of a temporary (``kind="tmp"``) or set-aside (``kind="old"``) sibling of ``name``."""
    return f"{name}.{kind}-{pid}-{tag}"


def parse_sidecar(entry: str) -> tuple[str, str, int] | None:
    """Split ``NAME.tmp-<pid>-<hex>`` into ``(NAME, "tmp", pid)``; None for any other name."""
    match = _SIDECAR_RE.match(entry)
    if match is None:
        return None
    return match["name"], match["kind"], int(match["pid"])


def is_bookkeeping_name(entry: str) -> bool:
    """True for lock files and writer sidecars, which are never states themselves."""
    return entry.endswith(LOCK_SUFFIX) or any(m in entry for m in (TMP_MARK, OLD_MARK, STALE_MARK))


def state_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a state, or None: Ricordo's own lock, temporary and set-aside
    names (``X.lock``, ``X.tmp-*``, ``X.old-*``) would be deleted, renamed or locked by writers
    of a state ``X`` next to it."""
    if is_bookkeeping_name(name):
        return (
            f"state name {name!r} collides with Ricordo's own lock, temporary or backup names "
            f"(NAME{LOCK_SUFFIX}, NAME{TMP_MARK}*, NAME{OLD_MARK}*), which writers delete or "
            "rename; choose another name"
        )
    return None


def relpath_problem(rel: object) -> str | None:
    """Describe why ``rel`` is not a safe relative file path, or return None when it is."""
    if not isinstance(rel, str):
        return f"file path {rel!r} is not a string"
    if not rel:
        return "file path is empty"
    if "\\" in rel:
        return f"file path {rel!r} contains a backslash; use '/' between folders"
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in rel):
        return f"file path {rel!r} contains a control character"
    if rel.startswith("/"):
        return f"file path {rel!r} is absolute; give it relative to the state directory"
    if rel == MANIFEST_NAME:
        return f"file path {rel!r} is reserved for the state manifest"
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return f"file path {rel!r} has an empty, '.' or '..' component"
        if is_bookkeeping_name(part):
            return f"file path {rel!r} looks like a lock or temporary name ({part!r})"
    return None


def check_relpaths(paths: Iterable[object]) -> list[str]:
    """Validate every path and that no file is also used as a folder; raise StateError if not."""
    checked: list[str] = []
    for rel in paths:
        problem = relpath_problem(rel)
        if problem is not None:
            raise StateError(f"cannot store {problem}")
        checked.append(rel)  # type: ignore[arg-type]  # relpath_problem proved it is a str
    # "a" and "a/b" cannot both be files: one would have to be a folder.
    names = set(checked)
    for rel in checked:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in names:
                raise StateError(
                    f"cannot store file path {rel!r}: {prefix!r} is also stored as a file"
                )
    return checked
