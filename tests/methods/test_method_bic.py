"""bic: learns, survives save/load (also in a new process), corrects only the logits of each
update's new classes (identity before the first correction) and holds its validation rows out;
skips the correction below bias_min_val_rows, with the accept guard never keeps one that lowers
the accuracy on its validation rows, and weights the stage-1 loss as configured (the published
defaults: tests/methods/test_method_published.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    assert_same_weights,
    save_and_reload,
)

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods.bic import apply_bias


def _raw_logits(updater: Updater, x: torch.Tensor) -> torch.Tensor:
    assert updater.model is not None
    updater.model.eval()
    with torch.no_grad():
        return updater.model(x)


def test_bic_learns_the_new_chunk(digits_scenario: Scenario) -> None:
    updater = Updater(method="bic", **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5
    updater.update(digits_scenario.train[1])
    assert updater.evaluate(digits_scenario.test[1])["accuracy"] > 0.6  # chance: 0.25


def test_bic_reload_predicts_and_continues_identically(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="bic", **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert torch.equal(reloaded.method.bias, updater.method.bias)
    assert reloaded.method.groups == updater.method.groups == [digits_scenario.chunk_classes[1]]
    assert_reload_continues_identically(updater, reloaded, digits_scenario)
    assert torch.equal(reloaded.method.bias, updater.method.bias)


def test_bic_corrects_only_the_new_classes_of_each_update(digits_scenario: Scenario) -> None:
    updater = Updater(method="bic", **FAST)
    updater.update(digits_scenario.train[0])
    x = digits_scenario.test_all().x
    assert updater.method.bias.shape == (0, 2)  # no old classes yet: nothing to correct
    assert torch.equal(updater.predict_logits(x), _raw_logits(updater, x))  # identity
    groups = digits_scenario.chunk_classes
    for k in (1, 2):
        updater.update(digits_scenario.train[k])
        bias = updater.method.bias
        assert bias.shape == (k, 2) and updater.method.groups == groups[1 : k + 1]
        assert not torch.equal(bias[-1], torch.tensor([1.0, 0.0]))  # a correction was fitted
        raw, corrected = _raw_logits(updater, x), updater.predict_logits(x)
        untouched = [c for c in range(raw.shape[1]) if c not in groups[1] + groups[2]]
        assert torch.equal(corrected[:, untouched], raw[:, untouched])
        for (alpha, beta), group in zip(bias, updater.method.groups, strict=True):
            torch.testing.assert_close(corrected[:, group], alpha * raw[:, group] + beta)


def test_bic_holds_validation_rows_out_of_training(digits_scenario: Scenario) -> None:
    """Stage 1 trains on the chunk minus k rows per new class, k = ceil(10% of the exemplars
    per old class); the held-out rows then enter the memory's stream."""
    updater = Updater(method="bic", **FAST)
    updater.update(digits_scenario.train[0])
    stored = updater.memory.get()["y"]
    k = math.ceil(0.1 * len(stored) / len(stored.unique()))
    sizes: list[int] = []
    training_data = updater.method.training_data

    def spy(data, ctx):  # type: ignore[no-untyped-def]
        sizes.append(len(training_data(data, ctx)))
        return training_data(data, ctx)

    replayed: list[int] = []
    get = updater.memory.get

    def spy_get(index=None):  # type: ignore[no-untyped-def]
        blocked = updater.method._blocked
        if index is not None and blocked is not None:  # a replay batch during stage 1
            assert not torch.isin(index, blocked).any(), "a validation exemplar was replayed"
            replayed.append(len(index))
        return get(index)

    updater.method.training_data = spy  # type: ignore[method-assign]
    updater.memory.get = spy_get  # type: ignore[method-assign]
    chunk = digits_scenario.train[1]
    updater.update(chunk)
    assert len(replayed) == updater.history[-1]["train"]["steps"] and set(replayed) == {32}
    assert sizes == [len(chunk) - k * len(digits_scenario.chunk_classes[1])]
    held = len(chunk) - sizes[0]
    epochs = FAST["epochs"]  # like er, every training step offers its batch to the memory
    assert updater.memory.seen == epochs * (len(digits_scenario.train[0]) + sizes[0]) + held


def test_bic_reduces_to_er_without_old_classes(digits_scenario: Scenario) -> None:
    """Two lineages on the same chunk: bic (no old classes, no correction yet) trains exactly
    like er with the same memory."""
    bic = Updater(method="bic", **FAST)
    er = Updater(method="er", **FAST)
    bic.update(digits_scenario.train[0])
    er.update(digits_scenario.train[0])
    assert_same_weights(bic, er)


def test_bic_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="bias_val_fraction"):
        Updater(method="bic", params={"bias_val_fraction": 1.5})
    with pytest.raises(ConfigError, match="temperature"):
        Updater(method="bic", params={"temperature": 0})
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="bic", memory_size=0)


def test_bic_skips_the_correction_below_the_minimum_validation_rows(
    digits_scenario: Scenario,
) -> None:
    """With fewer than bias_min_val_rows validation rows for some class, nothing is held out of
    training and the logits stay uncorrected (alpha=1, beta=0)."""
    updater = Updater(method="bic", params={"bias_min_val_rows": 1000}, **FAST)
    updater.update(digits_scenario.train[0])
    sizes: list[int] = []
    training_data = updater.method.training_data

    def spy(data, ctx):  # type: ignore[no-untyped-def]
        sizes.append(len(training_data(data, ctx)))
        return training_data(data, ctx)

    updater.method.training_data = spy  # type: ignore[method-assign]
    chunk = digits_scenario.train[1]
    updater.update(chunk)
    assert sizes == [len(chunk)]  # every chunk row trained on
    assert updater.method.bias.shape == (0, 2) and updater.method.groups == []
    x = digits_scenario.test_all().x
    assert torch.equal(updater.predict_logits(x), _raw_logits(updater, x))


@pytest.mark.parametrize("optimizer", ["lbfgs", "sgd"])
def test_bic_correction_does_not_lower_accuracy_on_its_validation_rows(
    digits_scenario: Scenario, optimizer: str
) -> None:
    params = {"bias_optimizer": optimizer, "bias_accept_guard": True}  # the guard is opt-in
    updater = Updater(method="bic", params=params, **FAST)
    fits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    fit = updater.method._fit

    def spy(logits, y, classes, *args):  # type: ignore[no-untyped-def]
        ab = fit(logits, y, classes, *args)
        corrected = apply_bias(logits, ab[0], ab[1], classes)
        fits.append((logits.argmax(1) == y, corrected.argmax(1) == y, ab))
        return ab

    updater.method._fit = spy  # type: ignore[method-assign]
    for chunk in digits_scenario.train[:3]:
        updater.update(chunk)
    assert len(fits) == 2
    for before, after, ab in fits:
        assert after.sum() >= before.sum()
        assert torch.isfinite(ab).all() and not torch.equal(ab, torch.tensor([1.0, 0.0]))


def test_bic_rejects_a_fit_that_lowers_validation_accuracy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the accept guard (on with lbfgs), whatever the optimiser returns, a non-finite or
    accuracy-lowering (alpha, beta) is replaced by the identity."""
    method = Updater(method="bic", params={"bias_optimizer": "lbfgs"}, **FAST).method
    logits = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [0.0, -2.0]])
    y = torch.tensor([1, 1, 0, 0])  # class 1 new; all four rows correct uncorrected
    result = method._fit(logits, y, [1], lr=0.1)
    assert torch.isfinite(result).all()  # a plain fit keeps every row correct
    for value in ([1.0, -100.0], [float("nan"), 0.0]):

        def step(self, closure, value=value):  # type: ignore[no-untyped-def]
            with torch.no_grad():
                self.param_groups[0]["params"][0].copy_(torch.tensor(value))

        monkeypatch.setattr(torch.optim.LBFGS, "step", step)
        assert torch.equal(method._fit(logits, y, [1], lr=0.1), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize(
    ("weighting", "expected"), [("normalized", (1.0, 1.0)), ("paper", (0.5, 0.5))]
)
def test_bic_stage_one_loss_weighting(
    digits_scenario: Scenario, weighting: str, expected: tuple[float, float]
) -> None:
    """2 old and 2 new classes, lam = 0.5: "paper" trains on (1 - lam) CE + lam KD, "normalized"
    on that loss divided by 1 - lam, CE + (old / chunk) KD."""
    updater = Updater(method="bic", params={"loss_weighting": weighting}, **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.method.weights == (1.0, 0.0)  # no old classes: plain CE, as er
    updater.update(digits_scenario.train[1])
    assert updater.method.lam == 0.5 and updater.method.weights == expected


def test_bic_rejects_bad_correction_parameters() -> None:
    with pytest.raises(ConfigError, match="bias_optimizer"):
        Updater(method="bic", params={"bias_optimizer": "adam"})
    with pytest.raises(ConfigError, match="bias_min_val_rows"):
        Updater(method="bic", params={"bias_min_val_rows": 0})
    with pytest.raises(ConfigError, match="loss_weighting"):
        Updater(method="bic", params={"loss_weighting": "convex"})
