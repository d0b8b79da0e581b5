"""The memory-fit recipe GDumb and RD share: GDumb's SGDR schedule (checked against torch's
CosineAnnealingWarmRestarts as Mammoth drives it), applied by the engine epoch by epoch, and
``fitting_epochs`` instead of --epochs."""

from __future__ import annotations

import math

import pytest
import torch

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods.memory_fit import MemoryFitParams, sgdr_factor


def mammoth_schedule(epochs: int, max_lr: float, min_lr: float) -> list[float]:
    """Mammoth's GDumb fit_buffer: epoch 0 at max/10, epoch 1 at max, then scheduler.step()."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=1, T_mult=2, eta_min=min_lr
    )
    lrs = []
    for epoch in range(epochs):
        if epoch == 0:
            optimizer.param_groups[0]["lr"] = max_lr * 0.1
        elif epoch == 1:
            optimizer.param_groups[0]["lr"] = max_lr
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_sgdr_is_mammoths_schedule_for_256_epochs() -> None:
    ours = [0.05 * sgdr_factor(e, 256, 0.01) for e in range(256)]
    assert ours == pytest.approx(mammoth_schedule(256, 0.05, 0.0005), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("epochs", [3, 5, 20, 100, 300])
def test_sgdr_ends_its_last_cycle_at_the_final_epoch(epochs: int) -> None:
    factors = [sgdr_factor(e, epochs, 0.01) for e in range(epochs)]
    assert factors[0] == 0.1 and factors[1] == 1.0
    assert all(0.01 <= f <= 1.0 for f in factors)
    # The last restart (factor 1) begins a cycle that decreases to the final epoch.
    last = max(e for e, f in enumerate(factors) if f == 1.0)
    tail = factors[last:]
    assert all(a > b for a, b in zip(tail, tail[1:], strict=False))
    if epochs >= 5:
        assert factors[-1] < 0.3  # it gets close to the floor, never stops at a high rate


def test_constant_schedule_is_the_update_lr() -> None:
    params = MemoryFitParams(schedule="constant")
    assert [params.learning_rate(e, 10, 0.05) for e in range(10)] == [0.05] * 10


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fitting_epochs": 0}, "fitting_epochs=0 must be >= 1"),
        ({"schedule": "cosine"}, "schedule='cosine' must be one of sgdr, constant"),
        ({"min_lr_ratio": 2.0}, r"min_lr_ratio=2.0 must be in \[0, 1\]"),
        ({"min_lr_ratio": math.nan}, "min_lr_ratio=nan"),
    ],
)
@pytest.mark.parametrize("method", ["gdumb", "rd"])
def test_bad_fit_parameters_are_rejected(method: str, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Updater(method=method, params=values, memory_size=10)


@pytest.mark.parametrize("method", ["gdumb", "rd"])
def test_engine_runs_fitting_epochs_at_the_scheduled_rates(
    method: str, digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ricordo.engine import loop

    rates: list[float] = []
    make = loop.make_optimizer

    def recording(model: torch.nn.Module, config: object, *extra: object) -> torch.optim.Optimizer:
        optimizer = make(model, config, *extra)  # type: ignore[arg-type]
        optimizer.register_step_pre_hook(lambda o, *_: rates.append(o.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setattr(loop, "make_optimizer", recording)
    # schedule=sgdr: GDumb's default; rd's is Renate's constant --lr.
    updater = Updater(
        method=method, params={"fitting_epochs": 7, "schedule": "sgdr"}, epochs=2, lr=0.1,
        memory_size=100, hidden=(32,), progress=False,
    )  # fmt: skip
    updater.update(digits_scenario.train[0])
    steps = math.ceil(100 / 32)  # the memory is full: 100 rows, batches of 32
    assert updater.history[-1]["train"]["epochs"] == 7
    assert updater.history[-1]["train"]["steps"] == 7 * steps
    rates = rates[-7 * steps :]  # RD's expert trains first, at --lr, with its own optimizer
    expected = [0.1 * sgdr_factor(e, 7, 0.01) for e in range(7) for _ in range(steps)]
    assert rates == pytest.approx(expected)


def test_fitting_epochs_none_uses_the_update_epochs(digits_scenario: Scenario) -> None:
    updater = Updater(
        method="gdumb", params={"fitting_epochs": None}, epochs=3, memory_size=100,
        hidden=(32,), progress=False,
    )  # fmt: skip
    updater.update(digits_scenario.train[0])
    assert updater.history[-1]["train"]["epochs"] == 3
