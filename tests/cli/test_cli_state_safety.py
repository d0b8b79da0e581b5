"""End-to-end safety of states through the CLI: a state never runs code, nothing of the user's is
replaced or written into, and every state problem is one line (issue 8).

Each refusal is checked for its exit status, its one-line message, and that nothing was lost or
written (the workspace is byte-identical afterwards).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ricordo.errors import ConfigError, ModelCodeError, StateError
from ricordo.state import manifest as manifest_mod
from ricordo.state import store as store_mod
from ricordo.updater import Updater

CliResult = Any  # conftest.CliResult
Cli = Callable[..., CliResult]
Digest = Callable[[Path], dict[str, str]]

USER_MODEL = """
from torch import nn


def model_fn(input_shape, num_classes, width=8):
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, width), nn.Tanh(), nn.Linear(width, num_classes)
    )
"""
# Running this leaves a marker file behind: the proof that a state made Ricordo run code.
PAYLOAD = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
{model}
"""
SMALL = {"method": "er", "memory_size": 20, "epochs": 1, "progress": False}


def assert_one_line_error(result: CliResult, *needles: str) -> str:
    """Exit 1, nothing on stdout, one stderr line ``ricordo: error: ...`` containing needles."""
    assert result.code == 1, result.describe()
    assert result.out == "", result.describe()
    assert len(result.err_lines) == 1, result.describe()
    line = result.err_lines[0]
    assert line.startswith("ricordo: error: ") and "Traceback" not in result.err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reseal(state: Path, edit: Callable[[dict], None]) -> None:
    """Apply ``edit`` to a state's manifest and seal it again (what a forger can do)."""
    manifest = json.loads((state / "manifest.json").read_text())
    edit(manifest)
    manifest.pop(manifest_mod.CHECKSUM_KEY)
    manifest[manifest_mod.CHECKSUM_KEY] = manifest_mod._checksum(manifest)
    (state / "manifest.json").write_bytes(manifest_mod.render(manifest))


def _replace_file(state: Path, rel: str, data: bytes) -> None:
    """Put other bytes in a state file and re-seal the manifest so every checksum passes."""
    (state / rel).write_bytes(data)

    def edit(manifest: dict) -> None:
        manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    _reseal(state, edit)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, chunks: Path) -> Path:
    """``states/v0``: er on the built-in mlp; ``states/c0``: er on ``code/custom_model.py``."""
    root = tmp_path_factory.mktemp("safety")
    (root / "code").mkdir()
    (root / "code" / "custom_model.py").write_text(USER_MODEL)
    builtin = Updater(hidden=(16,), **SMALL)
    builtin.update(str(chunks / "train-0.npz"))
    builtin.save(str(root / "states" / "v0"))
    user = Updater(config=str(root / "code" / "custom_model.py"), **SMALL)
    user.update(str(chunks / "train-0.npz"))
    user.save(str(root / "states" / "c0"))
    with np.load(chunks / "test-0.npz") as npz:
        np.save(root / "inputs.npy", npz["x"])
    return root


@pytest.fixture
def ws(tmp_path: Path, base: Path) -> Path:
    shutil.copytree(base, tmp_path / "ws")
    return tmp_path / "ws"


# ---------------------------------------------------------------------- a state never runs code


def _plant(ws: Path, how: str) -> tuple[Path, str]:
    """Make ``states/c0`` name a payload that writes ``ws/marker`` when run; return the state
    and the name the error must give."""
    state = ws / "states" / "c0"
    marker = ws / "marker"
    text = PAYLOAD.format(marker=str(marker), model=USER_MODEL)
    # Absolute: anywhere on this machine; otherwise planted inside the state folder, unlisted.
    payload = ws / "payload.py" if how == "absolute-path" else state / "payload.py"
    payload.write_text(text)
    sha = _sha(payload)
    spec: dict[str, Any] = {
        "absolute-path": {"kind": "config", "path": str(payload), "sha256": sha},
        "relative-path": {"kind": "config", "path": "payload.py", "sha256": sha},
        "code-file": {"kind": "code", "source": "payload.py", "function": "model_fn"},
        "code-module": {"kind": "code", "source": "payload", "function": "model_fn"},
    }[how]
    if how.startswith("code"):
        spec.update(source_type="file" if how == "code-file" else "module", sha256=sha)

    def edit(manifest: dict) -> None:
        old = manifest["meta"]["model_spec"]
        kept = {k: old[k] for k in ("input_shape", "num_classes", "options")}
        manifest["meta"]["model_spec"] = {**kept, **spec}

    _reseal(state, edit)
    return state, "payload:model_fn" if how == "code-module" else "payload.py"


@pytest.mark.parametrize("how", ["absolute-path", "relative-path", "code-file", "code-module"])
def test_a_state_that_names_code_never_runs_it(
    cli: Cli,
    ws: Path,
    chunks: Path,
    how: str,
    digest: Digest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, name = _plant(ws, how)
    # Everything that could resolve the name would find the payload: the working folder and
    # the import path both point into the state.
    monkeypatch.chdir(state)
    monkeypatch.syspath_prepend(str(state))
    before = digest(ws)
    commands = [
        ("predict", "--state", state, "--data", ws / "inputs.npy", "--output", ws / "p.npy"),
        ("evaluate", "--state", state, "--data", chunks / "test-0.npz"),
        ("update", "--state", state, "--data", chunks / "train-1.npz", "--next-state", ws / "n"),
    ]
    for args in commands:
        assert_one_line_error(cli(*args), f"needs its model code {name} (sha256 ", "--config")
    with pytest.raises(ModelCodeError, match="a state never runs code"):
        Updater.load(str(state))
    assert not (ws / "marker").exists()
    assert digest(ws) == before


def test_user_code_is_passed_checked_and_can_be_changed_on_purpose(
    cli: Cli, ws: Path, chunks: Path, digest: Digest
) -> None:
    c0, code = ws / "states" / "c0", ws / "code" / "custom_model.py"
    sha = _sha(code)
    preds = ws / "p.npy"
    predict = ("predict", "--state", c0, "--data", ws / "inputs.npy", "--output", preds)
    assert cli(*predict, "--config", code).code == 0
    assert (
        cli("evaluate", "--state", c0, "--data", chunks / "test-0.npz", "--config", code).code == 0
    )
    result = cli(
        "update", "--state", c0, "--data", chunks / "train-1.npz", "--next-state",
        ws / "states" / "c1", "--config", code, "--epochs", "1",
    )  # fmt: skip
    assert result.code == 0, result.describe()
    manifest = json.loads((ws / "states" / "c1" / "manifest.json").read_text())
    spec = manifest["meta"]["model_spec"]
    assert (spec["kind"], spec["source"], spec["sha256"]) == ("code", "custom_model.py", sha)
    history = json.loads((ws / "states" / "c1" / "history.json").read_text())
    recorded = [manifest["meta"]["config"]["config"], *(r["config"]["config"] for r in history)]
    assert recorded == ["custom_model.py"] * 3  # portable: no path of this machine

    # The same file, edited: refused with both hashes, then accepted on purpose.
    code.write_text(USER_MODEL + "\n# tuned\n")
    before = digest(ws)
    line = assert_one_line_error(
        cli(*predict, "--overwrite", "--config", code), "--accept-model-change"
    )
    assert _sha(code)[:12] in line and sha[:12] in line
    assert digest(ws) == before
    result = cli(
        "update", "--state", ws / "states" / "c1", "--data", chunks / "train-2.npz",
        "--next-state", ws / "states" / "c2", "--config", code, "--accept-model-change",
        "--epochs", "1",
    )  # fmt: skip
    assert result.code == 0, result.describe()
    spec = json.loads((ws / "states" / "c2" / "manifest.json").read_text())["meta"]["model_spec"]
    assert spec["sha256"] == _sha(code)  # the next state records the accepted code
    assert cli(*predict, "--overwrite", "--config", code, "--state", ws / "states" / "c2").code == 0


def test_config_on_a_builtin_state_and_a_lone_accept_flag_are_refused(
    cli: Cli, ws: Path, chunks: Path
) -> None:
    v0 = ws / "states" / "v0"
    evaluate = ("evaluate", "--state", v0, "--data", chunks / "test-0.npz")
    assert_one_line_error(
        cli(*evaluate, "--config", ws / "code" / "custom_model.py"), "built-in model 'mlp'"
    )
    assert_one_line_error(cli(*evaluate, "--accept-model-change"), "needs --config")


def test_a_module_function_reference_works_end_to_end(
    cli: Cli, ws: Path, chunks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = ws / "site" / "ricordo_cli_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_MODEL.replace("def model_fn", "def make_model"))
    monkeypatch.syspath_prepend(str(ws / "site"))
    ref = "ricordo_cli_models.nets:make_model"
    m0 = ws / "states" / "m0"
    result = cli(
        "update",
        "--data",
        chunks / "train-0.npz",
        "--next-state",
        m0,
        "--config",
        ref,
        "--epochs",
        "1",
    )
    assert result.code == 0, result.describe()
    spec = json.loads((m0 / "manifest.json").read_text())["meta"]["model_spec"]
    assert (spec["source"], spec["function"], spec["source_type"]) == (
        "ricordo_cli_models.nets",
        "make_model",
        "module",
    )
    assert spec["sha256"] == _sha(package / "nets.py")
    evaluate = ("evaluate", "--state", m0, "--data", chunks / "test-0.npz")
    assert_one_line_error(cli(*evaluate), f"needs its model code {ref} (sha256", f"--config {ref}")
    assert cli(*evaluate, "--config", ref).code == 0


def test_python_load_takes_a_path_a_callable_or_a_module(ws: Path, chunks: Path) -> None:
    c0, code = ws / "states" / "c0", ws / "code" / "custom_model.py"
    inputs = np.load(ws / "inputs.npy")
    with pytest.raises(ModelCodeError, match=r"model='custom_model.py'"):
        Updater.load(str(c0))
    expected = Updater.load(str(c0), model=str(code)).predict_logits(inputs)
    spec = importlib.util.spec_from_file_location("ricordo_test_custom_model", code)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from_callable = Updater.load(str(c0), model=module.model_fn)
    torch.testing.assert_close(from_callable.predict_logits(inputs), expected)
    instance = module.model_fn((1, 8, 8), 2)
    from_instance = Updater.load(str(c0), model=instance)
    assert from_instance.model is instance  # the state's weights were loaded into it
    torch.testing.assert_close(from_instance.predict_logits(inputs), expected)
    # A module the weights do not fit, or a callable from another file, is refused.
    with pytest.raises(ConfigError, match="does not fit the weights of the state"):
        Updater.load(str(c0), model=module.model_fn((1, 8, 8), 2, width=5))
    with pytest.raises(ModelCodeError, match="--accept-model-change"):
        Updater.load(str(c0), model=_no_training)


def test_a_model_file_with_a_syntax_error_is_one_line(
    cli: Cli, ws: Path, chunks: Path, digest: Digest
) -> None:
    bad = ws / "code" / "broken.py"
    bad.write_text(
        "from torch import nn\n\n\ndef model_fn(**kwargs)\n    return nn.Linear(64, 2)\n"
    )
    before = digest(ws)
    result = cli(
        "update", "--data", chunks / "train-0.npz", "--next-state", ws / "n", "--config", bad
    )
    assert_one_line_error(result, f"{bad.resolve()}, line 4", "syntax error")
    assert digest(ws) == before


# ------------------------------------------------------------- --overwrite replaces only a state


def _fake_manifest(ws: Path) -> Path:
    target = ws / "mine"
    target.mkdir()
    (target / "manifest.json").write_text('{"name": "my app"}')
    (target / "photo.jpg").write_bytes(b"\xff\xd8 precious")
    return target


def _stray_in_state(ws: Path) -> Path:
    target = ws / "states" / "v0copy"
    shutil.copytree(ws / "states" / "v0", target)
    (target / "notes.txt").write_text("my notes")
    return target


def _nested_state(ws: Path) -> Path:
    target = ws / "states" / "v0copy"
    shutil.copytree(ws / "states" / "v0", target)
    shutil.copytree(ws / "states" / "v0", target / "inner")
    return target


@pytest.mark.parametrize("plant", [_fake_manifest, _stray_in_state, _nested_state])
def test_overwrite_never_deletes_user_files(
    cli: Cli, ws: Path, chunks: Path, digest: Digest, plant: Callable[[Path], Path]
) -> None:
    target = plant(ws)
    before = digest(ws)
    result = cli(
        "update", "--data", chunks / "train-1.npz", "--state", ws / "states" / "v0",
        "--next-state", target, "--overwrite",
    )  # fmt: skip
    assert_one_line_error(result, str(target), "Ricordo replaces only a complete state of its own")
    assert digest(ws) == before


# ----------------------------------------------------------------- outputs of predict / evaluate


def test_an_existing_output_needs_overwrite(cli: Cli, ws: Path, chunks: Path) -> None:
    out = ws / "preds.npy"
    out.write_bytes(b"precious")
    predict = ("predict", "--state", ws / "states" / "v0", "--data", ws / "inputs.npy")
    assert_one_line_error(cli(*predict, "--output", out), "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert cli(*predict, "--output", out, "--overwrite").code == 0
    assert np.load(out).shape == (len(np.load(ws / "inputs.npy")),)

    metrics = ws / "metrics.json"
    metrics.write_text("mine")
    evaluate = ("evaluate", "--state", ws / "states" / "v0", "--data", chunks / "test-0.npz")
    assert_one_line_error(cli(*evaluate, "--output", metrics), "already exists", "--overwrite")
    assert metrics.read_text() == "mine"
    assert cli(*evaluate, "--output", metrics, "--overwrite").code == 0
    assert "accuracy" in json.loads(metrics.read_text())


def test_the_output_is_never_the_input_or_inside_a_state(
    cli: Cli, ws: Path, chunks: Path, digest: Digest
) -> None:
    v0 = ws / "states" / "v0"
    (ws / "link").symlink_to(v0)
    data = ws / "test.npz"
    shutil.copy(chunks / "test-0.npz", data)
    before = digest(ws)
    predict = ("predict", "--state", v0, "--overwrite", "--output")
    assert_one_line_error(cli(*predict, data, "--data", data), "is the input --data file")
    for inside in (v0 / "preds.npy", v0 / "model.safetensors", v0 / "memory" / "x.npy",
                   ws / "link" / "preds.npy"):  # fmt: skip
        line = assert_one_line_error(cli(*predict, inside, "--data", data), "is inside the state")
        assert str(v0) in line
    evaluate = ("evaluate", "--state", v0, "--data", data, "--overwrite", "--output")
    assert_one_line_error(cli(*evaluate, v0 / "history.json"), "is inside the state")
    assert_one_line_error(cli(*evaluate, data), "is the input --data file")
    assert digest(ws) == before


# ------------------------------------------------------------------ where a new state may go


@pytest.mark.parametrize("spelling", ["{v0}", "./states/v0", "{v0}/", "states/../states/v0"])
def test_next_state_equal_to_state_is_refused_before_training(
    cli: Cli,
    ws: Path,
    chunks: Path,
    digest: Digest,
    spelling: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ws)
    monkeypatch.setattr(Updater, "update", _no_training)
    v0 = ws / "states" / "v0"
    before = digest(ws)
    result = cli(
        "update", "--data", chunks / "train-1.npz", "--state", v0,
        "--next-state", spelling.format(v0=v0), "--overwrite",
    )  # fmt: skip
    assert_one_line_error(result, "must not replace its own parent")
    assert digest(ws) == before


def test_python_save_onto_the_loaded_state_is_refused(ws: Path, digest: Digest) -> None:
    v0 = ws / "states" / "v0"
    updater = Updater.load(str(v0))
    before = digest(ws)
    for url in (str(v0), f"{v0}/", f"{v0}/../v0"):
        with pytest.raises(StateError, match="the state this Updater was loaded from"):
            updater.save(url, overwrite=True)
    assert digest(ws) == before
    with pytest.raises(StateError, match=r"pass overwrite=True \(CLI"):  # Python's wording
        updater.save(str(ws / "states" / "c0"))


def _no_training(self: Updater, *args: object, **kwargs: object) -> dict:
    raise AssertionError("the refusal had to come before training")


@pytest.mark.parametrize(
    ("flag", "extra"),
    [
        ("--next-state", []),
        ("--state", ["--next-state", "{ws}/n"]),
    ],
)
def test_process_local_filesystems_are_refused(
    cli: Cli,
    ws: Path,
    chunks: Path,
    flag: str,
    extra: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Updater, "update", _no_training)
    args = ["update", "--data", chunks / "train-1.npz", flag, "memory://ricordo/v1"]
    args += [a.format(ws=ws) for a in extra]
    assert_one_line_error(cli(*args), f"{flag} memory://ricordo/v1", "lives only inside")
    result = cli(
        "predict", "--state", "memory://x/v0", "--data", ws / "inputs.npy", "--output", ws / "p.npy"
    )
    assert_one_line_error(result, "lives only inside")
    assert not (ws / "n").exists() and not (ws / "p.npy").exists()


@pytest.mark.parametrize("name", ["v1.tmp-123-abcd", "v1.old-7-ab", "v1.lock", "v0/inner"])
def test_reserved_and_nested_state_paths_are_refused(
    cli: Cli, ws: Path, chunks: Path, digest: Digest, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Updater, "update", _no_training)
    before = digest(ws)
    result = cli("update", "--data", chunks / "train-0.npz", "--next-state", ws / "states" / name)
    needle = "inside the state at" if "/" in name else "collides with Ricordo's own"
    assert_one_line_error(result, needle)
    assert digest(ws) == before


def test_a_read_only_target_is_found_before_training(
    cli: Cli, ws: Path, chunks: Path, digest: Digest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, where chmod stops nothing: the check asks os.access, patched here.
    readonly = ws / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        store_mod.os,
        "access",
        lambda path, mode: False if os.fspath(path) == str(readonly) else real_access(path, mode),
    )
    monkeypatch.setattr(Updater, "update", _no_training)
    before = digest(ws)
    result = cli("update", "--data", chunks / "train-0.npz", "--next-state", readonly / "v1")
    assert_one_line_error(result, f"no permission to write in {readonly}")
    assert digest(ws) == before


def test_an_os_error_while_writing_the_state_is_one_line(
    cli: Cli, ws: Path, chunks: Path, digest: Digest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(loc, path, data):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(store_mod, "_store_file", denied)
    before = digest(ws)
    result = cli(
        "update",
        "--data",
        chunks / "train-0.npz",
        "--next-state",
        ws / "states" / "v9",
        "--epochs",
        "1",
        "--no-progress",  # the error comes after training: no epoch line before it
    )
    assert_one_line_error(
        result, f"cannot write the state at {ws / 'states' / 'v9'}: Permission denied"
    )
    assert digest(ws) == before


# --------------------------------------------------------- damaged states: one line, no traceback


@pytest.mark.parametrize(
    ("rel", "data", "needle"),
    [
        (
            "model.safetensors",
            b"this is not safetensors at all",
            "model.safetensors is not a safetensors file",
        ),
        ("method.safetensors", b"\x00" * 16, "method.safetensors is not a safetensors file"),
        ("history.json", b'{"update": 0}', "history.json is not a list of update records"),
        ("history.json", b"[1, 2]", "history.json is not a list of update records"),
        ("history.json", b"not json at all", "history.json is not valid JSON"),
    ],
)
def test_a_resealed_state_with_unreadable_files_is_one_line(
    cli: Cli, ws: Path, chunks: Path, rel: str, data: bytes, needle: str
) -> None:
    v0 = ws / "states" / "v0"
    _replace_file(v0, rel, data)
    result = cli("evaluate", "--state", v0, "--data", chunks / "test-0.npz")
    assert_one_line_error(result, needle, "has valid checksums")


def test_a_symlink_in_a_state_is_refused(cli: Cli, ws: Path, chunks: Path) -> None:
    v0 = ws / "states" / "v0"
    (v0 / "model.safetensors").rename(ws / "elsewhere.safetensors")
    (v0 / "model.safetensors").symlink_to(ws / "elsewhere.safetensors")
    result = cli("evaluate", "--state", v0, "--data", chunks / "test-0.npz")
    assert_one_line_error(result, "model.safetensors is a symbolic link", "regular files")


def test_loading_while_another_job_overwrites_never_reports_corruption(
    ws: Path, chunks: Path
) -> None:
    # Two different states take turns at one URL (--overwrite), while a reader loads it: the
    # reader gets one of them, complete, every time; the memory's files are read after the
    # checksums, so the Updater starts over when the state changed in between.
    first = Updater.load(str(ws / "states" / "v0"))
    second = Updater.load(str(ws / "states" / "v0"))
    second.update(str(chunks / "train-1.npz"))
    url = str(ws / "live")
    first.save(url)
    stop = threading.Event()
    writes = [0]
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                (first, second)[writes[0] % 2].save(url, overwrite=True)
                writes[0] += 1
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    errors: list[str] = []
    loads = 0
    deadline = time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            try:
                loaded = Updater.load(url)
                assert loaded.updates in (1, 2)
                loads += 1
            except StateError as exc:
                errors.append(str(exc))
    finally:
        stop.set()
        thread.join()
    assert not failures, failures
    assert writes[0] >= 5 and loads >= 20  # they really raced
    assert errors == []


def test_lineage_errors_name_the_python_way_first(ws: Path, chunks: Path) -> None:
    updater = Updater.load(str(ws / "states" / "v0"))
    with pytest.raises(ConfigError, match=r"start a new lineage \(a new Updater; CLI: without"):
        updater.update(str(chunks / "train-1.npz"), method="finetune")
