"""What a method does and takes, for ``ricordo methods`` and ``ricordo.methods.describe``: its
summary, its memory, where its defaults come from (``Method.defaults_from``), its documentation
(the module docstring) and its parameters, each with type, default and the comment written beside
the field in its Params dataclass."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from dataclasses import dataclass
from typing import Any

from ricordo.config import UpdateConfig
from ricordo.methods.base import METHODS, Method

# A field of a Params dataclass body, ``    name: type = default  # note``, and a comment line.
FIELD = re.compile(r"^\s{4}(\w+)\s*:[^=#]*=[^#]*(?:#\s*(.+?))?\s*$")
COMMENT = re.compile(r"^\s{4}#\s?(.*)$")


@dataclass(frozen=True)
class ParamDoc:
    name: str
    type: str
    default: Any
    note: str


@dataclass(frozen=True)
class MethodDoc:
    name: str
    summary: str
    memory: str
    doc: str
    params: list[ParamDoc]
    defaults_from: str = ""  # the named setting the defaults were taken from


def describe(name: str) -> MethodDoc:
    """The documentation of the registered method ``name`` (unknown names: ConfigError)."""
    method = METHODS.get(name)
    module = sys.modules[method.__module__]
    notes = _field_notes(method.Params)
    hints = typing.get_type_hints(method.Params)
    params = [
        ParamDoc(f.name, _type_name(hints[f.name]), f.default, notes.get(f.name, ""))
        for f in dataclasses.fields(method.Params)
    ]
    return MethodDoc(
        name,
        method.summary,
        memory_needs(method),
        (module.__doc__ or "").strip(),
        params,
        # The class's own: an inherited one names the parent's source (Super-ER is a DER).
        vars(method).get("defaults_from", ""),
    )


def memory_needs(method: type[Method]) -> str:
    """``none``, ``all data``, or ``--memory-size`` with the policy if the method fixes it."""
    spec = method.memory_spec(UpdateConfig(memory_policy="sliding-window"))
    if spec is None:
        return "none"
    capacity, policy = spec
    if capacity is None:
        return "all data"
    if method.memory_note:
        return f"--memory-size ({method.memory_note})"
    return "--memory-size" if policy == "sliding-window" else f"--memory-size ({policy})"


def _field_notes(params: type) -> dict[str, str]:
    """Each field's comment: the one beside it, else the comment lines just above it. Base
    classes are read first, so a subclass's note for the same field wins (a field it restates
    without a comment keeps the base class's note)."""
    notes: dict[str, str] = {}
    for cls in reversed(params.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):  # no source (e.g. a frozen app): types and defaults only
            continue
        above: list[str] = []
        for line in lines:
            if comment := COMMENT.match(line):
                above.append(comment.group(1))
            elif field := FIELD.match(line):
                name = field.group(1)
                notes[name] = field.group(2) or " ".join(above) or notes.get(name, "")
                above = []
            else:
                above = []
    return notes


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
