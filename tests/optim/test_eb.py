"""The EB criterion (ricordo.optim.eb) and --early-stopping eb in update jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ricordo import UpdateConfig, Updater
from ricordo.data import ArrayDataset
from ricordo.engine.checkpoint import EpochEnd
from ricordo.errors import ConfigError
from ricordo.optim.eb import EBStopper, batch_eb, eb_from_grads, eb_per_layer, eb_statistic

FAST = {"progress": False, "threads": 1}

# ------------------------------------------------------------------------- the statistic


def test_the_statistic_matches_a_hand_computation() -> None:
    # Four rows, three coordinates; the third is 0 for every row (an always-zero input).
    g = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.5, 0.0], [2.0, 1.5, 0.0], [2.0, 2.0, 0.0]])
    # Column 1: mean 2, unbiased variance ((1)² + 1² + 0 + 0) / 3 = 2/3 -> 2² / (2/3) = 6.
    # Column 2: mean 2, unbiased variance (0 + 0.25 + 0.25 + 0) / 3 = 1/6 -> 2² / (1/6) = 24.
    # The paper (ε = 0): the zero-variance column is left out, D = 2: 1 - (4 / 2) * 30 = -59.
    assert eb_from_grads(g) == pytest.approx(-59.0, rel=1e-6)
    # cockpit (ε = 1e-5): every column counts, D = 3.
    expected = 1 - 4 / 3 * (4 / (2 / 3 + 1e-5) + 4 / (1 / 6 + 1e-5) + 0.0)
    assert eb_from_grads(g, epsilon=1e-5) == pytest.approx(expected, rel=1e-6)
    # The same gradients split into two parameters, and through eb_statistic directly.
    parts = {"w": g[:, :2].reshape(4, 2, 1), "b": g[:, 2:]}
    assert eb_from_grads(parts) == pytest.approx(-59.0, rel=1e-6)
    mean, var = g.mean(0), g.var(0)
    assert eb_statistic(mean, var, 4) == pytest.approx(-59.0, rel=1e-6)
    assert eb_per_layer(parts)["w"] == pytest.approx(-59.0, rel=1e-6)
    assert eb_per_layer(parts)["b"] == 1.0  # nothing left: every row agrees


def test_pure_noise_gradients_read_about_zero_and_signal_reads_below() -> None:
    """EB's expectation is 0 when the true gradient is 0 (each B ḡ²/σ̂² ≈ 1)."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 20_000, generator=generator)
    assert abs(eb_from_grads(noise)) < 0.05
    assert eb_from_grads(noise + 0.5) < -10  # a mean of 0.5 sd: B * 0.25 = 16 per coordinate


def test_the_last_layer_closed_form_equals_autograd_on_a_linear_model() -> None:
    """For a model that is its output layer, layers='last' and 'all' see the same gradients."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    assert batch_eb(model, x, y, layers="last") == pytest.approx(
        batch_eb(model, x, y, layers="all"), rel=1e-5
    )
    # Masked classes (--mask-unseen) leave the sum: their gradients are 0 in both paths.
    masked = batch_eb(model, x, y % 2, layers="all", allowed_classes=[0, 1])
    assert masked == pytest.approx(
        batch_eb(model, x, y % 2, layers="last", allowed_classes=[0, 1]), rel=1e-5
    )
    assert model.training  # the mode is restored


def test_the_stopper_smooths_with_an_ema_and_records_its_step() -> None:
    stopper = EBStopper(smoothing=0.5)
    assert not stopper.observe(-1.0, 0)
    assert not stopper.observe(0.5, 1)  # 0.5 * 0.5 + 0.5 * -1 = -0.25
    assert stopper.smoothed == pytest.approx(-0.25)
    assert stopper.observe(1.0, 2)  # 0.5 * 1 + 0.5 * -0.25 = 0.375 > 0
    assert stopper.stopped_step == 2 and stopper.evaluations == 3


# ------------------------------------------------------------------------- options


def test_early_stopping_options_keep_old_configs_meaning_the_same() -> None:
    assert UpdateConfig().stopping_rule == "none"
    legacy = UpdateConfig.from_dict({"val_fraction": 0.1, "patience": 2})
    assert legacy.early_stopping is None and legacy.stopping_rule == "validation"
    assert UpdateConfig(early_stopping="eb").stopping_rule == "eb"
    # A later update of a lineage trained with --patience switches rule without unsetting it.
    switched = legacy.replace(early_stopping="eb")
    assert switched.patience is None and switched.stopping_rule == "eb"
    assert legacy.replace(lr=0.1).stopping_rule == "validation"
    with pytest.raises(ConfigError) as caught:
        UpdateConfig(early_stopping="validation")
    assert str(caught.value) == (
        "--early-stopping 'validation' is invalid; expected a --patience as well: "
        "add --patience 3 --val-fraction 0.1"
    )
    with pytest.raises(ConfigError, match="^--patience 2 is invalid; expected no value with "):
        UpdateConfig(early_stopping="eb", patience=2, val_fraction=0.1)
    with pytest.raises(ConfigError, match="^--early-stopping 'val' is invalid; expected "):
        UpdateConfig(early_stopping="val")
    with pytest.raises(ConfigError, match="^--eb-layers 'head' is invalid; expected 'all'"):
        UpdateConfig(eb_layers="head")
    with pytest.raises(ConfigError, match="^--eb-every 0 is invalid"):
        UpdateConfig(eb_every=0)
    with pytest.raises(ConfigError, match="^--eb-smoothing 0 is invalid"):
        UpdateConfig(eb_smoothing=0)


# ------------------------------------------------------------------------- in an update


def _noisy_problem(seed: int, rows: int, noise: float) -> ArrayDataset:
    """A linear boundary in 20 dimensions with ``noise`` of the labels flipped."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(20, generator=torch.Generator().manual_seed(99))
    x = torch.randn(rows, 20, generator=generator)
    y = (x @ w > 0).long()
    flip = torch.rand(rows, generator=generator) < noise
    return ArrayDataset(x, torch.where(flip, 1 - y, y))


OVERFIT = {"method": "finetune", "memory_size": 0, "hidden": (64,), "lr": 0.1}
OVERFIT |= {"batch_size": 20, "num_classes": 2, **FAST}


def test_eb_stops_before_the_validation_loss_rises() -> None:
    """100 rows with 30 % flipped labels: the validation loss bottoms out within ~10 epochs and
    then climbs as the MLP fits the noise. EB, seeing only the training batches, stops near
    the bottom; a full run ends far above it."""
    train, val = _noisy_problem(0, 100, 0.3), _noisy_problem(1, 2000, 0.0)
    epochs = 60
    full_losses: list[float] = []
    Updater(epochs=epochs, **OVERFIT).update(
        train, on_epoch_end=lambda end: full_losses.append(end.evaluate(val)["loss"])
    )
    best = min(full_losses)
    overfitting = next(e for e, loss in enumerate(full_losses, 1) if loss > 1.25 * best)
    assert full_losses[-1] > 1.4 * best  # the problem does overfit

    eb = Updater(epochs=epochs, early_stopping="eb", **OVERFIT)
    record = eb.update(train)["train"]
    assert record["stop_reason"] == "eb"
    assert record["epochs"] < overfitting
    stop_loss = eb.evaluate(val)["loss"]
    assert stop_loss < 1.1 * best < full_losses[-1]
    # No row was held out: 5 steps per epoch over all 100 rows, until the stop.
    assert record["val_accuracy"] == []
    assert 5 * (record["epochs"] - 1) <= record["stopped_step"] == record["steps"]
    assert record["steps"] < 5 * record["epochs"]
    assert len(record["eb_values"]) == record["epochs"] and record["eb_values"][-1] > 0
    assert all(v <= 0 for v in record["eb_values"][:-1])


def test_the_last_layer_variant_and_eb_every_stop_too() -> None:
    train, val = _noisy_problem(0, 100, 0.3), _noisy_problem(1, 500, 0.0)
    full = Updater(epochs=60, **OVERFIT)
    full.update(train)
    for options in ({"eb_layers": "last"}, {"eb_every": 3}):
        eb = Updater(epochs=60, early_stopping="eb", **options, **OVERFIT)
        record = eb.update(train)["train"]
        assert record["stop_reason"] == "eb" and record["epochs"] < 60
        assert record["stopped_step"] % options.get("eb_every", 1) == 0
        assert eb.evaluate(val)["loss"] < full.evaluate(val)["loss"]


def test_a_resumed_eb_update_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    """The smoothed EB value travels in the mid-update checkpoint."""
    train = _noisy_problem(0, 100, 0.3)
    whole = Updater(epochs=60, early_stopping="eb", **OVERFIT)
    expected = whole.update(train)["train"]

    class Interrupt(Exception):
        pass

    def stop(end: EpochEnd) -> None:
        if end.epochs_done == 3:
            end.save(tmp_path / "ckpt")
            raise Interrupt

    with pytest.raises(Interrupt):
        Updater(epochs=60, early_stopping="eb", **OVERFIT).update(train, on_epoch_end=stop)
    resumed = Updater(epochs=60, early_stopping="eb", **OVERFIT)
    record = resumed.update(train, resume_from=tmp_path / "ckpt")["train"]
    for key in ("steps", "epochs", "stop_reason", "stopped_step", "eb_values"):
        assert record[key] == expected[key], key
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_validation_early_stopping_records_its_reason() -> None:
    train = _noisy_problem(0, 100, 0.3)
    record = Updater(epochs=60, val_fraction=0.2, patience=2, **OVERFIT).update(train)["train"]
    assert record["stop_reason"] == "validation" and record["epochs"] < 60
    assert record["eb_values"] == []


def test_the_cli_runs_an_eb_update_and_the_history_says_why_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ricordo.cli import main

    chunk = _noisy_problem(0, 100, 0.3)
    np.savez(tmp_path / "chunk.npz", x=chunk.x.numpy(), y=chunk.y.numpy())
    args = ["ricordo", "update", "--data", tmp_path / "chunk.npz", "--next-state"]
    args += [tmp_path / "v1", "--method", "finetune", "--memory-size", "0", "--hidden", "64"]
    args += ["--lr", "0.1", "--batch-size", "20", "--epochs", "60", "--num-classes", "2"]
    args += ["--early-stopping", "eb", "--eb-layers", "last", "--no-progress", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", [str(a) for a in args])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    train = json.loads((tmp_path / "v1" / "history.json").read_text())[-1]["train"]
    assert train["stop_reason"] == "eb" and train["epochs"] < 60
    assert train["stopped_step"] == train["steps"] and train["eb_values"][-1] > 0
