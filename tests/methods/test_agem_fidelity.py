"""a-gem as published (Chaudhry et al. 2019; Mammoth's agem.py): the loss is the cross-entropy of
the new batch alone, the gradient is projected by hand on one fixed batch, the reference batch
has Mammoth's size, and the memory holds past chunks only (also test_method_agem.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import FAST
from torch import Tensor, nn

from ricordo import Updater
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.memory import TensorMemory
from ricordo.methods import Batch, UpdateContext
from ricordo.methods.agem import AGEM, AGEMParams

X = torch.tensor([[1.0, 0.5, -0.2, 0.3], [0.1, -0.4, 0.8, 0.6], [0.7, 0.7, 0.2, -0.5]])
Y = torch.tensor([2, 2, 1])


def _setup(memory_y: Tensor) -> tuple[nn.Module, AGEM, UpdateContext]:
    """A tiny model with fixed weights and an A-GEM whose memory holds the rows X with
    ``memory_y`` (its reference batch is the whole memory)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    memory = TensorMemory(10, "reservoir", seed=0)
    memory.add({"x": X, "y": memory_y})
    method = AGEM(AGEMParams(memory_batch_size=3), memory)
    ctx = UpdateContext(
        model=model,
        config=UpdateConfig(batch_size=3, progress=False),
        update_index=1,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seen_classes=[0, 1, 2],
        chunk_classes=[1, 2],
    )
    return model, method, ctx


def _ce(z: Tensor, y: Tensor) -> Tensor:
    return (torch.logsumexp(z, 1) - z.gather(1, y[:, None]).squeeze(1)).mean()


def _flat_grad(model: nn.Module, loss: Tensor) -> Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_agem_loss_is_the_new_batch_cross_entropy_alone() -> None:
    """The memory enters only through the projection, never the loss (unlike ER)."""
    model, method, ctx = _setup(torch.tensor([0, 0, 0]))
    loss = method.loss(Batch(X, Y), ctx)
    torch.testing.assert_close(loss, _ce(model(X), Y))


@pytest.mark.parametrize("conflict", [True, False])
def test_agem_projects_the_gradient_as_the_paper_on_a_fixed_batch(conflict: bool) -> None:
    """g~ = g - (g . g_ref / g_ref . g_ref) g_ref when g . g_ref < 0, else g unchanged; g_ref is
    the gradient of the cross-entropy on the memory batch."""
    memory_y = torch.tensor([0, 0, 0]) if conflict else Y
    model, method, ctx = _setup(memory_y)
    loss = method.loss(Batch(X, Y), ctx)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
    ref = _flat_grad(model, _ce(model(X), memory_y))
    dot = float(g @ ref)
    assert (dot < 0) == conflict  # the fixed batch exercises the intended branch
    method.before_step(Batch(X, Y), ctx)
    projected = torch.cat([p.grad.flatten() for p in model.parameters()])
    expected = g - (g @ ref) / (ref @ ref) * ref if conflict else g
    torch.testing.assert_close(projected, expected)
    if conflict:  # the projection is what A-GEM adds: without it the gradient would be g
        assert float((projected - g).norm()) > 0.1 * float(g.norm())
        assert abs(float(projected @ ref)) < 1e-5 * float(projected.norm() * ref.norm())


def test_agem_reference_batch_has_mammoths_size(digits_scenario: Scenario) -> None:
    """128 rows (Mammoth best, seq-MNIST, buffer 500: minibatch_size), with batches of 32."""
    assert AGEMParams().memory_batch_size == 128
    updater = Updater(method="a-gem", **{**FAST, "memory_size": 500, "epochs": 1})
    updater.update(digits_scenario.train[0])
    sizes: list[int] = []
    sample = updater.memory.sample

    def spy(n: int) -> dict[str, Tensor]:
        rows = sample(n)
        sizes.append(len(rows["y"]))
        return rows

    updater.memory.sample = spy  # type: ignore[method-assign]
    updater.update(digits_scenario.train[1])
    assert len(updater.memory) > 128 and set(sizes) == {128}


def test_agem_reference_gradient_comes_from_past_chunks_only(digits_scenario: Scenario) -> None:
    """Every reference batch of the second update holds first-chunk classes only (the code
    before this fix stored the chunk's rows as it trained on them)."""
    updater = Updater(method="a-gem", **FAST)
    updater.update(digits_scenario.train[0])
    labels: list[int] = []
    sample = updater.memory.sample

    def spy(n: int) -> dict[str, Tensor]:
        rows = sample(n)
        labels.extend(rows["y"].tolist())
        return rows

    updater.memory.sample = spy  # type: ignore[method-assign]
    updater.update(digits_scenario.train[1])
    assert labels and set(labels) <= set(digits_scenario.chunk_classes[0])


def test_agem_projection_changes_training_compared_with_plain_steps(
    digits_scenario: Scenario,
) -> None:
    """Accuracy on the first chunk after the second update: A-GEM keeps more than finetune on
    the same stream (its projection is its only difference)."""
    accuracy = {}
    for method in ("finetune", "a-gem"):
        updater = Updater(method=method, **FAST)
        updater.update(digits_scenario.train[0])
        updater.update(digits_scenario.train[1])
        accuracy[method] = updater.evaluate(digits_scenario.test[0])["accuracy"]
    assert accuracy["a-gem"] > accuracy["finetune"] + 0.3, accuracy
