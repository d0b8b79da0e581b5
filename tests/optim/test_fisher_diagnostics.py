"""True vs empirical Fisher and natural-gradient angles (ricordo.optim.fisher_diagnostics)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.optim.fisher_diagnostics import (
    MAX_FULL_PARAMETERS,
    compare_fisher,
    empirical_fisher,
    natural_gradient,
    natural_gradient_angle,
    true_fisher,
)


def _logistic(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A 2-class softmax-logistic model on 3 features and 8 rows."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    return model, x, y


def _log_prob_grad(model: nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
    """∇_θ log p(c | x) of one row by autograd, flattened (weight then bias)."""
    log_p = F.log_softmax(model(x[None]), dim=1)[0, c]
    grads = torch.autograd.grad(log_p, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def test_true_and_empirical_fisher_match_brute_force_on_a_logistic_model() -> None:
    model, x, y = _logistic()
    size = sum(p.numel() for p in model.parameters())
    brute_true = torch.zeros(size, size, dtype=torch.float64)
    brute_empirical = torch.zeros(size, size, dtype=torch.float64)
    for n in range(len(x)):
        p = F.softmax(model(x[n][None]), dim=1)[0].detach()
        for c in range(2):
            g = _log_prob_grad(model, x[n], c)
            brute_true += p[c] * torch.outer(g, g)
        g = _log_prob_grad(model, x[n], int(y[n]))
        brute_empirical += torch.outer(g, g)
    brute_true /= len(x)
    brute_empirical /= len(x)

    full_true = true_fisher(model, x, full=True)
    full_empirical = empirical_fisher(model, x, y, full=True)
    torch.testing.assert_close(full_true, brute_true, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(full_empirical, brute_empirical, rtol=1e-6, atol=1e-9)
    # The diagonals (through methods.fisher.diagonal_fisher, EWC's estimator) agree, in float32.
    torch.testing.assert_close(
        true_fisher(model, x), torch.diagonal(brute_true), rtol=1e-4, atol=1e-7
    )
    torch.testing.assert_close(
        empirical_fisher(model, x, y), torch.diagonal(brute_empirical), rtol=1e-4, atol=1e-7
    )
    # The logistic Fisher in closed form: the weight block is mean_n (diag p - p pᵀ) ⊗ x xᵀ.
    with torch.no_grad():
        probs = F.softmax(model(x), dim=1)
    closed = sum(
        torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(row, row))
        for p, row in zip(probs, x, strict=True)
    ) / len(x)
    torch.testing.assert_close(full_true[:6, :6], closed, rtol=1e-6, atol=1e-9)


def test_the_angle_is_zero_when_the_two_fishers_coincide() -> None:
    gradient = torch.tensor([1.0, -2.0, 0.5])
    m = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]])
    assert natural_gradient_angle(m, m, gradient) == 0.0
    assert natural_gradient_angle(torch.diagonal(m), torch.diagonal(m), gradient) == 0.0
    # One row of a 2-class logistic model: F = p0 p1 v vᵀ and EF = p_other² v vᵀ share their
    # one direction v, so both natural gradients are parallel to the gradient.
    model, x, y = _logistic()
    comparison = compare_fisher(model, x[:1], y[:1])
    assert comparison.angle_full == pytest.approx(0.0, abs=1e-4)
    # Eight rows: the two differ.
    assert compare_fisher(model, x, y).angle_full > 1.0


def test_natural_gradient_solves_the_damped_system() -> None:
    m = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    direction = natural_gradient(m, g, damping=1.0)
    torch.testing.assert_close((m + torch.eye(2)) @ direction, g)
    diagonal = natural_gradient(torch.tensor([1.0, 3.0]), g, damping=1.0)
    torch.testing.assert_close(diagonal, torch.tensor([1 / 2, 1 / 4], dtype=torch.float64))
    # Angle of two diagonal preconditioners by hand: directions (1, 1/3) and (1/3, 1).
    angle = natural_gradient_angle(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0]), g, 0.0)
    assert angle == pytest.approx(math.degrees(math.acos((2 / 3) / (10 / 9))), rel=1e-9)


def test_compare_fisher_on_a_small_mlp() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    comparison = compare_fisher(model, x, y)
    assert comparison.true_full is not None and comparison.empirical_full is not None
    torch.testing.assert_close(
        torch.diagonal(comparison.true_full), comparison.true_diagonal, rtol=1e-4, atol=1e-8
    )
    torch.testing.assert_close(
        torch.diagonal(comparison.empirical_full),
        comparison.empirical_diagonal,
        rtol=1e-4,
        atol=1e-8,
    )
    summary = comparison.to_dict()
    assert summary["parameters"] == 4 * 6 + 6 + 6 * 3 + 3 == comparison.gradient.numel()
    assert summary["classes"] == 3 and summary["rows"] == 32
    assert 0 < summary["angle_diagonal"] < 180 and 0 < summary["angle_full"] < 180
    # Only the output layer, as a researcher would on a large model.
    head = compare_fisher(model, x, y, params=["2.weight", "2.bias"])
    assert head.gradient.numel() == 21
    torch.testing.assert_close(head.true_diagonal, comparison.true_diagonal[-21:])
    assert model.training  # the mode is restored


def test_a_full_fisher_of_a_large_model_is_refused_with_the_fix() -> None:
    model = nn.Linear(MAX_FULL_PARAMETERS, 2)
    x = torch.randn(2, MAX_FULL_PARAMETERS)
    with pytest.raises(ConfigError) as caught:
        true_fisher(model, x, full=True)
    assert str(caught.value) == (
        f"a full Fisher of {2 * MAX_FULL_PARAMETERS + 2} parameters is too large (at most "
        f"{MAX_FULL_PARAMETERS}); take the diagonal (full=False) or fewer parameters "
        "(params=['head.weight', ...])"
    )
    assert compare_fisher(model, x, torch.tensor([0, 1])).true_full is None  # auto: diagonal
    with pytest.raises(ConfigError, match=r"^no trainable parameters named \['head'\]"):
        compare_fisher(model, x, torch.tensor([0, 1]), params=["head"])
