"""--strategy ddp: two CPU processes (gloo) train what one process trains, and rank 0 writes it.

The two-process run is a real `ricordo update --strategy ddp --devices 2` (Fabric starts rank 1
by re-running the command), compared with the same update in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from ricordo.config import UpdateConfig
from ricordo.engine.backend import make_backend
from ricordo.engine.distributed import (
    average_gradients,
    global_rows,
    mean_across_ranks,
    shard,
    unshard,
)
from ricordo.engine.loop import _check_data_parallel
from ricordo.errors import ConfigError
from ricordo.methods.base import METHODS
from ricordo.updater import Updater

OPTIONS = {"method": "er", "memory_size": 100, "epochs": 2, "seed": 3, "batch_size": 32}
RICORDO = Path(sys.executable).with_name("ricordo")


def _digits(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Digits 0-4: 700 training rows as an .npz chunk, the rest as test rows."""
    data = load_digits()
    keep = data.target < 5
    x = (data.data[keep] / 16).astype("float32")
    y = data.target[keep]
    chunk = folder / "train.npz"
    np.savez(chunk, x=x[:700], y=y[:700])
    return chunk, x[700:], y[700:]


def _launch_env() -> dict[str, str]:
    """The environment for a 2-process run: Fabric must launch rank 1 itself, so no cluster
    variables (SLURM, torchrun) leak in; one thread per rank on a shared 2-core machine."""
    cluster = ("MASTER_", "LOCAL_", "RANK", "WORLD_SIZE", "GROUP_RANK", "SLURM_", "TORCHELASTIC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(cluster)}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _accuracy(updater: Updater, x: np.ndarray, y: np.ndarray) -> float:
    return float((updater.predict(torch.from_numpy(x)).numpy() == y).mean())


MEMORY_FILES = ("index.json", "shard-00000.safetensors", "state.safetensors")


def _assert_same_state(
    ddp: Path,
    one: Path,
    identical: tuple[str, ...] = MEMORY_FILES,
    close: tuple[str, ...] = ("model",),
) -> None:
    """The state two ranks wrote (``ddp``) is one process's (``one``): the memory files named in
    ``identical`` byte for byte (the ranks inserted whole global batches with the same
    generators), every tensor of the ``close`` files within float noise (averaged shard
    gradients are the global batch's gradient, summed in another order)."""
    for name in identical:
        saved = (ddp / "memory" / name).read_bytes()
        assert saved == (one / "memory" / name).read_bytes(), name
    for name in close:
        saved, reference = (
            load_file(ddp / f"{name}.safetensors"),
            load_file(one / f"{name}.safetensors"),
        )
        assert saved.keys() == reference.keys(), name
        for key, value in reference.items():
            torch.testing.assert_close(saved[key], value, atol=1e-5, rtol=1e-4)


def test_two_process_er_update_equals_one_process(tmp_path: Path) -> None:
    chunk, x_test, y_test = _digits(tmp_path)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    env = _launch_env()
    command = [str(RICORDO), "update", "--data", str(chunk), "--next-state"]
    ddp = [*command, str(tmp_path / "ddp"), *flags, "--accelerator", "cpu", "--no-progress"]
    ddp += ["--strategy", "ddp", "--devices", "2"]
    run = subprocess.run(ddp, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    # Rank 0 alone reports (and writes): one result line, not two.
    assert run.stdout.count("update 0 (er): 700 samples") == 1, run.stdout

    one = Updater(accelerator="cpu", progress=False, **OPTIONS)
    one.update(torch.from_numpy(np.load(chunk)["x"]), torch.from_numpy(np.load(chunk)["y"]))
    one.save(str(tmp_path / "one"))

    two = Updater.load(str(tmp_path / "ddp"))  # a valid state: every checksum verified
    assert two.config.strategy == "ddp" and two.config.devices == 2
    _assert_same_state(tmp_path / "ddp", tmp_path / "one")
    accuracy = _accuracy(two, x_test, y_test)
    assert accuracy > 0.4  # 5 classes: chance is 0.2 (two epochs at the default lr)
    assert abs(accuracy - _accuracy(one, x_test, y_test)) <= 0.02


def test_unverified_methods_are_refused_under_ddp() -> None:
    config = UpdateConfig(strategy="ddp", devices=2)

    class Plugin(METHODS.get("er")):  # type: ignore[misc]
        """A plugin's subclass of ER: verification is not inherited."""

        name = "my-er"

    with pytest.raises(ConfigError, match="^--strategy ddp: method 'my-er' is not verified"):
        _check_data_parallel(object.__new__(Plugin), config)
    # Every built-in method is verified (tests/test_ddp_methods.py).
    for name in METHODS.names():
        _check_data_parallel(object.__new__(METHODS.get(name)), config)


def test_several_devices_or_nodes_need_ddp() -> None:
    with pytest.raises(ConfigError, match="^--num-nodes: one process trains on one device"):
        make_backend(UpdateConfig(num_nodes=2, accelerator="cpu"))
    with pytest.raises(ConfigError, match="^--num-nodes 0 is invalid; expected an integer >= 1"):
        UpdateConfig(num_nodes=0)
    with pytest.raises(ConfigError, match="^--strategy ddp runs through Lightning Fabric"):
        make_backend(UpdateConfig(strategy="ddp", backend="torch"))
    for sharded in ("fsdp", "deepspeed_stage_3"):
        with pytest.raises(ConfigError, match=f"^--strategy {sharded} shards the model across"):
            make_backend(UpdateConfig(strategy=sharded, devices=2, accelerator="cpu"))


def test_shards_cover_a_batch_once_and_one_process_keeps_it() -> None:
    rows = torch.arange(7)
    parts = [shard(rows, r, 2) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    assert [len(p) for p in parts] == [4, 3]
    assert shard(rows, 0, 1) is rows
    assert mean_across_ranks(torch.tensor(1.5), 1) == 1.5


@pytest.mark.parametrize("method", ["er-ace", "a-gem"])
def test_two_process_second_update_equals_one_process(tmp_path: Path, method: str) -> None:
    """Methods whose replay starts to matter in a second update. ER-ACE masks the seen classes
    absent from the batch: under --strategy ddp the mask is the global batch's (shards of 8 rows
    from 10 classes often miss a class the global batch has). A-GEM projects the DDP-averaged
    gradient against a reference gradient every rank takes on the whole drawn batch (12 of
    this run's 19 steps project in one process)."""
    data = load_digits()
    x, y = (data.data / 16).astype("float32"), data.target
    first, second = y < 5, np.arange(len(y)) >= 1000
    options = {"method": method, "memory_size": 100, "epochs": 1, "seed": 3, "batch_size": 16}
    start = Updater(accelerator="cpu", progress=False, num_classes=10, **options)
    start.update(torch.from_numpy(x[first][:200]), torch.from_numpy(y[first][:200]))
    start.save(str(tmp_path / "first"))
    chunk = tmp_path / "second.npz"
    np.savez(chunk, x=x[second][:300], y=y[second][:300])

    env = _launch_env()
    ddp = [str(RICORDO), "update", "--state", str(tmp_path / "first"), "--data", str(chunk)]
    ddp += ["--next-state", str(tmp_path / "ddp"), "--accelerator", "cpu", "--no-progress"]
    ddp += ["--strategy", "ddp", "--devices", "2"]
    run = subprocess.run(ddp, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count(f"update 1 ({method}): 300 samples") == 1, run.stdout

    one = Updater.load(str(tmp_path / "first"))
    one.update(torch.from_numpy(x[second][:300]), torch.from_numpy(y[second][:300]))
    one.save(str(tmp_path / "one"))
    _assert_same_state(tmp_path / "ddp", tmp_path / "one")


def test_two_process_der_pp_update_equals_one_process(tmp_path: Path) -> None:
    """DER++ replays two sharded draws and stores the logits of the whole global batch (gathered
    from the ranks): the memory takes the same rows, their logits within float noise."""
    chunk, _, _ = _digits(tmp_path)
    options = {**OPTIONS, "method": "der++", "epochs": 1}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    ddp = [str(RICORDO), "update", "--data", str(chunk), "--next-state", str(tmp_path / "ddp")]
    ddp += [*flags, "--accelerator", "cpu", "--no-progress", "--strategy", "ddp", "--devices", "2"]
    run = subprocess.run(ddp, env=_launch_env(), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]

    one = Updater(accelerator="cpu", progress=False, **options)
    one.update(torch.from_numpy(np.load(chunk)["x"]), torch.from_numpy(np.load(chunk)["y"]))
    one.save(str(tmp_path / "one"))
    # The shard's rows, labels and widths are equal, its logits close.
    identical = ("index.json", "state.safetensors")
    close = ("memory/shard-00000", "model")
    _assert_same_state(tmp_path / "ddp", tmp_path / "one", identical, close)


def _collectives(rank: int, world: int, store: str, out: str) -> None:
    """One rank of test_unshard_and_gradient_averaging_across_two_processes."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world
    )
    try:
        results = {}
        for rows in (7, 8, 1):  # uneven, even, and a batch one rank has no row of
            batch = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3)
            part = shard(batch, rank, world)
            results[f"unshard{rows}"] = unshard(part, global_rows(len(part), world), world)
        # Rank 0's gradient reaches a, rank 1's reaches a and b, no rank's reaches c.
        a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
        a.grad = torch.full((2,), 1.0 + rank)
        if rank == 1:
            b.grad = torch.full((2,), 4.0)
        average_gradients([a, b, c], world)
        results["a"], results["b"] = a.grad, b.grad
        results["c_is_none"] = torch.tensor(c.grad is None)
        save_file({k: v.contiguous() for k, v in results.items()}, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_unshard_and_gradient_averaging_across_two_processes(tmp_path: Path) -> None:
    """unshard inverts shard for uneven shares (7 rows: 4 + 3; 1 row: 1 + 0), and
    average_gradients gives the ranks' mean, zeros standing in for a rank's missing gradient,
    and leaves a gradient no rank has as None."""
    out = tmp_path / "result"
    torch.multiprocessing.spawn(
        _collectives, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True
    )
    for rank in range(2):
        results = load_file(f"{out}.{rank}")
        for rows in (7, 8, 1):
            expected = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3)
            assert torch.equal(results[f"unshard{rows}"], expected)
        assert torch.equal(results["a"], torch.full((2,), 1.5))
        assert torch.equal(results["b"], torch.full((2,), 2.0))
        assert bool(results["c_is_none"])
