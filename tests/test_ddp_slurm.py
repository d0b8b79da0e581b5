"""--strategy ddp launched the way SLURM launches it: `srun` starts every task itself.

No SLURM here: the test starts the two tasks of a one-node `srun --ntasks-per-node 2` job
with the variables srun gives them (and none of torchrun's). They rendezvous only if Fabric
took its SLURM path: rank from SLURM_PROCID, world from SLURM_NTASKS, port from SLURM_JOB_ID
(Fabric's own launcher would pick a random port and start a child rank per process instead).
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.test_ddp import OPTIONS, RICORDO, _assert_same_state, _digits, _launch_env

from ricordo.cli import main
from ricordo.config import UpdateConfig
from ricordo.engine.backend import SLURM_FIX, make_backend
from ricordo.errors import ConfigError
from ricordo.updater import Updater


def _free_job_id() -> str:
    """A SLURM_JOB_ID whose port is free: Fabric listens on 15000 + its last 4 digits."""
    for port in random.sample(range(15000, 25000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"7{port - 15000:04d}"
    raise RuntimeError("no free port in 15000-24999")


def _srun_env(rank: int, tasks: int, job_id: str) -> dict[str, str]:
    """What `srun --nodes 1 --ntasks-per-node {tasks}` gives task `rank` (Fabric reads these)."""
    env = _launch_env()  # no MASTER_*, torchrun or outer SLURM variables
    env.update(
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="ricordo-test",  # not bash/interactive: those turn Fabric's SLURM off
        SLURM_NTASKS=str(tasks),
        SLURM_NTASKS_PER_NODE=str(tasks),
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_NODELIST="127.0.0.1",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
    )
    return env


def test_two_slurm_tasks_write_what_one_process_writes(tmp_path: Path) -> None:
    chunk, _, _ = _digits(tmp_path)
    options = {**OPTIONS, "epochs": 1}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    command = [str(RICORDO), "update", "--data", str(chunk), "--next-state", str(tmp_path / "ddp")]
    command += [*flags, "--accelerator", "cpu", "--no-progress", "--strategy", "ddp"]
    command += ["--devices", "2"]
    job_id = _free_job_id()
    tasks = [
        subprocess.Popen(
            command,
            env=_srun_env(rank, 2, job_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    # The one-process reference trains here while the two tasks run.
    one = Updater(accelerator="cpu", progress=False, **options)
    one.update(torch.from_numpy(np.load(chunk)["x"]), torch.from_numpy(np.load(chunk)["y"]))
    one.save(str(tmp_path / "one"))
    outputs = []
    for task in tasks:
        try:
            outputs.append(task.communicate(timeout=120))
        finally:
            task.kill()
    for task, (_, stderr) in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, stderr[-2000:]
    # Each task took its rank from SLURM_PROCID; rank 0 alone reports (and writes).
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1][1], outputs[1][1][-2000:]
    stdout = outputs[0][0] + outputs[1][0]
    assert stdout.count("update 0 (er): 700 samples") == 1, stdout
    assert outputs[1][0] == "", outputs[1][0]

    two = Updater.load(str(tmp_path / "ddp"))  # a valid state: every checksum verified
    assert two.config.strategy == "ddp" and two.config.devices == 2
    _assert_same_state(tmp_path / "ddp", tmp_path / "one")


def test_slurm_tasks_other_than_devices_times_nodes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 SLURM tasks for --devices 2: Fabric accepts it (it checks tasks per node and nodes,
    not the task count) and the 2 ranks then wait 30 minutes for a third; refused instead,
    before any process group, with the fix. Run in this process (as rank 0 of the job): the
    CLI's own exit path, without a second Lightning import."""
    from lightning.fabric.strategies import ddp

    def no_process_group(*args: object, **kwargs: object) -> None:
        raise AssertionError("the process group was started: the ranks would wait 30 minutes")

    monkeypatch.setattr(ddp, "_init_dist_connection", no_process_group)
    chunk, _, _ = _digits(tmp_path)
    for key, value in _srun_env(0, 3, "71234").items():
        if key.startswith("SLURM_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")  # per node right, 3 tasks in all
    args = ["update", "--data", str(chunk), "--next-state", str(tmp_path / "s")]
    args += ["--accelerator", "cpu", "--no-progress", "--strategy", "ddp", "--devices", "2"]
    monkeypatch.setattr(sys, "argv", ["ricordo", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "ricordo: error: --strategy ddp: SLURM started 3 tasks but --devices 2 x "
        f"--num-nodes 1 = 2; {SLURM_FIX}"
    ]
    assert not (tmp_path / "s").exists()

    # Fabric's own refusals under SLURM name our flags, not its Python arguments, and the fix.
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NNODES", "2")  # a 2-node job, --num-nodes left at 1
    with pytest.raises(ConfigError) as refused:
        make_backend(UpdateConfig(strategy="ddp", devices=2, accelerator="cpu"))
    assert str(refused.value) == (
        "Lightning Fabric rejected the device options: You set `--num-nodes 1` in Lightning, "
        "but the number of nodes configured in SLURM `--nodes=2` does not match. HINT: Set "
        f"`--num-nodes 2`; {SLURM_FIX}"
    )
