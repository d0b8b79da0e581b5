"""What a method does and takes, for ``ricordo methods`` and ``ricordo.methods.describe``: its
summary, its memory, where its defaults come from (``Method.defaults_from``), its documentation
(the module docstring) and its parameters, each with type, default and the note its Params
dataclass gives the field as ``dataclasses.field(metadata={"doc": ...})`` (data, not parsed
source, so it also works without source files and for third-party methods)."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass
from typing import Any

from ricordo.config import UpdateConfig
from ricordo.methods.base import METHODS, Method

# The key of a Params field's metadata that holds its one-paragraph documentation.
DOC = "doc"


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
    hints = typing.get_type_hints(method.Params)
    params = [
        ParamDoc(f.name, _type_name(hints[f.name]), f.default, f.metadata.get(DOC, ""))
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


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
