"""Per-example gradients and their statistics (methods.md section 0.1).

Several methods need the gradient of each example separately, not only the batch mean:
gradient-matching coresets (section 4), selective backprop by gradient matching (section 10), the
EB early-stopping criterion (section 6) and CABS (section 7). This module holds the shared tools:

- ``per_example_grads``: exact gradients of any model with ``torch.func`` (``vmap(grad(...))``),
  memory O(N * P) for N rows and P parameters, computed ``chunk_size`` rows at a time;
- ``last_layer_grads``: the closed form for a softmax cross-entropy on a Linear output layer,
  available from one forward pass (no backward);
- ``last_layer_kernel``: inner products of those closed-form gradients without forming them;
- ``grad_moments``: per-coordinate mean and variance;
- ``gradient_kernel``: the (Na, Nb) matrix of inner products, block by block.

Per-example gradients are of the *per-example* loss (not of the batch mean, so no 1/N factor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ricordo.errors import ConfigError, DataError

__all__ = [
    "flatten_grads",
    "grad_moments",
    "gradient_kernel",
    "last_layer_grads",
    "last_layer_kernel",
    "per_example_grads",
]

PerExample = Mapping[str, Tensor] | Tensor


def per_example_grads(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Exact gradient of ``loss_fn(model(x_i), y_i)`` for every row ``i``, per parameter.

    Returns ``{name: (N, *param.shape)}`` for the parameters named in ``params`` (default: every
    parameter that requires grad, in ``named_parameters`` order); the other parameters and the
    buffers are held fixed. ``loss_fn`` receives the model's output for one row as a batch of one
    (shape ``(1, ...)``) and that row's target (shape ``(1, ...)``) and must return a scalar, e.g.
    ``torch.nn.functional.cross_entropy``. ``chunk_size`` bounds the rows vmapped at once (peak
    activation memory ~ chunk_size single-row passes); results do not depend on it.

    The model runs in its current mode: put it in ``eval()`` when it has BatchNorm (train mode
    mixes rows, methods.md 0.1 pitfall 4, and fails under vmap) or dropout.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y):
        raise DataError(
            "per_example_grads needs tensors x and y with the same number of rows, got "
            f"{_shape(x)} and {_shape(y)}"
        )
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ConfigError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ConfigError(
            f"per_example_grads: the model has no parameters {unknown}; pick names from "
            f"{list(named)[:8]}"
        )
    if not names:
        raise ConfigError("per_example_grads: no parameters to differentiate (none requires grad)")
    wrt = {n: named[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in named.items() if n not in wrt}
    fixed.update(dict(model.named_buffers()))

    def one_loss(weights: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **weights}, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    if len(x) == 0:
        return {n: w.new_zeros((0, *w.shape)) for n, w in wrt.items()}
    per_row = vmap(grad(one_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)
    return dict(per_row(wrt, x, y))


def last_layer_grads(features: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """Closed-form per-example gradient of softmax cross-entropy w.r.t. a Linear output layer.

    For logits ``z = W h + b`` the gradient of ``CE(z, y)`` w.r.t. ``[W | b]`` is
    ``(softmax(z) - onehot(y)) outer [h, 1]``. Returns ``(N, C * (D + 1))``: row ``i`` is the
    ``(C, D + 1)`` matrix flattened row-major, i.e. for each class ``c`` the ``D`` weight entries
    ``dW[c, :]`` then the bias entry ``db[c]`` (``torch.cat([W.grad, b.grad[:, None]], 1)``).
    Masked logits (-inf) get probability 0, hence gradient 0 for those classes.
    """
    residual, augmented = _last_layer_factors(features, logits, y)
    return (residual.unsqueeze(2) * augmented.unsqueeze(1)).flatten(1)


def last_layer_kernel(
    features_a: Tensor,
    logits_a: Tensor,
    y_a: Tensor,
    features_b: Tensor,
    logits_b: Tensor,
    y_b: Tensor,
) -> Tensor:
    """``gradient_kernel(last_layer_grads(a), last_layer_grads(b))`` without the outer products:
    ``<g_i, g_j> = (r_i . r_j) * (h_i . h_j + 1)`` with residuals ``r = softmax(z) - onehot(y)``
    (methods.md 10.2); O(Na * Nb * (C + D)) time and (Na, Nb) memory."""
    r_a, h_a = _last_layer_factors(features_a, logits_a, y_a)
    r_b, h_b = _last_layer_factors(features_b, logits_b, y_b)
    return (r_a @ r_b.T) * (h_a @ h_b.T)


def _last_layer_factors(features: Tensor, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Residuals ``softmax(z) - onehot(y)`` (N, C) and features with a column of ones (N, D+1)."""
    if features.ndim != 2 or logits.ndim != 2 or y.ndim != 1:
        raise DataError(
            "last-layer gradients need features (N, D), logits (N, C) and labels (N,), got "
            f"{_shape(features)}, {_shape(logits)} and {_shape(y)}"
        )
    if not (len(features) == len(logits) == len(y)):
        raise DataError(
            f"last-layer gradients need the same rows in features, logits and labels, got "
            f"{len(features)}, {len(logits)} and {len(y)}"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise DataError(
            f"labels must lie in [0, {logits.shape[1]}) for {logits.shape[1]} logits, got "
            f"{int(y.min())}..{int(y.max())}"
        )
    residual = torch.softmax(logits, dim=1) - F.one_hot(y.long(), logits.shape[1]).to(logits)
    ones = features.new_ones((len(features), 1))
    return residual, torch.cat([features, ones], dim=1)


def flatten_grads(per_example: PerExample) -> Tensor:
    """``(N, P)``: a dict of per-parameter gradients flattened and concatenated in its order."""
    if isinstance(per_example, Tensor):
        if per_example.ndim < 1:
            raise DataError("per-example gradients need a leading row dimension")
        return per_example.reshape(len(per_example), -1)
    parts = list(per_example.values())
    if not parts:
        raise DataError("per-example gradients: got an empty dict")
    rows = len(parts[0])
    if any(len(p) != rows for p in parts):
        raise DataError("per-example gradients: every parameter needs the same number of rows")
    return torch.cat([p.reshape(rows, -1) for p in parts], dim=1)


def grad_moments(per_example: PerExample, *, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """Per-coordinate mean and variance of per-example gradients, over the rows.

    ``per_example`` is ``(N, P...)`` or a dict as ``per_example_grads`` returns (flattened and
    concatenated, ``flatten_grads``). With ``unbiased`` (default; the EB criterion, methods.md
    6 and 0.1) the variance is ``(S2 - N mean^2) / (N - 1)``; ``unbiased=False`` divides by
    ``N`` (the population variance CABS uses, methods.md 7). Both ``(P,)``, in the input's dtype;
    computed from centred values (not ``S2 - N mean^2``, which cancels catastrophically).
    """
    g = flatten_grads(per_example)
    n = len(g)
    if n < (2 if unbiased else 1):
        raise DataError(
            f"grad_moments needs at least {2 if unbiased else 1} rows for the "
            f"{'unbiased' if unbiased else 'population'} variance, got {n}"
        )
    mean = g.mean(0)
    var = ((g - mean) ** 2).sum(0) / (n - 1 if unbiased else n)
    return mean, var


def gradient_kernel(g_a: PerExample, g_b: PerExample, *, block: int = 1024) -> Tensor:
    """``(Na, Nb)`` inner products ``<g_a[i], g_b[j]>`` of two sets of per-example gradients.

    Each argument is ``(N, P...)`` or a dict of per-parameter gradients (same keys on both
    sides). Rows of ``g_a`` are taken ``block`` at a time, and a dict is never concatenated into
    one ``(N, P)`` copy: extra memory is one block's slice per parameter beyond the output.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"gradient_kernel block must be an integer >= 1, got {block!r}")
    parts_a, parts_b = _as_parts(g_a), _as_parts(g_b)
    if parts_a.keys() != parts_b.keys():
        raise DataError(
            f"gradient_kernel: both sides need the same parameters, got {list(parts_a)} and "
            f"{list(parts_b)}"
        )
    rows_a = _rows(parts_a)
    rows_b = _rows(parts_b)
    first = next(iter(parts_a.values()))
    out = first.new_zeros((rows_a, rows_b))
    flat_b = {k: v.reshape(rows_b, -1) for k, v in parts_b.items()}
    for key, a in parts_a.items():
        if a.shape[1:] != parts_b[key].shape[1:]:
            raise DataError(
                f"gradient_kernel: parameter {key!r} has shapes {tuple(a.shape[1:])} and "
                f"{tuple(parts_b[key].shape[1:])}"
            )
        flat_a = a.reshape(rows_a, -1)
        for start in range(0, rows_a, block):
            out[start : start + block] += flat_a[start : start + block] @ flat_b[key].T
    return out


def _as_parts(g: PerExample) -> dict[str, Tensor]:
    if isinstance(g, Tensor):
        if g.ndim < 1:
            raise DataError("per-example gradients need a leading row dimension")
        return {"": g}
    if not g:
        raise DataError("per-example gradients: got an empty dict")
    return dict(g)


def _rows(parts: Mapping[str, Tensor]) -> int:
    rows = {len(v) for v in parts.values()}
    if len(rows) != 1:
        raise DataError("per-example gradients: every parameter needs the same number of rows")
    return rows.pop()


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
