"""``--help`` shows how to type each option and what it is when not given (issue 8).

Flags show no value type (it said ``--version <bool>``), repeatable options their element (it
said ``<list[str]>``), and the UpdateConfig options of ``update`` and ``benchmark``, which default
to None so that a state's stored value wins, show UpdateConfig's default.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest

from ricordo.config import UpdateConfig

CliResult = Any  # conftest.CliResult: code, out, err, err_lines, describe()
Cli = Callable[..., CliResult]

COMMANDS = ["data", "update", "evaluate", "predict", "info", "list", "methods", "benchmark"]
COMMANDS += ["report"]
COMMANDS += ["history", "diff", "publish", "rollback"]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
DEFAULTS = {f.name: f.default for f in dataclasses.fields(UpdateConfig)}


def help_text(cli: Cli, *command: str) -> str:
    result = cli(*command, "--help")
    assert result.code == 0, result.describe()
    return _ANSI.sub("", result.out)


def rows(text: str) -> dict[str, str]:
    """Each option's row of the help panel, its wrapped continuation lines joined."""
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        inner = line.strip().strip("│").strip()
        match = re.match(r"^\*?\s*(--[a-z-]+)", inner)
        if match:
            current = match.group(1)
            found[current] = inner
        elif current and line.strip().startswith("│") and inner and not inner.startswith("-"):
            found[current] += " " + inner
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in found.items()}


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["ricordo", *COMMANDS])
def test_flags_show_no_type_and_lists_show_their_element(cli: Cli, command: list[str]) -> None:
    text = help_text(cli, *command)
    assert "<bool>" not in text, text
    assert "list[" not in text, text
    options = rows(text)
    assert options["--help"] == "--help Show this message and exit."


def test_root_flags(cli: Cli) -> None:
    options = rows(help_text(cli))
    assert options["--version"] == "--version Print the version."
    assert options["--debug"] == "--debug Show tracebacks on errors."


def test_repeatable_options_show_k_equals_v(cli: Cli) -> None:
    update = rows(help_text(cli, "update"))
    assert re.match(r"--param K=V ", update["--param"]), update["--param"]
    assert re.match(r"--model-option K=V ", update["--model-option"])
    data = rows(help_text(cli, "data"))
    assert re.match(r"--scenario-option K=V ", data["--scenario-option"])
    assert re.match(r"--dataset-option K=V ", data["--dataset-option"])
    benchmark = rows(help_text(cli, "benchmark"))
    for flag in ("--param", "--model-option", "--scenario-option", "--dataset-option"):
        assert re.match(rf"{flag} K=V ", benchmark[flag]), benchmark[flag]


def test_arguments_are_named_in_capitals(cli: Cli) -> None:
    assert "Usage: ricordo info [OPTIONS] {STATE}" in help_text(cli, "info")
    assert "Usage: ricordo methods [OPTIONS] [NAME]" in help_text(cli, "methods")


@pytest.mark.parametrize("command", ["update", "benchmark"])
def test_update_options_show_update_config_defaults(cli: Cli, command: str) -> None:
    text = help_text(cli, command)
    options = rows(text)
    expected = {
        "--lr": DEFAULTS["lr"],
        "--epochs": DEFAULTS["epochs"],
        "--batch-size": DEFAULTS["batch_size"],
        "--memory-size": DEFAULTS["memory_size"],
        "--memory-policy": DEFAULTS["memory_policy"],
        "--max-classes": DEFAULTS["max_classes"],
        "--optimizer": DEFAULTS["optimizer"],
        "--hidden": ",".join(map(str, DEFAULTS["hidden"])),
        "--model": DEFAULTS["model"],
        "--seed": DEFAULTS["seed"],
        "--mask-unseen": "--no-mask-unseen",  # False: the flag that says so
        "--progress": "--progress",
    }
    for flag, value in expected.items():
        assert options[flag].endswith(f"[default: {value}]"), options[flag]
    # Said once per option: not appended where the help states its default itself.
    for flag in ("--threads", "--patience", "--memory-dir"):
        assert "[default:" not in options[flag], options[flag]
    threads = options["--threads"]
    assert threads.startswith("--threads <int> CPU threads for training (default: auto: 1 "), (
        threads
    )
    # Where a value not given comes from instead.
    note = "--state" if command == "update" else "-c file's"
    assert re.search(rf"An option not given takes .*{note}.*else the default shown", text), text


def test_update_method_default_and_benchmark_method_selector(cli: Cli) -> None:
    assert rows(help_text(cli, "update"))["--method"].endswith(f"[default: {DEFAULTS['method']}]")
    # benchmark's --method picks the runs (finetune,er,joint unless given): not er.
    method = rows(help_text(cli, "benchmark"))["--method"]
    assert "[default:" not in method and "--methods" in method, method
