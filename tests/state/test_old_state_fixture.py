"""A state written by Ricordo 0.1.0, kept in the repository (tests/fixtures/state-v0.1.0).

The current code must verify it, load it, predict what 0.1.0 predicted for the recorded inputs
(tests/fixtures/state-v0.1.0.json) and continue it into a new state. When the state format or the
configuration changes, this is the real old state the migration has to read. The fixture was
made by tests/fixtures/make_fixtures.py with the 0.1.0 code and must not be re-generated: a state
written by newer code would no longer test anything old. The tests work on copies of it; one
checks that reading the repository's copy in place writes nothing into it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ricordo import Updater
from ricordo.cli import app
from ricordo.data import ArrayDataset, load_builtin
from ricordo.errors import StateCorruptError
from ricordo.state import read_manifest, read_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STATE = FIXTURES / "state-v0.1.0"
EXPECTED = json.loads((FIXTURES / "state-v0.1.0.json").read_text())


def recorded_inputs() -> torch.Tensor:
    return torch.tensor(EXPECTED["inputs"]).reshape(-1, *EXPECTED["input_shape"])


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def old_state(tmp_path: Path) -> Path:
    """A copy of the fixture, so no test can change the repository's copy."""
    return Path(shutil.copytree(STATE, tmp_path / STATE.name))


def test_the_fixture_is_a_0_1_0_state_and_verifies(old_state: Path) -> None:
    manifest = read_manifest(str(old_state))
    assert manifest["library_version"] == EXPECTED["library_version"] == "0.1.0"
    assert manifest["format_version"] == 1
    assert "num_classes" not in manifest["meta"]["config"]  # older than the fixed head
    state = read_state(str(old_state))  # checks every file's size and sha256
    assert set(state.files) == set(manifest["files"])
    assert {"model.safetensors", "method.json", "memory/index.json"} <= set(state.files)


def test_old_state_loads_and_predicts_what_0_1_0_predicted(old_state: Path) -> None:
    updater = Updater.load(str(old_state))
    assert updater.method.name == "er"
    assert updater.seen_classes == EXPECTED["seen_classes"]
    assert updater.memory is not None and len(updater.memory) == 20
    logits = updater.predict_logits(recorded_inputs())
    torch.testing.assert_close(logits, torch.tensor(EXPECTED["logits"]), rtol=1e-5, atol=1e-5)
    assert updater.predict(recorded_inputs()).tolist() == EXPECTED["predictions"]


def test_old_state_is_still_checked_byte_for_byte(old_state: Path) -> None:
    model = old_state / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(StateCorruptError, match="model.safetensors"):
        Updater.load(str(old_state))


def test_cli_describes_predicts_and_continues_the_old_state(
    old_state: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    info = runner.invoke(app, ["info", str(old_state)])
    assert info.exit_code == 0, info.output
    assert "er" in info.output
    np.save(tmp_path / "x.npy", recorded_inputs().numpy())
    predicted = runner.invoke(
        app,
        ["predict", "--state", str(old_state), "--data", str(tmp_path / "x.npy")]
        + ["--output", str(tmp_path / "p.npy")],
    )
    assert predicted.exit_code == 0, predicted.output
    assert np.load(tmp_path / "p.npy").tolist() == EXPECTED["predictions"]
    # The next chunk: digits rows of two classes the state has not seen.
    train, _ = load_builtin("digits")
    rows = torch.isin(train.y, torch.tensor([3, 5])).nonzero().flatten()
    chunk = ArrayDataset(train.x[rows], train.y[rows])
    np.savez(tmp_path / "chunk.npz", x=chunk.x.numpy(), y=chunk.y.numpy())
    before = digest(old_state)
    updated = runner.invoke(
        app,
        ["update", "--state", str(old_state), "--data", str(tmp_path / "chunk.npz")]
        + ["--next-state", str(tmp_path / "next"), "--no-progress"],
    )
    assert updated.exit_code == 0, updated.output
    assert digest(old_state) == before  # the old state stays as it was
    child = Updater.load(str(tmp_path / "next"))
    assert child.seen_classes == sorted(EXPECTED["seen_classes"] + [3, 5])
    assert read_manifest(str(tmp_path / "next"))["parent"] == str(old_state)
    assert len(child.history) == 3


def test_reading_the_fixture_in_place_writes_nothing_into_it() -> None:
    before = digest(STATE)
    Updater.load(str(STATE)).predict(recorded_inputs())
    read_state(str(STATE))
    assert digest(STATE) == before
