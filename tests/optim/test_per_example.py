"""Per-example gradient tools against single-example backward passes, numpy and dense matmuls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ricordo.errors import ConfigError, DataError
from ricordo.optim import (
    flatten_grads,
    grad_moments,
    gradient_kernel,
    last_layer_grads,
    last_layer_kernel,
    per_example_grads,
)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).double()


def _loop_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    rows: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            rows[n].append(p.grad.clone())
    return {n: torch.stack(g) for n, g in rows.items()}


@pytest.mark.parametrize(
    ("make", "shape"), [(_mlp, (9, 5)), (_cnn, (9, 1, 6, 6))], ids=["mlp", "cnn"]
)
def test_per_example_grads_equal_single_example_backward(make, shape) -> None:
    model = make()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (shape[0],), generator=gen)
    expected = _loop_grads(model, x, y)
    got = per_example_grads(model, F.cross_entropy, x, y)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].shape == (shape[0], *dict(model.named_parameters())[name].shape)
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12)
    # The mean over rows is the gradient of the batch-mean loss.
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name].mean(0), p.grad, rtol=1e-10, atol=1e-12)


def test_chunking_gives_identical_results_and_params_selects() -> None:
    model = _cnn()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(11, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (11,), generator=gen)
    whole = per_example_grads(model, F.cross_entropy, x, y)
    for chunk in (1, 4, 11, 50):
        chunked = per_example_grads(model, F.cross_entropy, x, y, chunk_size=chunk)
        for name in whole:
            # Equal up to float64 rounding: a convolution over 1 or 11 rows may sum differently.
            torch.testing.assert_close(chunked[name], whole[name], rtol=1e-13, atol=1e-15)
    only_head = per_example_grads(model, F.cross_entropy, x, y, params=["3.weight"])
    assert list(only_head) == ["3.weight"]
    assert torch.equal(only_head["3.weight"], whole["3.weight"])


def test_per_example_grads_refuses_bad_input() -> None:
    model = _mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"has no parameters \['nope'\]"):
        per_example_grads(
            model, F.cross_entropy, x, torch.zeros(4, dtype=torch.long), params=["nope"]
        )
    with pytest.raises(DataError, match="same number of rows, got"):
        per_example_grads(model, F.cross_entropy, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="chunk_size must be an integer >= 1"):
        per_example_grads(model, F.cross_entropy, x, torch.zeros(4, dtype=torch.long), chunk_size=0)


def test_last_layer_grads_equal_autograd_of_the_output_layer() -> None:
    model = _mlp()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    head = model[2]
    features = model[1](model[0](x)).detach()
    logits = head(features).detach()
    closed = last_layer_grads(features, logits, y)
    assert closed.shape == (6, 3 * (7 + 1))
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected = torch.cat([head.weight.grad, head.bias.grad[:, None]], dim=1).flatten()
        torch.testing.assert_close(closed[i], expected, rtol=1e-10, atol=1e-12)
    # The factored kernel equals the dense one.
    dense = closed @ closed[:4].T
    torch.testing.assert_close(
        last_layer_kernel(features, logits, y, features[:4], logits[:4], y[:4]), dense
    )


def test_last_layer_grads_refuse_out_of_range_labels() -> None:
    with pytest.raises(DataError, match=r"labels must lie in \[0, 3\) for 3 logits, got 0..3"):
        last_layer_grads(torch.zeros(2, 4), torch.zeros(2, 3), torch.tensor([0, 3]))


def test_grad_moments_match_numpy() -> None:
    gen = torch.Generator().manual_seed(5)
    grads = {
        "w": torch.randn(8, 3, 2, generator=gen, dtype=torch.float64) + 3.0,
        "b": torch.randn(8, 4, generator=gen, dtype=torch.float64),
    }
    flat = np.concatenate([grads["w"].reshape(8, -1).numpy(), grads["b"].numpy()], axis=1)
    mean, var = grad_moments(grads)
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), flat.var(0, ddof=1), rtol=1e-12)
    _, pop = grad_moments(grads, unbiased=False)
    np.testing.assert_allclose(pop.numpy(), flat.var(0, ddof=0), rtol=1e-12)
    assert torch.equal(flatten_grads(grads), torch.from_numpy(flat))
    with pytest.raises(DataError, match="at least 2 rows for the unbiased variance, got 1"):
        grad_moments(torch.ones(1, 3))


def test_gradient_kernel_equals_dense_matmul_for_any_block() -> None:
    gen = torch.Generator().manual_seed(6)
    f64 = torch.float64
    a = {
        "w": torch.randn(7, 2, 3, generator=gen, dtype=f64),
        "b": torch.randn(7, 2, generator=gen, dtype=f64),
    }
    b = {
        "w": torch.randn(5, 2, 3, generator=gen, dtype=f64),
        "b": torch.randn(5, 2, generator=gen, dtype=f64),
    }
    dense = flatten_grads(a) @ flatten_grads(b).T
    for block in (1, 3, 7, 100):
        torch.testing.assert_close(
            gradient_kernel(a, b, block=block), dense, rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(
        gradient_kernel(flatten_grads(a), flatten_grads(b), block=2), dense, rtol=1e-12, atol=1e-12
    )
    with pytest.raises(DataError, match="both sides need the same parameters"):
        gradient_kernel(a, {"w": b["w"]})
