"""``ricordo.methods.describe`` (behind `ricordo methods`): every method's parameters are
documented, with the defaults the code uses (the CLI: tests/cli/test_cli_commands.py)."""

from __future__ import annotations

import dataclasses

import pytest

from ricordo.errors import ConfigError
from ricordo.methods import METHODS
from ricordo.methods.describe import describe


@pytest.mark.parametrize("name", METHODS.names())
def test_every_parameter_has_its_default_and_a_note(name: str) -> None:
    doc = describe(name)
    defaults = dataclasses.asdict(METHODS.get(name).Params())
    assert {p.name: p.default for p in doc.params} == defaults
    undocumented = [p.name for p in doc.params if not p.note]
    assert not undocumented, (
        f'{name}: document {undocumented} with field(metadata={{"doc": ...}}) in its Params'
    )
    assert doc.summary and len(doc.doc) > 200  # the module docstring: the paper and choices


def test_memory_needs_are_described() -> None:
    assert describe("finetune").memory == "none"
    assert describe("joint").memory == "all data"
    assert describe("er").memory == "--memory-size"  # any --memory-policy
    assert describe("gdumb").memory == "--memory-size (class-balanced)"
    assert describe("icarl").memory == "--memory-size (herded exemplars)"


def test_notes_come_from_the_field_metadata_inherited_fields_included() -> None:
    gdumb = {p.name: p for p in describe("gdumb").params}
    assert gdumb["fitting_epochs"].note.startswith("Epochs over the memory")  # base class field
    assert gdumb["fitting_epochs"].type == "int | None"
    offline = {p.name: p.note for p in describe("offline-er").params}
    assert offline["loss_weight_new_data"].startswith("Weight of the new rows' loss")


def test_unknown_method_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of: a-gem"):
        describe("nope")
