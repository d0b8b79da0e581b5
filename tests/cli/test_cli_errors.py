"""End-to-end: every error the CLI can hit is one line, a non-zero exit, and no harm to any state.

Library errors exit 1 with exactly one stderr line ``ricordo: error: ...`` naming the problem;
usage errors (Typer/Click) exit 2. After a failed update, the folder of states is byte-identical
to before: no next state, no lock, no temporary folder, the existing states untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ricordo.config import UpdateConfig
from ricordo.updater import Updater

CliResult = Any  # conftest.CliResult: code, out, err, err_lines, describe()
Cli = Callable[..., CliResult]
Digest = Callable[[Path], dict[str, str]]


def assert_one_line_error(result: CliResult, *needles: str) -> str:
    """Exit 1, nothing on stdout, one stderr line ``ricordo: error: ...`` containing needles."""
    assert result.code == 1, result.describe()
    assert result.out == "", result.describe()
    assert len(result.err_lines) == 1, result.describe()
    line = result.err_lines[0]
    assert line.startswith("ricordo: error: "), result.describe()
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, chunks: Path) -> Path:
    """Small states written through the Python API, copied into each test's workspace.

    ``v0``: er (memory 20, mlp 16), chunk 0 (labels 4, 6). ``m7``: the same with max_classes 7.
    """
    root = tmp_path_factory.mktemp("base")
    for name, extra in (("v0", {}), ("m7", {"max_classes": 7})):
        config = UpdateConfig(
            method="er", memory_size=20, hidden=(16,), epochs=1, progress=False, **extra
        )
        updater = Updater(config)
        updater.update(str(chunks / "train-0.npz"))
        updater.save(str(root / name))
    (root / "notes").mkdir()  # a folder of user files that is not a state
    (root / "notes" / "readme.txt").write_text("not a state\n")
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, chunks: Path) -> Path:
    """Chunks an update must refuse (or that make the loss blow up)."""
    root = tmp_path_factory.mktemp("bad")
    with np.load(chunks / "train-1.npz") as npz:
        x, y = npz["x"], npz["y"]
    nan = x.copy()
    nan[3, 0, 2, 5] = np.nan
    np.savez(root / "nan.npz", x=nan, y=y)
    np.savez(root / "flat.npz", x=x.reshape(len(x), -1), y=y)
    np.savez(root / "empty.npz", x=x[:0], y=y[:0])
    np.save(root / "flat-x.npy", x.reshape(len(x), -1))
    return root


@pytest.fixture
def ws(tmp_path: Path, base: Path) -> Path:
    """A workspace: ``ws/states/{v0,m7}`` copied from ``base``."""
    shutil.copytree(base, tmp_path / "ws" / "states")
    return tmp_path / "ws"


# ------------------------------------------------------------------------------------------------
# update errors: exit 1, one line, the states folder byte-identical afterwards

UPDATE_ERRORS = {
    "label-outside-max-classes-first-update": (
        ["--data", "{chunks}/train-1.npz", "--max-classes", "5"],
        ["label 7", "at most 5 classes", "--max-classes"],
    ),
    "label-outside-max-classes-later-update": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/m7"],
        ["label 7", "at most 7 classes"],
    ),
    "nan-input-first-update": (
        ["--data", "{bad}/nan.npz"],
        ["NaN or infinite features in 1 sample(s)"],
    ),
    "nan-input-later-update": (
        ["--data", "{bad}/nan.npz", "--state", "{states}/v0"],
        ["NaN or infinite features in 1 sample(s)"],
    ),
    "wrong-feature-shape-later-update": (
        ["--data", "{bad}/flat.npz", "--state", "{states}/v0"],
        ["feature shape (64,)", "expects (1, 8, 8)"],
    ),
    "empty-chunk-first-update": (["--data", "{bad}/empty.npz"], ["empty (0 samples)"]),
    "empty-chunk-later-update": (
        ["--data", "{bad}/empty.npz", "--state", "{states}/v0"],
        ["empty (0 samples)"],
    ),
    "missing-data-file": (["--data", "{bad}/nope.npz"], ["nope.npz", "not found"]),
    "missing-state": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/nope"],
        ["no Ricordo state at", "nope"],
    ),
    "unknown-method": (
        ["--data", "{chunks}/train-0.npz", "--method", "nope"],
        ["unknown method 'nope'", "er", "finetune", "joint"],
    ),
    "unknown-model": (
        ["--data", "{chunks}/train-0.npz", "--model", "nope"],
        ["unknown model 'nope'", "mlp"],
    ),
    "unknown-param-first-update": (
        ["--data", "{chunks}/train-0.npz", "--method", "er", "--param", "foo=1"],
        ["no parameter(s) ['foo']", "memory_batch_size"],
    ),
    "unknown-param-later-update": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/v0", "--param", "foo=1"],
        ["no parameter(s) ['foo']"],
    ),
    "bad-param-value": (
        ["--data", "{chunks}/train-0.npz", "--param", "memory_batch_size=0"],
        ["memory_batch_size=0", ">= 1"],
    ),
    "bad-param-syntax": (
        ["--data", "{chunks}/train-0.npz", "--param", "memory_batch_size"],
        ["--param 'memory_batch_size' is not key=value"],
    ),
    "bad-model-option-syntax": (
        ["--data", "{chunks}/train-0.npz", "--model-option", "=3"],
        ["--model-option '=3' is not key=value"],
    ),
    "bad-hidden": (
        ["--data", "{chunks}/train-0.npz", "--hidden", "64,x"],
        ["--hidden '64,x'", "comma-separated integers"],
    ),
    "change-method-later-update": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/v0", "--method", "finetune"],
        ["['method']", "fixed for this lineage"],
    ),
    "change-memory-size-later-update": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/v0", "--memory-size", "99"],
        ["['memory_size']", "fixed for this lineage"],
    ),
    "next-state-exists": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/v0", "--next-state", "{states}/m7"],
        ["state already exists", "m7", "--overwrite"],
    ),
    "next-state-is-the-state-itself": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/v0", "--next-state", "{states}/v0"],
        ["is --state", "must not replace its own parent"],
    ),
    "loss-becomes-nan-first-update": (
        ["--data", "{chunks}/train-0.npz", "--lr", "1e30"],
        ["the loss became nan", "--lr", "no state was written"],
    ),
    "loss-becomes-nan-later-update": (
        ["--data", "{chunks}/train-1.npz", "--state", "{states}/v0", "--lr", "1e30"],
        ["the loss became nan", "at update 1", "no state was written"],
    ),
    "next-state-is-a-folder-of-user-files": (
        [
            "--data",
            "{chunks}/train-1.npz",
            "--state",
            "{states}/v0",
            "--next-state",
            "{states}/notes",
        ],
        ["notes exists and is not a Ricordo state"],
    ),
    "patience-without-val-fraction": (
        ["--data", "{chunks}/train-0.npz", "--patience", "2"],
        ["--patience 2", "--val-fraction"],
    ),
    "devices-2": (["--data", "{chunks}/train-0.npz", "--devices", "2"], ["--devices 2"]),
    "negative-lr": (["--data", "{chunks}/train-0.npz", "--lr", "-1"], ["--lr -1.0"]),
    "target-on-npz": (
        ["--data", "{chunks}/train-0.npz", "--target", "label"],
        ["target='label'", "CSV/Parquet"],
    ),
}


@pytest.mark.parametrize("case", sorted(UPDATE_ERRORS))
def test_update_error_leaves_states_untouched(
    case: str, cli: Cli, ws: Path, chunks: Path, bad: Path, digest: Digest
) -> None:
    args, needles = UPDATE_ERRORS[case]
    places = {"chunks": chunks, "bad": bad, "states": ws / "states"}
    argv = [a.format(**places) for a in args]
    if "--next-state" not in argv:
        argv += ["--next-state", str(ws / "states" / "next")]
    before = digest(ws)
    assert before, "the workspace should hold the base states"
    result = cli("update", *argv, "--epochs", "1")
    assert_one_line_error(result, *needles)
    assert digest(ws) == before, "a failed update changed the states folder"


def test_update_with_overwrite_replaces_existing_next_state(
    cli: Cli, ws: Path, chunks: Path, digest: Digest
) -> None:
    """The counterpart of next-state-exists: --overwrite is the documented fix, and it works."""
    states = ws / "states"
    v0 = digest(states / "v0")
    result = cli(
        "update",
        "--data",
        chunks / "train-1.npz",
        "--state",
        states / "v0",
        "--next-state",
        states / "m7",
        "--overwrite",
        "--epochs",
        "1",
    )
    assert result.code == 0, result.describe()
    assert digest(states / "v0") == v0
    manifest = json.loads((states / "m7" / "manifest.json").read_text())
    assert manifest["parent"] == str(states / "v0")
    assert manifest["meta"]["updates"] == 2
    assert sorted(p.name for p in states.iterdir()) == ["m7", "notes", "v0"]


@pytest.mark.parametrize(
    ("next_state", "needles"),
    [
        ("m7", ["state already exists", "--overwrite"]),
        ("notes", ["notes exists and is not a Ricordo state"]),
        ("v1", ["pid {pid}", "is writing", "v1.lock"]),  # a live writer's lock
    ],
)
def test_a_next_state_that_cannot_be_written_fails_before_training(
    next_state: str,
    needles: list[str],
    cli: Cli,
    ws: Path,
    chunks: Path,
    digest: Digest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    states = ws / "states"
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "created": "2024-01-01T00:00:00"}
    (states / "v1.lock").write_text(json.dumps(holder))
    before = digest(ws)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the next state could not be written")

    monkeypatch.setattr("ricordo.updater.train_update", no_training)
    result = cli(
        "update",
        "--data",
        chunks / "train-1.npz",
        "--state",
        states / "v0",
        "--next-state",
        states / next_state,
    )
    assert_one_line_error(result, *(n.format(pid=os.getpid()) for n in needles))
    assert digest(ws) == before


# ------------------------------------------------------------------------------------------------
# usage errors: exit 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["update", "--next-state", "x"], "--data"),
        (["update", "--data", "x.npz"], "--next-state"),
        (["evaluate", "--data", "x.npz"], "--state"),
        (["update", "--data", "x.npz", "--next-state", "x", "--frobnicate"], "--frobnicate"),
        (["update", "--data", "x.npz", "--next-state", "x", "--epochs", "many"], "--epochs"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_exit_2(cli: Cli, tmp_path: Path, argv: list[str], needle: str) -> None:
    result = cli(*argv)
    assert result.code == 2, result.describe()
    assert needle in result.err, result.describe()
    assert result.out == ""
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# other commands


def test_evaluate_predict_info_list_errors(
    cli: Cli, ws: Path, chunks: Path, bad: Path, digest: Digest, tmp_path: Path
) -> None:
    states = ws / "states"
    before = digest(ws)
    assert_one_line_error(
        cli("evaluate", "--state", states / "nope", "--data", chunks / "test-0.npz"),
        "no Ricordo state at",
    )
    assert_one_line_error(
        cli("evaluate", "--state", states / "v0", "--data", bad / "nope.npz"), "not found"
    )
    assert_one_line_error(
        cli("evaluate", "--state", states / "v0", "--data", bad / "nan.npz"), "NaN or infinite"
    )
    assert_one_line_error(
        cli("evaluate", "--state", states / "v0", "--data", bad / "flat.npz"),
        "feature shape (64,)",
    )
    assert_one_line_error(
        cli("evaluate", "--state", states / "v0", "--data", bad / "empty.npz"), "empty"
    )
    out = tmp_path / "p.npy"
    assert_one_line_error(
        cli("predict", "--state", states / "v0", "--data", bad / "flat-x.npy", "--output", out),
        "feature shape (64,)",
        "expects (1, 8, 8)",
    )
    assert_one_line_error(
        cli("predict", "--state", states / "v0", "--data", bad / "nan.npz", "--output", out),
        "NaN or infinite",
    )
    assert not out.exists()
    assert_one_line_error(cli("info", states / "nope"), "no Ricordo state at")
    assert_one_line_error(cli("info", states / "notes"), "incomplete")
    assert_one_line_error(cli("data", "nope", "--out", tmp_path / "d"), "unknown dataset 'nope'")
    assert_one_line_error(
        cli("data", "digits", "--out", tmp_path / "d", "--updates", "11"), "11 updates"
    )
    assert not (tmp_path / "d").exists()
    assert_one_line_error(cli("list", ws / "nope"), "no folder at")
    assert_one_line_error(
        cli("benchmark", "--method", "er", "--methods", "er,joint", "--output", tmp_path / "b"),
        "either --method or --methods",
    )
    assert not (tmp_path / "b").exists()
    assert digest(ws) == before


# Every method and its --param names are checked before any run starts. (Regression test: the
# first version of `benchmark` validated them only when each method's turn came, after the
# methods listed before it had run and written their results.)
@pytest.mark.parametrize(
    "options, needle",
    [
        (["--methods", "er,nope"], "unknown method 'nope'"),
        (["--methods", "er,finetune", "--param", "memory_batch_size=4"], "'finetune' has no"),
    ],
    ids=["unknown-method", "param-unknown-to-second-method"],
)
def test_benchmark_rejects_bad_methods_before_running_any(
    cli: Cli, tmp_path: Path, options: list[str], needle: str
) -> None:
    out = tmp_path / "b"
    result = cli("benchmark", *options, "--epochs", "1", "--updates", "2", "--output", out)
    assert not out.exists(), "a benchmark ran before the bad option was reported"
    assert_one_line_error(result, needle)


@pytest.mark.parametrize("kind", ["pickled-objects", "not-npy", "strings"])
def test_predict_refuses_unreadable_npy_in_one_line(
    cli: Cli, base: Path, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.npy"
    if kind == "pickled-objects":
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif kind == "not-npy":
        path.write_bytes(b"this is not a numpy file")
    else:
        np.save(path, np.array([["a", "b"]]))
    out = tmp_path / "p.npy"
    try:
        result = cli("predict", "--state", base / "v0", "--data", path, "--output", out)
    except Exception as error:  # the bug: an uncaught library error
        pytest.fail(f"uncaught {type(error).__name__}: {error}")
    assert_one_line_error(result, path.name)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# corrupt states


def _state_files(state: Path) -> list[str]:
    return sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())


def test_every_flipped_byte_is_detected(
    cli: Cli, base: Path, chunks: Path, tmp_path: Path, digest: Digest
) -> None:
    files = _state_files(base / "v0")
    # Data, method, memory shards, history and the manifest itself.
    assert {"manifest.json", "model.safetensors", "history.json"} <= set(files)
    assert any(f.startswith("memory/shard-") for f in files), files
    checked = 0
    for rel in files:
        size = (base / "v0" / rel).stat().st_size
        for where, pos in (("start", 0), ("middle", size // 2), ("end", size - 1)):
            for mask in (0xFF, 0x01):  # a garbled byte and a single flipped bit
                state = tmp_path / f"flip-{checked}"
                shutil.copytree(base / "v0", state)
                path = state / rel
                raw = bytearray(path.read_bytes())
                raw[pos] ^= mask
                path.write_bytes(bytes(raw))
                before = digest(state)
                result = cli("evaluate", "--state", state, "--data", chunks / "test-0.npz")
                context = f"{rel} {where} (byte {pos}) ^ {mask:#x}"
                assert result.code == 1, f"{context}: {result.describe()}"
                line = assert_one_line_error(result, rel)
                assert "corrupt" in line, f"{context}: {line}"
                assert digest(state) == before, f"{context}: evaluate changed the state"
                shutil.rmtree(state)
                checked += 1
    assert checked == len(files) * 6


def test_update_from_corrupt_state_fails_and_writes_nothing(
    cli: Cli, ws: Path, chunks: Path, digest: Digest
) -> None:
    states = ws / "states"
    model = states / "v0" / "model.safetensors"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    model.write_bytes(bytes(raw))
    before = digest(ws)
    result = cli(
        "update",
        "--data",
        chunks / "train-1.npz",
        "--state",
        states / "v0",
        "--next-state",
        states / "v1",
    )
    assert_one_line_error(result, "model.safetensors", "sha256", "corrupt")
    assert digest(ws) == before


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def test_unknown_format_version_is_refused(
    cli: Cli, ws: Path, chunks: Path, digest: Digest
) -> None:
    states = ws / "states"
    path = states / "v0" / "manifest.json"
    raw = path.read_bytes()
    manifest = json.loads(raw)
    # The manifest is stored in its canonical rendering, sealed by the sha256 of that rendering
    # without its own checksum key; re-seal it after the edit so the version check must fire.
    assert raw == (_canonical(manifest) + "\n").encode()
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    assert manifest["manifest_sha256"] == hashlib.sha256(_canonical(body).encode()).hexdigest()
    body["format_version"] = 99
    body["manifest_sha256"] = hashlib.sha256(_canonical(body).encode()).hexdigest()
    path.write_text(_canonical(body) + "\n")

    before = digest(ws)
    needles = ("format version 99", "upgrade ricordo")
    assert_one_line_error(
        cli("evaluate", "--state", states / "v0", "--data", chunks / "test-0.npz"), *needles
    )
    assert_one_line_error(cli("info", states / "v0"), *needles)
    result = cli(
        "update",
        "--data",
        chunks / "train-1.npz",
        "--state",
        states / "v0",
        "--next-state",
        states / "v1",
    )
    assert_one_line_error(result, *needles)
    assert digest(ws) == before


# ------------------------------------------------------------------------------------------------
# --debug


def test_debug_shows_the_traceback(cli_proc: Cli, tmp_path: Path, chunks: Path) -> None:
    # A real process prints exactly one line (no stray warnings from the libraries it imports).
    args = ["--data", chunks / "train-0.npz", "--next-state", tmp_path / "v0", "--method", "nope"]
    plain = cli_proc("update", *args)
    assert_one_line_error(plain, "unknown method 'nope'")
    assert not (tmp_path / "v0").exists()
    # --debug (anywhere on the line) shows the traceback instead; `info` fails fast (no torch).
    for argv in (["--debug", "info", tmp_path / "nope"], ["info", tmp_path / "nope", "--debug"]):
        debug = cli_proc(*argv)
        assert debug.code == 1, debug.describe()
        assert "Traceback (most recent call last)" in debug.err, debug.describe()
        assert "StateNotFoundError: no Ricordo state at" in debug.err, debug.describe()
        assert "ricordo: error:" not in debug.err
