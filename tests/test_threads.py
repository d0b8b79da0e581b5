"""Training threads (issue 8): the default (``threads=None``, ``auto``) does not collapse on a busy
machine: one thread for small models, else the idle cores, never more than torch's setting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.engine import backend, loop
from ricordo.engine.backend import SMALL_STEP_MACS, resolve_threads, step_macs

DIGITS_MLP = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.Linear(128, 10))
LARGE_MLP = nn.Sequential(nn.Linear(64, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 10))


@pytest.fixture
def torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def machine(monkeypatch: pytest.MonkeyPatch, cores: int, others_running: int) -> None:
    monkeypatch.setattr(backend, "_usable_cores", lambda: cores)
    monkeypatch.setattr(backend, "_other_runnable", lambda: others_running)


def test_step_macs_counts_linear_weights_per_row_and_conv_weights_per_position() -> None:
    assert step_macs(DIGITS_MLP, (100, 64), 32) == 32 * (64 * 256 + 256 * 128 + 128 * 10)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    assert step_macs(conv, (10, 3, 32, 32), 4) == 4 * (8 * 3 * 3 * 3 * 32 * 32 + 8 * 2)


@pytest.mark.parametrize("others", [0, 1, 7])
def test_small_models_train_on_one_thread_however_idle_the_machine(
    monkeypatch: pytest.MonkeyPatch, torch_threads: None, others: int
) -> None:
    torch.set_num_threads(4)
    machine(monkeypatch, cores=8, others_running=others)
    assert step_macs(DIGITS_MLP, (290, 64), 32) < SMALL_STEP_MACS
    assert resolve_threads(None, DIGITS_MLP, (290, 64), 32) == 1


@pytest.mark.parametrize(
    ("cores", "others", "torch_setting", "expected"),
    [
        (8, 0, 4, 4),  # idle: torch's setting (its default, or a sweep worker's share)
        (8, 6, 4, 2),  # six other processes running: the two idle cores
        (2, 1, 2, 1),  # the case: 2 cores, one busy
        (2, 5, 2, 1),  # overloaded: still one thread
    ],
)
def test_large_models_use_the_idle_cores_at_most_torch_setting(
    monkeypatch: pytest.MonkeyPatch,
    torch_threads: None,
    cores: int,
    others: int,
    torch_setting: int,
    expected: int,
) -> None:
    torch.set_num_threads(torch_setting)
    machine(monkeypatch, cores=cores, others_running=others)
    assert step_macs(LARGE_MLP, (290, 64), 32) >= SMALL_STEP_MACS
    assert resolve_threads(None, LARGE_MLP, (290, 64), 32) == expected


def test_an_explicit_thread_count_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cores=2, others_running=5)
    assert resolve_threads(3, DIGITS_MLP, (290, 64), 32) == 3


def test_other_runnable_counts_the_running_processes_but_this_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_open = open
    loadavg = tmp_path / "loadavg"

    def fake_open(path: object, *args: Any, **kwargs: Any) -> Any:
        return real_open(loadavg if path == "/proc/loadavg" else path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", fake_open)
    loadavg.write_text("0.50 7.26 31.65 3/120 13786\n")  # 3 running: this process and 2 others
    assert backend._other_runnable() == 2
    loadavg.write_text("210.36 231.13 99.36 1/89 6995\n")  # a stale 1-minute average is ignored
    assert backend._other_runnable() == 0


def test_an_update_trains_the_digits_mlp_on_one_thread_by_default(
    monkeypatch: pytest.MonkeyPatch, torch_threads: None, digits_scenario: Scenario
) -> None:
    """Before issue 8 an unset thread count left torch's (here 2), which collapses when busy."""
    torch.set_num_threads(2)
    machine(monkeypatch, cores=2, others_running=0)
    seen: list[int] = []
    train = loop._train_update

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "_train_update", spy)
    updater = Updater(method="er", memory_size=50, epochs=1, progress=False)
    updater.update(digits_scenario.train[0])
    assert seen == [1]
    assert torch.get_num_threads() == 2  # restored after training
    updater.update(digits_scenario.train[1], threads=2)
    assert seen == [1, 2]
