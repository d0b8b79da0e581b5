"""--mask-unseen: while training, classes in neither the chunk nor the memory get -inf logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo import Updater
from ricordo.data import ArrayDataset, Scenario
from ricordo.engine import loop
from ricordo.engine.loop import split_validation
from ricordo.methods.base import Method, UpdateContext
from ricordo.models.head import output_layer

FAST = dict(epochs=1, lr=0.1, memory_size=20, progress=False, hidden=(64,))


def first_step_head_grads(
    updater: Updater, chunk, monkeypatch: pytest.MonkeyPatch
) -> tuple[torch.Tensor, list[int] | None]:  # type: ignore[no-untyped-def]
    """Row-wise |grad| of the output layer at the first step of an update, and the mask."""
    seen: dict[str, object] = {}
    original = type(updater.method).before_step

    def spy(self: Method, batch, ctx: UpdateContext) -> None:  # type: ignore[no-untyped-def]
        if "grad" not in seen:
            weight = output_layer(ctx.model)[1].weight
            bias = output_layer(ctx.model)[1].bias
            seen["grad"] = weight.grad.abs().sum(1) + bias.grad.abs()
            seen["mask"] = ctx.train_classes
        original(self, batch, ctx)

    monkeypatch.setattr(type(updater.method), "before_step", spy)
    updater.update(chunk)
    monkeypatch.undo()
    return seen["grad"], seen["mask"]  # type: ignore[return-value]


def test_finetune_absent_classes_get_no_gradient(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = digits_scenario.chunk_classes[0], digits_scenario.chunk_classes[1]
    for mask in (True, False):
        updater = Updater(method="finetune", mask_unseen=mask, **FAST)
        updater.update(digits_scenario.train[0])
        grad, allowed = first_step_head_grads(updater, digits_scenario.train[1], monkeypatch)
        assert bool((grad[new] > 0).all())
        if mask:
            assert allowed == sorted(new)
            assert bool((grad[old] == 0).all())  # finetune competes among the chunk's classes
        else:
            assert allowed is None and bool((grad[old] > 0).all())


def test_er_competes_among_chunk_and_replayed_classes(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    updater = Updater(method="er", mask_unseen=True, memory_policy="sliding-window", **FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])  # the window now holds chunk 1's classes only
    assert updater.memory is not None
    in_memory = sorted(set(updater.memory.get()["y"].tolist()))
    chunk = digits_scenario.train[2]
    grad, allowed = first_step_head_grads(updater, chunk, monkeypatch)
    assert allowed == sorted(set(in_memory) | set(chunk.classes()))
    dropped = digits_scenario.chunk_classes[0]
    assert not set(dropped) & set(allowed)
    assert bool((grad[dropped] == 0).all())
    assert bool((grad[allowed] > 0).all())


def test_mask_applies_only_while_training(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[ArrayDataset | None] = []

    def split(data: ArrayDataset, fraction: float, generator: torch.Generator):  # type: ignore[no-untyped-def]
        train, val = split_validation(data, fraction, generator)
        held.append(val)
        return train, val

    monkeypatch.setattr(loop, "split_validation", split)
    updater = Updater(method="finetune", mask_unseen=True, val_fraction=0.2, **FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    # Validation during training is not masked: it scores the held-out rows as evaluate does
    # (one epoch: the validated model is the final one), not as a masked softmax would.
    val = held[-1]
    assert val is not None
    recorded = updater.history[-1]["train"]["val_accuracy"][0]
    assert recorded == pytest.approx(updater.evaluate(val)["accuracy"])
    masked = updater.evaluate(val, classes=digits_scenario.chunk_classes[1])["accuracy"]
    assert masked > recorded + 0.05  # 0.89 vs 0.77: what masking would have changed
    logits = updater.predict_logits(digits_scenario.test_all().x)
    assert bool(torch.isfinite(logits).all())  # prediction never masks
    model = updater.model
    assert model is not None
    ctx = updater._inference_context(model)
    ctx.train_classes = [0]
    x = digits_scenario.test[0].x[:4]
    model.train()
    masked = ctx.logits(x)
    assert bool(torch.isinf(masked[:, 1:]).all()) and bool(torch.isfinite(masked[:, 0]).all())
    features, masked_too = ctx.features_and_logits(x)
    assert torch.equal(masked_too, masked) and bool(torch.isfinite(features).all())
    model.eval()
    assert bool(torch.isfinite(ctx.logits(x)).all())


def test_cli_update_and_benchmark_take_the_flags(digits_scenario: Scenario, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ricordo.cli import app

    chunk = digits_scenario.train[0]
    np.savez(tmp_path / "c0.npz", x=chunk.x.numpy(), y=chunk.y.numpy())
    result = CliRunner().invoke(
        app,
        [
            "update",
            "--data",
            str(tmp_path / "c0.npz"),
            "--next-state",
            str(tmp_path / "v0"),
            "--mask-unseen",
            "--memory-storage",
            "mmap",
            "--memory-policy",
            "class-balanced",
            "--memory-size",
            "30",
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    loaded = Updater.load(str(tmp_path / "v0"))
    assert loaded.config.mask_unseen is True
    assert loaded.config.memory_storage == "mmap"
    assert loaded.memory is not None and loaded.memory.policy_name == "class-balanced"
    assert any(p.suffix == ".npy" for p in (tmp_path / "v0" / "memory").iterdir())
    help_text = CliRunner().invoke(app, ["benchmark", "--help"], terminal_width=200).output
    for flag in ("--mask-unseen", "--memory-storage", "--memory-dir"):
        assert flag in help_text
