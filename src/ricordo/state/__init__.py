"""The state store: versioned, checksummed, atomically written directories of files.

It is content-agnostic (relative path -> bytes, plus a JSON ``meta`` dict in the manifest), never
pickles, and works on local paths and any fsspec URL. ``import ricordo.state`` imports no torch.
"""

from __future__ import annotations

from ricordo.state.alias import (
    Alias,
    list_aliases,
    publish,
    read_alias,
    resolve_alias,
    rollback,
)
from ricordo.state.manifest import FORMAT_VERSION, MIGRATIONS
from ricordo.state.store import (
    LoadedState,
    check_writable,
    enclosing_state,
    list_states,
    read_manifest,
    read_state,
    read_state_file,
    state_changed,
    state_exists,
    write_state,
)

__all__ = [
    "FORMAT_VERSION",
    "Alias",
    "MIGRATIONS",
    "LoadedState",
    "check_writable",
    "enclosing_state",
    "list_aliases",
    "list_states",
    "publish",
    "read_alias",
    "read_manifest",
    "read_state",
    "read_state_file",
    "resolve_alias",
    "rollback",
    "state_changed",
    "state_exists",
    "write_state",
]
