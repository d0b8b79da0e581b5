"""ewc and online-ewc: they learn, survive save/load (also in a new process); the penalty is zero
at the anchor and ignores new classes; the stored quadratic equals the original per-update sum;
online EWC decays its Fisher by gamma; the true Fisher matches its closed form and differs from
the empirical one; both help on permuted digits where fine-tuning forgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    make_context,
    save_and_reload,
)
from torch import nn

from ricordo import Updater
from ricordo.data import Scenario, load_builtin, make_scenario
from ricordo.errors import ConfigError
from ricordo.methods import ewc
from ricordo.methods.fisher import diagonal_fisher, grow_to
from ricordo.models import grow_output_layer

METHODS = ["ewc", "online-ewc"]
# Mammoth's lr for its λ 90 (seq-MNIST): at FAST's 0.1 the penalty's curvature makes SGD diverge.
EWC_FAST = {**FAST, "lr": 0.03}


@pytest.mark.parametrize("method", METHODS)
def test_ewc_learns_the_new_chunk(method: str, digits_scenario: Scenario) -> None:
    updater = Updater(method=method, **EWC_FAST)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5


@pytest.mark.parametrize("method", METHODS)
def test_ewc_reload_predicts_and_continues_identically(
    method: str, digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method=method, **EWC_FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    saved, loaded = updater.method.state_tensors(), reloaded.method.state_tensors()
    assert saved.keys() == loaded.keys() and len(saved) == 8  # Fisher + anchor of 4 params
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert_reload_continues_identically(updater, reloaded, digits_scenario, memory=None)


def test_ewc_penalty_is_zero_at_the_anchor_and_ignores_new_classes(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="ewc", **EWC_FAST)
    updater.update(digits_scenario.train[0])
    model, method, ctx = updater.model, updater.method, make_context(updater, updater.updates)
    assert model is not None
    with torch.no_grad():
        assert float(method.penalty(ctx)) == 0.0
    rows = model[3].out_features
    grow_output_layer(model, rows + 3, torch.Generator().manual_seed(1))
    method.begin_update(digits_scenario.train[1], ctx)  # pads Fisher and anchor
    assert method.fisher["3.weight"].shape == (rows + 3, 64)
    assert not method.fisher["3.weight"][rows:].any()
    with torch.no_grad():
        model[3].weight[rows:] += 1.0  # the new classes' rows are free
        assert float(method.penalty(ctx)) == 0.0
        model[3].weight[0] += 0.1
        assert float(method.penalty(ctx)) > 0.0


class _Recorder:
    """Wraps diagonal_fisher to record each update's Fisher and the parameters it was taken at."""

    def __init__(self) -> None:
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.anchors: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: nn.Module, *args: object, **kwargs: object) -> dict:
        self.anchors.append({n: p.detach().clone() for n, p in model.named_parameters()})
        self.fishers.append(diagonal_fisher(model, *args, **kwargs))  # type: ignore[arg-type]
        return self.fishers[-1]


def test_ewc_equals_the_sum_of_per_update_penalties(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kirkpatrick's λ Σ_t F_t (θ - θ*_t)² and our λ A (θ - μ)² have the same gradient."""
    recorder = _Recorder()
    monkeypatch.setattr(ewc, "diagonal_fisher", recorder)
    updater = Updater(method="ewc", **EWC_FAST)
    for chunk in digits_scenario.train[:3]:
        updater.update(chunk)
    model = updater.model
    assert model is not None and len(recorder.fishers) == 3
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    ours = updater.method.penalty(make_context(updater, updater.updates))
    original = sum(
        updater.method.params.ewc_lambda
        * (grow_to(f[n], p.shape) * (p - grow_to(a[n], p.shape)).pow(2)).sum()
        for f, a in zip(recorder.fishers, recorder.anchors, strict=True)
        for n, p in model.named_parameters()
    )
    params = list(model.parameters())
    for g1, g2 in zip(
        torch.autograd.grad(ours, params), torch.autograd.grad(original, params), strict=True
    ):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    assert 0 < float(ours.detach()) <= float(original.detach()) + 1e-6  # differ by a constant >= 0


def test_online_ewc_decays_its_fisher_by_gamma(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(ewc, "diagonal_fisher", recorder)
    updater = Updater(method="online-ewc", params={"gamma": 0.5}, **EWC_FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    assert updater.model is not None
    first, second = recorder.fishers
    for name, p in updater.model.named_parameters():
        expected = 0.5 * grow_to(first[name], p.shape) + second[name]
        torch.testing.assert_close(updater.method.fisher[name], expected)
        assert torch.equal(updater.method.anchor[name], p.detach())  # the latest parameters


def test_true_and_empirical_fisher_match_their_closed_forms() -> None:
    """Softmax regression z = Wx + b: per example the true Fisher diagonal is p_k (1 - p_k) x_j²
    (diagonal of (diag(p) - pp^T) ⊗ xx^T), the empirical one (p_k - [k = y])² x_j²."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3))
    x = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0], [2.0, 0.5, 1.5], [-1.0, -0.5, 2.0]])
    y = torch.tensor([0, 2, 1, 1])
    with torch.no_grad():
        p = model(x).softmax(1)
    true_w = (p * (1 - p)).T @ x.pow(2) / len(x)
    true_b = (p * (1 - p)).mean(0)
    residual = p - nn.functional.one_hot(y, 3)
    emp_w = residual.pow(2).T @ x.pow(2) / len(x)
    emp_b = residual.pow(2).mean(0)
    empirical = diagonal_fisher(model, x, y, kind="empirical")
    torch.testing.assert_close(empirical["1.weight"], emp_w)
    torch.testing.assert_close(empirical["1.bias"], emp_b)
    true = diagonal_fisher(
        model, x, kind="true", generator=torch.Generator().manual_seed(0), draws=20_000
    )
    torch.testing.assert_close(true["1.weight"], true_w, rtol=0.05, atol=0)
    torch.testing.assert_close(true["1.bias"], true_b, rtol=0.05, atol=0)
    # The square of a batch-mean gradient is neither: far smaller here.
    assert float(true["1.weight"].sum()) > 3 * float((residual.T @ x / len(x)).pow(2).sum())


def test_true_and_empirical_fisher_differ_on_a_trained_model(digits_scenario: Scenario) -> None:
    """On confidently fit data the observed-label gradients vanish: EF underestimates F."""
    updater = Updater(method="ewc", **EWC_FAST)
    updater.update(digits_scenario.train[0])
    assert updater.model is not None
    data = digits_scenario.train[0]
    true = diagonal_fisher(
        updater.model, data.x, kind="true", generator=torch.Generator().manual_seed(0)
    )
    empirical = diagonal_fisher(updater.model, data.x, data.y, kind="empirical")
    for name in true:
        assert float(true[name].sum()) > 1.5 * float(empirical[name].sum())  # measured: ~2.2x


@pytest.mark.parametrize("method", METHODS)
def test_ewc_remembers_permuted_digits_better_than_finetune(method: str) -> None:
    train, test = load_builtin("digits")
    scenario = make_scenario("permutation", train, test, updates=2, seed=0)
    accuracy = {}
    for name in ("finetune", method):
        updater = Updater(method=name, epochs=10, lr=0.1, progress=False, hidden=(64,))
        for chunk in scenario.train:
            updater.update(chunk)
        accuracy[name] = updater.evaluate(scenario.test[0])["accuracy"]
    assert accuracy[method] > accuracy["finetune"] + 0.1  # 0.93 vs 0.76 (seeds 0-3: +0.17..0.23)


def test_ewc_validates_its_parameters() -> None:
    with pytest.raises(ConfigError, match="fisher"):
        Updater(method="ewc", params={"fisher": "batch"})
    with pytest.raises(ConfigError, match="gamma"):
        Updater(method="online-ewc", params={"gamma": 2})
    with pytest.raises(ConfigError, match="ewc_lambda"):
        Updater(method="ewc", params={"ewc_lambda": -1})
    with pytest.raises(ConfigError, match="no parameter"):
        Updater(method="ewc", params={"gamma": 0.9})  # gamma is online EWC's
