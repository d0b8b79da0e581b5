"""CLS-ER and BiC run as published by default; our additions are opt-in.

BiC (Wu et al. 2019, as its code does it, which FACIL reproduces): the stage-1 loss is
``(1 - lam) * CE + lam * KD`` and the bias correction is fitted by SGD (momentum 0.9, the training
lr) in shuffled batches over the validation rows, with L2 on beta only and no accept guard.
CLS-ER (Arani et al. 2022, the authors' best arguments for S-MNIST, buffer 500): rates 1.0 / 0.9,
decays 0.99 / 0.99, and each EMA update uses the decay ``min(1 - 1/(t+1), alpha)``."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import FAST
from torch import nn

from ricordo import Updater
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.data.dataset import ArrayDataset
from ricordo.memory import TensorMemory
from ricordo.methods import Batch, UpdateContext
from ricordo.methods import components as components_module
from ricordo.methods.bic import BiC, BiCParams
from ricordo.methods.cls_er import CLSERParams

# -- BiC


def _context(model: nn.Module, seen: list[int], chunk: list[int]) -> UpdateContext:
    return UpdateContext(
        model=model,
        config=UpdateConfig(method="bic", lr=0.05, batch_size=8),
        update_index=1,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seen_classes=seen,
        chunk_classes=chunk,
    )


def test_bic_default_stage_one_loss_is_the_papers_formula() -> None:
    """2 old classes (0, 1) and 3 new (2, 3, 4): lam = n / (n + m) = 2 / 5. The default loss on a
    fixed batch equals (1 - lam) * CE(all classes) + lam * KD, KD the cross-entropy between the
    frozen previous model's and the model's softmax over the old classes at T = 2 (no T**2)."""
    torch.manual_seed(0)
    model = nn.Linear(6, 5)
    method = BiC(BiCParams(), TensorMemory(50))  # an empty memory: no replayed rows
    method.seen = [0, 1]
    chunk = ArrayDataset(torch.randn(30, 6), torch.arange(30) % 3 + 2)
    ctx = _context(model, seen=[0, 1, 2, 3, 4], chunk=[2, 3, 4])
    method.begin_update(chunk, ctx)
    previous = copy.deepcopy(model)
    with torch.no_grad():  # the model moves away from the frozen copy, as training would
        model.weight.add_(0.5 * torch.randn_like(model.weight))
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 3, 4, 2, 3, 4])

    loss = method.loss(Batch(x, y), ctx)

    z, z_old, t, lam = model(x).double(), previous(x).double(), 2.0, 2 / 5
    softmax = lambda v: v.exp() / v.exp().sum(1, keepdim=True)  # noqa: E731
    ce = -softmax(z)[torch.arange(8), y].log().mean()
    kd = -(softmax(z_old[:, :2] / t) * softmax(z[:, :2] / t).log()).sum(1).mean()
    assert method.lam == pytest.approx(lam)
    assert loss.item() == pytest.approx(((1 - lam) * ce + lam * kd).item(), rel=1e-6)
    # "normalized" (ours, opt-in) is that loss divided by 1 - lam.
    ours = BiC(BiCParams(loss_weighting="normalized"), TensorMemory(50))
    ours.seen = [0, 1]
    ours.begin_update(chunk, ctx)
    ours.old_model = method.old_model
    expected = (ce + lam / (1 - lam) * kd).item()
    assert ours.loss(Batch(x, y), ctx).item() == pytest.approx(expected, rel=1e-6)


def _facil_fit(
    logits: torch.Tensor, y: torch.Tensor, new: list[int], lr: float, batch: int, seed: int
) -> torch.Tensor:
    """FACIL's stage 2 written out: 200 epochs of shuffled batches, SGD with momentum 0.9 at the
    training lr, CE of the corrected logits plus 0.1 * beta**2 / 2."""
    alpha = torch.ones(1, requires_grad=True)
    beta = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([alpha, beta], lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    is_new = torch.zeros(logits.shape[1], dtype=torch.bool)
    is_new[new] = True
    for _ in range(200):
        for rows in torch.randperm(len(y), generator=generator).split(batch):
            z = logits[rows]
            corrected = torch.where(is_new, alpha * z + beta, z)
            loss = nn.functional.cross_entropy(corrected, y[rows]) + 0.1 * beta[0] ** 2 / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.cat([alpha, beta]).detach()


def test_bic_default_bias_fit_is_facils_sgd_on_beta_only() -> None:
    torch.manual_seed(1)
    y = torch.arange(21) % 4
    logits = 2 * nn.functional.one_hot(y, 4) + torch.randn(21, 4)
    logits[:, 2:] += 1.5  # the new classes 2 and 3 score too high, as after stage 1
    method = BiC(BiCParams(), TensorMemory(10))
    fitted = method._fit(logits, y, [2, 3], 0.05, 8, torch.Generator().manual_seed(3))
    expected = _facil_fit(logits, y, [2, 3], lr=0.05, batch=8, seed=3)
    assert torch.allclose(fitted, expected, atol=1e-6)
    assert fitted[1] < -0.5  # the new classes' logits are lowered
    whole = method._fit(logits, y, [2, 3], 0.05)  # one batch per epoch: another trajectory
    assert not torch.allclose(fitted, whole, atol=1e-3)


def test_bic_default_keeps_the_fit_without_an_accept_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The published fit is kept even where it lowers the validation accuracy (the guard is ours,
    opt-in); a non-finite fit is still replaced by the identity."""
    logits = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [0.0, -2.0]])
    y = torch.tensor([1, 1, 0, 0])  # class 1 new; all four rows correct uncorrected
    for value, guard, expected in [
        ([1.0, -100.0], None, [1.0, -100.0]),  # the default: kept, though every 1 is now wrong
        ([1.0, -100.0], True, [1.0, 0.0]),  # bias_accept_guard=true (ours): the identity
        ([float("nan"), 0.0], None, [1.0, 0.0]),
    ]:

        def step(self, closure=None, value=value):  # type: ignore[no-untyped-def]
            with torch.no_grad():
                self.param_groups[0]["params"][0].copy_(torch.tensor(value))

        monkeypatch.setattr(torch.optim.SGD, "step", step)
        method = BiC(BiCParams(bias_accept_guard=guard), TensorMemory(10))
        assert torch.equal(method._fit(logits, y, [1], 0.1), torch.tensor(expected))


def test_bic_alpha_l2_is_opt_in() -> None:
    """With L-BFGS on separable rows, the published objective (L2 on beta only) lets alpha grow;
    bias_alpha_decay=true (ours) holds it near 1."""
    logits = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [0.0, -2.0]])
    y = torch.tensor([1, 1, 0, 0])
    free = BiC(BiCParams(bias_optimizer="lbfgs", bias_alpha_decay=False), TensorMemory(10))
    held = BiC(BiCParams(bias_optimizer="lbfgs"), TensorMemory(10))  # none: on with lbfgs
    alpha_free = free._fit(logits, y, [1], 0.1)[0]
    alpha_held = held._fit(logits, y, [1], 0.1)[0]
    assert alpha_free > 5 and 1 < alpha_held < 2


# -- CLS-ER


def test_cls_er_defaults_are_the_authors_s_mnist_values() -> None:
    params = CLSERParams()
    assert params.ema_schedule(200) == ((1.0, 0.9), (0.99, 0.99))  # no cap: adapt_decays off
    assert params.ema_schedule(5) == ((1.0, 0.9), (0.99, 0.99))
    assert params.consistency_weight == 2.0 and params.adapt_decays is False


def test_cls_er_ema_decay_is_the_papers_rule(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every EMA update of a default CLS-ER uses decay min(1 - 1/(t+1), 0.99), t the step count
    over the lineage, also in a short update (the adaptation would cap it near 0.9 here)."""
    updater = Updater(method="cls-er", **{**FAST, "epochs": 14})
    ema = updater.method.ema
    calls: list[tuple[str, int, float]] = []
    update = components_module.ema_update

    def recording(weights: dict, model: nn.Module, decay: float) -> None:
        name = next(n for n, w in ema.weights.items() if w is weights)
        calls.append((name, ema.steps, decay))
        update(weights, model, decay)

    monkeypatch.setattr(components_module, "ema_update", recording)
    updater.update(digits_scenario.train[0])
    steps = updater.history[-1]["train"]["steps"]
    assert 99 < steps < 1000  # past the warm-up (t = 99), far short of an adapted cap
    plastic = [(t, d) for name, t, d in calls if name == "plastic"]
    assert [t for t, _ in plastic] == list(range(1, steps + 1))  # rate 1.0: every step
    assert [d for _, d in plastic] == [min(1 - 1 / (t + 1), 0.99) for t in range(1, steps + 1)]
    stable = [(t, d) for name, t, d in calls if name == "stable"]
    assert 0.8 * steps < len(stable) < steps  # rate 0.9
    assert all(d == min(1 - 1 / (t + 1), 0.99) for t, d in stable)


def test_cls_er_adapt_decays_is_ours_and_opt_in() -> None:
    params = dataclasses.replace(CLSERParams(), adapt_decays=True)
    decays = params.ema_schedule(200)[1]
    assert decays == pytest.approx((1 - 1 / (0.1 * 1.0 * 200), 1 - 1 / (0.5 * 0.9 * 200)))
    assert params.ema_schedule(1000)[1] == (0.99, 0.99)  # long updates keep the paper's
