"""The state manifest: building it, rendering it canonically and verifying it on read.

The manifest is the one file a state is judged by: it lists every other file with its sha256 and
size and carries a checksum of itself. It is stored in its canonical JSON rendering, so re-rendering
the parsed text must reproduce it byte for byte; any flipped byte (whitespace included) is caught.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from ricordo import __version__
from ricordo.errors import StateCorruptError, StateError, StateVersionError
from ricordo.state.paths import MANIFEST_NAME, relpath_problem

FORMAT = "ricordo-state"
FORMAT_VERSION: int = 1

#: old format version -> function that upgrades a (verified) manifest of that version by one.
#: A newer library reads older states by chaining these up to FORMAT_VERSION.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}

CHECKSUM_KEY = "manifest_sha256"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no spaces, ASCII only, no NaN/Infinity."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def render(manifest: Mapping[str, Any]) -> bytes:
    """Bytes of manifest.json as stored: the canonical JSON plus one trailing newline."""
    return (canonical_json(manifest) + "\n").encode("ascii")


def _checksum(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its own checksum key."""
    without = {k: v for k, v in body.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(canonical_json(without).encode("ascii")).hexdigest()


def utc_now() -> str:
    """Current UTC time in ISO-8601 with microseconds (sorts as text in creation order)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def build_manifest(
    files: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any], parent: str | None
) -> tuple[dict, bytes]:
    """Return the manifest (as it will read back) and its bytes, for files already hashed."""
    if parent is not None and not isinstance(parent, str):
        raise StateError(f"parent must be a state URL string or None, got {parent!r}")
    if not isinstance(meta, Mapping):
        raise StateError(f"meta must be a mapping of JSON values, got {type(meta).__name__}")
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "created": utc_now(),
        "parent": parent,
        "meta": dict(meta),
        "files": {
            rel: {"sha256": info["sha256"], "size": info["size"]} for rel, info in files.items()
        },
    }
    try:
        text = canonical_json(body)
    except (TypeError, ValueError) as exc:
        raise StateError(f"meta is not JSON-serialisable ({exc}); store tensors as files") from exc
    # Round-trip through JSON so the caller gets exactly what a reader will see
    # (tuples become lists, and so on), then seal it with its checksum.
    manifest = json.loads(text)
    manifest[CHECKSUM_KEY] = _checksum(manifest)
    return manifest, render(manifest)


def _corrupt(url: str, what: str) -> StateCorruptError:
    return StateCorruptError(
        f"state at {url} is corrupt: {MANIFEST_NAME} {what}; "
        "restore it from a backup or re-run the update that wrote it"
    )


def _version_of(obj: object) -> int | None:
    version = obj.get("format_version") if isinstance(obj, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _newer_error(url: str, version: int) -> StateVersionError:
    return StateVersionError(
        f"state at {url} has format version {version} but this Ricordo ({__version__}) reads up to "
        f"{FORMAT_VERSION}; upgrade ricordo"
    )


def parse_manifest(raw: bytes, url: str) -> dict:
    """Verify manifest bytes read from ``url`` and return the manifest, migrated to FORMAT_VERSION.

    Integrity is checked before the version, except that a manifest claiming a newer version
    gets the version error: a newer Ricordo may seal its manifests differently.
    """
    try:
        text = raw.decode("ascii")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(url, f"is not valid JSON ({type(exc).__name__})") from exc
    version = _version_of(obj)
    newer = version is not None and version > FORMAT_VERSION
    if not isinstance(obj, dict):
        raise _corrupt(url, "is not a JSON object")
    try:
        canonical = render(obj)
    except ValueError as exc:  # NaN/Infinity parsed from the text cannot be canonical
        raise _corrupt(url, f"holds a non-finite number ({exc})") from exc
    if raw != canonical:
        if newer:
            raise _newer_error(url, version)  # type: ignore[arg-type]
        raise _corrupt(url, "does not match its canonical form (an edited or flipped byte)")
    stored = obj.get(CHECKSUM_KEY)
    if stored != _checksum(obj):
        if newer:
            raise _newer_error(url, version)  # type: ignore[arg-type]
        raise _corrupt(url, f"fails its own checksum ({CHECKSUM_KEY})")
    if obj.get("format") != FORMAT:
        raise _corrupt(url, f"has format {obj.get('format')!r}, expected {FORMAT!r}")
    if version is None or version < 1:
        raise _corrupt(url, f"has an invalid format_version {obj.get('format_version')!r}")
    if newer:
        raise _newer_error(url, version)
    manifest = _migrate(obj, version, url)
    _check_structure(manifest, url)
    return manifest


def _migrate(manifest: dict, version: int, url: str) -> dict:
    """Upgrade an older manifest one version at a time through MIGRATIONS."""
    while version < FORMAT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StateVersionError(
                f"state at {url} has format version {version}, which this Ricordo ({__version__}) "
                f"cannot upgrade (no migration from version {version}); read it with the Ricordo "
                f"that wrote it ({manifest.get('library_version')}) and re-save it"
            )
        manifest = step(manifest)
        version += 1
        manifest["format_version"] = version
    return manifest


def _check_structure(manifest: dict, url: str) -> None:
    """Check the fields readers rely on; the checksum does not stop a hand-edited manifest."""
    for key in ("created", "library_version"):
        if not isinstance(manifest.get(key), str):
            raise _corrupt(url, f"has no valid {key!r}")
    if manifest.get("parent") is not None and not isinstance(manifest["parent"], str):
        raise _corrupt(url, "has a 'parent' that is not a string or null")
    if not isinstance(manifest.get("meta"), dict):
        raise _corrupt(url, "has no 'meta' object")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _corrupt(url, "has no 'files' object")
    for rel, info in files.items():
        problem = relpath_problem(rel)
        if problem is not None:
            raise _corrupt(url, f"lists an unsafe {problem}")
        if not isinstance(info, dict):
            raise _corrupt(url, f"has a malformed entry for {rel!r}")
        sha, size = info.get("sha256"), info.get("size")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise _corrupt(url, f"has a malformed sha256 for {rel!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _corrupt(url, f"has a malformed size for {rel!r}")
