"""Shared checks for the method tests: save/reload round trips, continuing in a new process,
and a hand-built UpdateContext."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.methods import UpdateContext

FAST = dict(epochs=3, lr=0.1, memory_size=100, progress=False, hidden=(64,))


def make_context(
    updater: Updater,
    update_index: int,
    *,
    seen_classes: list[int] | None = None,
    chunk_classes: list[int] | None = None,
) -> UpdateContext:
    """A CPU context for calling a method's hooks by hand (generator seeded 0)."""
    assert updater.model is not None
    return UpdateContext(
        model=updater.model,
        config=updater.config,
        update_index=update_index,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seen_classes=updater.seen_classes if seen_classes is None else seen_classes,
        chunk_classes=[] if chunk_classes is None else chunk_classes,
    )


def train_two_updates(updater: Updater, scenario: Scenario) -> Updater:
    """Updates 0 and 1 of the scenario; returns the updater."""
    updater.update(scenario.train[0])
    updater.update(scenario.train[1])
    return updater


def save_and_reload(updater: Updater, scenario: Scenario, tmp_path: Path) -> Updater:
    """Train on updates 0 and 1, save to tmp_path/v1 and load it back."""
    train_two_updates(updater, scenario)
    updater.save(str(tmp_path / "v1"))
    return Updater.load(str(tmp_path / "v1"))


def assert_same_weights(a: Updater, b: Updater) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def assert_same_memory(a: Updater, b: Updater) -> None:
    assert a.memory is not None and b.memory is not None
    for field, value in a.memory.get().items():
        assert torch.equal(value, b.memory.get()[field])


def assert_same_method_tensors(a: Updater, b: Updater) -> None:
    ours, theirs = a.method.state_tensors(), b.method.state_tensors()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def assert_reload_continues_identically(
    updater: Updater,
    reloaded: Updater,
    scenario: Scenario,
    *,
    memory: str | None = "required",
    final_predictions: bool = False,
) -> None:
    """The reloaded updater predicts as the original, and both continue identically on update 2:
    same weights and (``memory="required"``, or ``"if_present"`` when the method has one) the
    same memory rows. ``final_predictions`` also compares the predictions after update 2."""
    x = scenario.test_all().x
    assert torch.equal(reloaded.predict_logits(x), updater.predict_logits(x))
    updater.update(scenario.train[2])
    reloaded.update(scenario.train[2])
    if final_predictions:
        assert torch.equal(reloaded.predict_logits(x), updater.predict_logits(x))
    assert_same_weights(updater, reloaded)
    if memory == "required" or (memory == "if_present" and updater.memory is not None):
        assert_same_memory(updater, reloaded)


_CONTINUE = """
import json
import sys
from safetensors.torch import save_file
from ricordo import Updater
from ricordo.data import load_builtin, make_scenario
train, test = load_builtin("digits")
scenario = make_scenario("class-incremental", train, test, updates=5, seed=0)
x = scenario.test_all().x
jobs = json.loads(open(sys.argv[1]).read())
for state, out in jobs["load"]:
    updater = Updater.load(state)
    before = updater.predict_logits(x)
    updater.update(scenario.train[2])
    save_file({"before": before, "after": updater.predict_logits(x)}, out)
if jobs["cli"]:  # last: the command sets this process's thread count
    from ricordo.cli import main
    for args in jobs["cli"]:
        sys.argv = ["ricordo", *args]
        try:
            main()
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise
"""


def assert_continues_identically_in_a_new_process(
    updaters: dict[str, Updater],
    scenario: Scenario,
    tmp_path: Path,
    *,
    cli: tuple[str, ...] = (),
    timeout: float = 120,
) -> None:
    """Save each (already trained) updater under tmp_path/name; one child process loads each,
    predicts, runs update 2 and predicts again: both predictions match this process's
    bit for bit. For the names in ``cli`` the child also runs update 2 with the ``ricordo
    update`` command (``ricordo.cli.main``) on the saved state, and the state it writes predicts
    as this process after update 2. One child for all: starting Python and torch is the slow
    part. Every mismatch is reported, by name. ``scenario`` must be digits class-incremental,
    5 updates, seed 0."""
    jobs: dict[str, list[list[str]]] = {"load": [], "cli": []}
    for name, updater in updaters.items():
        updater.save(str(tmp_path / name))
        jobs["load"].append([str(tmp_path / name), str(tmp_path / f"{name}.safetensors")])
    if cli:
        data = tmp_path / "chunk2.npz"
        chunk = scenario.train[2]
        np.savez(data, x=chunk.x.numpy(), y=chunk.y.numpy())
        for name in cli:
            state, next_state = tmp_path / name, tmp_path / f"{name}-cli-v2"
            jobs["cli"].append(
                ["update", "--state", str(state), "--next-state", str(next_state)]
                + ["--data", str(data)]
            )
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run(
        [sys.executable, "-c", _CONTINUE, str(tmp_path / "jobs.json")], check=True, timeout=timeout
    )
    x = scenario.test_all().x
    mismatches = []
    for name, updater in updaters.items():
        child = load_file(str(tmp_path / f"{name}.safetensors"))
        if not torch.equal(child["before"], updater.predict_logits(x)):
            mismatches.append(f"{name}: the loaded state predicts differently")
        updater.update(scenario.train[2])
        after = updater.predict_logits(x)
        if not torch.equal(child["after"], after):
            mismatches.append(f"{name}: update 2 in the child ends elsewhere")
        if name in cli and not torch.equal(
            Updater.load(str(tmp_path / f"{name}-cli-v2")).predict_logits(x), after
        ):
            mismatches.append(f"{name}: update 2 by the ricordo command ends elsewhere")
    assert not mismatches, mismatches
