"""--strategy ddp for every built-in method: two CPU ranks (gloo, started by ``torchrun``) write
the state one process writes on the same seed and data.

One ``torchrun --nproc-per-node 2`` launch runs two updates (digits 0-4, then 5-9) of each
method below (tests/fixtures/ddp_methods.py), and the same script runs them in one process
alongside. finetune, er, er-ace, der, der++ and a-gem are compared through the CLI in
tests/test_ddp.py. Batches and replayed batches have even sizes, so each rank's shard is half
of the global batch and the averaged gradient is the global batch's: the memories must hold the
same rows (files byte for byte where they hold no float computed by the model) and every saved
tensor must agree within float noise (sums in another order).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.test_ddp import _launch_env

from ricordo.updater import Updater

WORKER = Path(__file__).parent / "fixtures" / "ddp_methods.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Methods with a penalty, a teacher, EMA models, cached features, a bias stage, a memory-sized
# fit or a herded memory; and the PEFT methods on a tiny ViT (their gradients are averaged by
# the loop, L2P's batch vote counts the global batch).
METHODS = [
    "ewc",
    "online-ewc",
    "si",
    "lwf",
    "cls-er",
    "pod-er",
    "super-er",
    "icarl",
    "bic",
    "gdumb",
    "joint",
    "offline-er",
    "rd",
    "er@herding",
    # Training options that decide from the step's batch, on the global batch on every rank:
    # EB stops both runs at the same step (tests/optim/test_eb.py's noisy problem), selective
    # backprop keeps the same rows.
    "finetune+eb",
    "er+sb-loss",
    "er+sb-gm",
]
PEFT = ["s-prompts", "color", "s-lora", "l2p", "l2l"]
TOLERANCE = 1e-5  # measured: at most 8e-7 on any saved tensor


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory, tiny_vit_path: str) -> Iterator[Path]:
    """OUT/one/METHOD and OUT/ddp/METHOD: each method's state after two updates, in one
    process and with two ranks (both launched at once)."""
    out = tmp_path_factory.mktemp("ddp-methods")
    runs = [*METHODS, *PEFT, "er+cabs"]
    env = _launch_env()
    one = [sys.executable, str(WORKER), str(out / "one"), "--backbone", tiny_vit_path, *runs]
    ddp = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(WORKER)]
    ddp += [str(out / "ddp"), "--ddp", "--backbone", tiny_vit_path, *runs]
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in (one, ddp)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    yield out


@pytest.mark.parametrize("run", METHODS + PEFT)
def test_two_ranks_write_the_state_of_one_process(states: Path, run: str) -> None:
    one, ddp = states / "one" / run, states / "ddp" / run
    Updater.load(str(ddp))  # a valid state: every checksum verified
    files = sorted(p.relative_to(one) for p in one.rglob("*.safetensors"))
    assert files == sorted(p.relative_to(ddp) for p in ddp.rglob("*.safetensors"))
    assert files, "no tensors saved"
    for name in files:
        saved, reference = load_file(ddp / name), load_file(one / name)
        assert saved.keys() == reference.keys(), name
        for key, value in reference.items():
            torch.testing.assert_close(
                saved[key], value, atol=TOLERANCE, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}"
            )
    # The memory took the same rows in the same slots (its index: sizes, policy counters).
    for name in ("memory/index.json", "memory/state.safetensors"):
        if (one / name).exists():
            assert (ddp / name).read_bytes() == (one / name).read_bytes(), name


def _train_records(state: Path) -> list[dict]:
    return [update["train"] for update in json.loads((state / "history.json").read_text())]


def test_eb_stops_every_rank_where_one_process_stops(states: Path) -> None:
    one_process, two_ranks = (_train_records(states / w / "finetune+eb") for w in ("one", "ddp"))
    for one, ddp in zip(one_process, two_ranks, strict=True):
        assert one["stop_reason"] == ddp["stop_reason"] == "eb"
        assert one["stopped_step"] == ddp["stopped_step"] < 60 * 5


def test_cabs_batch_sizes_follow_the_global_batch_on_every_rank(states: Path) -> None:
    """CABS sizes each step from the gradient variance of the global batch, which every rank
    measures alike (so the ranks agree on every size; otherwise the run would hang). Its sizes
    are rounded from float statistics, so after a few steps float noise between one process
    and two can pick a size one row apart: the runs are compared as close, not equal."""
    one, ddp = (_train_records(states / w / "er+cabs") for w in ("one", "ddp"))
    Updater.load(str(states / "ddp" / "er+cabs"))
    sizes, reference = ddp[-1]["batch_sizes"], one[-1]["batch_sizes"]
    assert max(sizes) > min(sizes) == 8  # the rule grew the batch from --cabs-min-batch
    assert abs(len(sizes) - len(reference)) <= 2
    assert abs(sum(sizes) / len(sizes) - sum(reference) / len(reference)) < 1.0
