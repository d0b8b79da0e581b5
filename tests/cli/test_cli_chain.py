"""End-to-end: update jobs as separate processes, a crash in the middle of a write, state format.

The chains (``er_chain``, ``finetune_chain`` in conftest) are five ``ricordo update`` processes on
digits, class-incremental: each job loads the previous state, trains on its chunk and writes the
next state, exactly as a production pipeline would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ricordo.config import UpdateConfig
from ricordo.data import load_data
from ricordo.updater import Updater

CliResult = Any  # conftest.CliResult: code, out, err, err_lines, describe()


# ------------------------------------------------------------------------------------------------
# SIGKILL while the next state is being written


def _kill_while_writing(
    states: Path, data: Path, cli_popen: Callable[..., subprocess.Popen[bytes]]
) -> tuple[int, list[str]]:
    """Start the update, SIGKILL it as soon as ``v1.tmp-*`` appears; (returncode, tmp names)."""
    proc = cli_popen(
        "update",
        "--data",
        data,
        "--state",
        states / "v0",
        "--next-state",
        states / "v1",
    )
    try:
        while proc.poll() is None:
            if any(name.startswith("v1.tmp-") for name in os.listdir(states)):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.0002)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, sorted(n for n in os.listdir(states) if n.startswith("v1.tmp-"))


def test_sigkill_during_write_leaves_old_state_and_rerun_recovers(
    chunks: Path,
    tmp_path: Path,
    cli: Callable[..., CliResult],
    cli_popen: Callable[..., subprocess.Popen[bytes]],
    digest: Callable[[Path], dict[str, str]],
) -> None:
    states = tmp_path / "states"
    # A wide model (2 x 2048 hidden, ~17 MB of weights) keeps the write window open long enough
    # to catch it by polling for the temporary folder; small chunks keep the training short.
    small = []
    for k in range(2):
        with np.load(chunks / f"train-{k}.npz") as npz:
            np.savez(tmp_path / f"small-{k}.npz", x=npz["x"][:64], y=npz["y"][:64])
        small.append(tmp_path / f"small-{k}.npz")
    result = cli(
        "update",
        "--data",
        small[0],
        "--next-state",
        states / "v0",
        "--method",
        "finetune",
        "--hidden",
        "2048,2048",
        "--epochs",
        "1",
    )
    assert result.code == 0, result.describe()
    before = digest(states / "v0")

    attempts = []
    for _ in range(4):
        code, tmp_dirs = _kill_while_writing(states, small[1], cli_popen)
        published = (states / "v1").exists()
        attempts.append((code, tmp_dirs, published))
        if code == -signal.SIGKILL and tmp_dirs and not published:
            break  # the kill landed between creating v1.tmp-* and publishing v1
        # Missed the window (finished first, or killed after the rename): clean up and retry.
        for name in os.listdir(states):
            if name.startswith("v1"):
                path = states / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        pytest.fail(f"never killed the writer mid-write: {attempts}")

    # The old state is untouched and loadable; v1 does not exist, not even half.
    assert digest(states / "v0") == before
    assert not os.path.lexists(states / "v1")
    assert (states / "v1.lock").exists(), "the dead writer's lock should still be there"
    evaluated = cli("evaluate", "--state", states / "v0", "--data", chunks / "test-0.npz")
    assert evaluated.code == 0, evaluated.describe()
    missing = cli("evaluate", "--state", states / "v1", "--data", chunks / "test-0.npz")
    assert missing.code == 1 and missing.err.startswith("ricordo: error:"), missing.describe()
    listed = cli("list", states)
    assert listed.code == 0, listed.describe()
    assert [line.split()[0] for line in listed.out.splitlines()] == ["v0"]

    # Rerunning the same job takes over the stale lock, removes the dead writer's debris and
    # publishes a complete v1 (run in this process: same code path, one process start less).
    rerun = cli(
        "update",
        "--data",
        small[1],
        "--state",
        states / "v0",
        "--next-state",
        states / "v1",
    )
    assert rerun.code == 0, rerun.describe()
    assert sorted(os.listdir(states)) == ["v0", "v1"]
    assert digest(states / "v0") == before
    evaluated = cli("evaluate", "--state", states / "v1", "--data", chunks / "test-1.npz")
    assert evaluated.code == 0, evaluated.describe()
    manifest = json.loads((states / "v1" / "manifest.json").read_text())
    assert manifest["parent"] == str(states / "v0")
    assert manifest["meta"]["updates"] == 2


# ------------------------------------------------------------------------------------------------
# a chain of update processes: ER remembers, finetune forgets


def test_er_chain_of_processes_beats_finetune_chain(
    er_chain: Path,
    finetune_chain: Path,
    chunks: Path,
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    accuracy = {}
    for name, chain in (("er", er_chain), ("finetune", finetune_chain)):
        out = tmp_path / f"{name}.json"
        result = cli(
            "evaluate",
            "--state",
            chain / "v4",
            "--data",
            chunks / "test-all.npz",
            "--output",
            out,
        )
        assert result.code == 0, result.describe()
        metrics = json.loads(out.read_text())
        assert metrics["samples"] == 360
        assert f"accuracy {metrics['accuracy']:.4f}" in result.out
        accuracy[name] = metrics["accuracy"]

        # Each job continued the previous one: parents, update counts and classes add up.
        seen: set[int] = set()
        for k in range(5):
            manifest = json.loads((chain / f"v{k}" / "manifest.json").read_text())
            assert manifest["parent"] == (None if k == 0 else str(chain / f"v{k - 1}"))
            assert manifest["meta"]["method"] == name
            assert manifest["meta"]["updates"] == k + 1
            with np.load(chunks / f"train-{k}.npz") as npz:
                seen |= {int(c) for c in np.unique(npz["y"])}
            assert manifest["meta"]["seen_classes"] == sorted(seen)
            # One summary line per job on stdout: no progress bar when it is not a terminal.
            out = (chain / f"update-{k}.out").read_text()
            assert out.startswith(f"update {k} ({name})") and out.count("\n") == 1, out
        history = json.loads((chain / "v4" / "history.json").read_text())
        assert [record["update"] for record in history] == [0, 1, 2, 3, 4]
        assert {record["config"]["epochs"] for record in history} == {20}

    # Class-incremental digits: finetune keeps only the last chunk's two classes (~0.2), ER with a
    # 200-sample memory keeps most of all ten (~0.85-0.9).
    assert accuracy["finetune"] < 0.35, accuracy
    assert accuracy["er"] > 0.75, accuracy
    assert accuracy["er"] > accuracy["finetune"] + 0.3, accuracy


# ------------------------------------------------------------------------------------------------
# continuing in a new process equals continuing in the same process


def test_new_processes_continue_bit_for_bit_like_one_process(
    er_chain: Path,
    chunks: Path,
    tmp_path: Path,
    cli: Callable[..., CliResult],
    cli_proc: Callable[..., CliResult],
) -> None:
    test_all = chunks / "test-all.npz"
    ids_file, proba_file = tmp_path / "ids.npy", tmp_path / "proba.npy"
    result = cli_proc(
        "predict", "--state", er_chain / "v2", "--data", test_all, "--output", ids_file
    )
    assert result.code == 0, result.describe()
    result = cli(
        "predict",
        "--state",
        er_chain / "v2",
        "--data",
        test_all,
        "--output",
        proba_file,
        "--probabilities",
    )
    assert result.code == 0, result.describe()

    # The same three updates in this one process, never saved in between.
    updater = Updater(
        UpdateConfig(method="er", memory_size=200, epochs=20, lr=0.05, seed=0, progress=False)
    )
    for k in range(3):
        updater.update(load_data(chunks / f"train-{k}.npz"))
    with np.load(test_all) as npz:
        x = npz["x"]

    ids = np.load(ids_file, allow_pickle=False)
    assert ids.shape == (len(x),)
    np.testing.assert_array_equal(ids, updater.predict(x).numpy())
    proba = np.load(proba_file, allow_pickle=False)
    assert proba.dtype == np.float32
    expected = updater.predict_proba(x).numpy()
    assert proba.shape == expected.shape
    assert proba.tobytes() == expected.tobytes(), "probabilities differ (not bit for bit)"

    # Weights and rehearsal memory are the same bits too.
    stored = load_file(str(er_chain / "v2" / "model.safetensors"))
    own = updater.model.state_dict()
    assert sorted(stored) == sorted(own)
    for name, tensor in own.items():
        assert torch.equal(stored[name], tensor), name
    reloaded = Updater.load(str(er_chain / "v2"))
    assert reloaded.memory is not None and updater.memory is not None
    assert len(reloaded.memory) == len(updater.memory) == 200
    for field, tensor in updater.memory.get().items():
        assert torch.equal(reloaded.memory.get()[field], tensor), field


# ------------------------------------------------------------------------------------------------
# no pickle anywhere: every state file is JSON or safetensors

_SAFETENSORS_DTYPES = {
    "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64",
    "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2",
}  # fmt: skip


def _check_safetensors(path: Path) -> None:
    raw = path.read_bytes()
    assert len(raw) >= 8, f"{path} is too short for safetensors"
    (n,) = struct.unpack("<Q", raw[:8])
    assert 8 + n <= len(raw), f"{path}: header length {n} runs past the file"
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    assert isinstance(header, dict), path
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            assert all(isinstance(v, str) for v in entry.values()), path
            continue
        assert entry["dtype"] in _SAFETENSORS_DTYPES, (path, name, entry)
        begin, stop = entry["data_offsets"]
        assert 0 <= begin <= stop, (path, name)
        end = max(end, stop)
    assert 8 + n + end == len(raw), f"{path}: tensor data does not fill the file exactly"


def _check_state_files(state: Path) -> int:
    manifest = json.loads((state / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())
    assert on_disk == sorted([*manifest["files"], "manifest.json"]), "unlisted or missing files"
    for rel in on_disk:
        path = state / rel
        if rel.endswith(".json"):
            json.loads(path.read_bytes().decode("utf-8"))
        elif rel.endswith(".safetensors"):
            _check_safetensors(path)
        else:
            pytest.fail(f"{rel} in {state} is neither JSON nor safetensors")
    return len(on_disk)


def test_states_hold_only_json_and_safetensors(
    er_chain: Path,
    finetune_chain: Path,
    chunks: Path,
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    # joint keeps every sample it saw in its memory: the largest state of the three methods.
    result = cli(
        "update",
        "--data",
        chunks / "train-0.npz",
        "--next-state",
        tmp_path / "joint",
        "--method",
        "joint",
        "--epochs",
        "1",
    )
    assert result.code == 0, result.describe()
    states = [er_chain / f"v{k}" for k in range(5)]
    states += [finetune_chain / "v4", tmp_path / "joint"]
    for state in states:
        assert _check_state_files(state) >= 5, state
    # The ER states carry the memory as safetensors shards plus a JSON index.
    assert (er_chain / "v4" / "memory" / "index.json").is_file()
    assert list((er_chain / "v4" / "memory").glob("shard-*.safetensors"))
