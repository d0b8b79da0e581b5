"""Diagonal Fisher information from per-example gradients, and parameter bookkeeping for the
regularisation methods (EWC, online EWC, SI).

Two estimators (see reference methods.md §9.2; Kunstner, Balles & Hennig 2019, "Limitations of
the Empirical Fisher Approximation for Natural Gradient Descent"):

- ``true``: ``F = E_x E_{ŷ ~ p_θ(·|x)} [(∇_θ log p_θ(ŷ|x))²]`` with ``ŷ`` *sampled from the model's
  own predictive distribution*. This is the Fisher of EWC's Laplace argument; for a softmax
  output it equals the diagonal of the generalised Gauss-Newton matrix.
- ``empirical``: ``EF = E_{(x,y)} [(∇_θ log p_θ(y|x))²]`` at the observed labels. It is *not*
  an approximation of the Fisher in general: on examples the model fits well the gradient at
  the observed label is near zero, so EF reports little curvature exactly where the model is
  confident, and it reflects label noise elsewhere.
- ``mammoth``: ``E_{(x,y)} [p_θ(y|x) (∇_θ log p_θ(y|x))²]``, what Mammoth's ``ewc_on`` computes:
  the observed label's term of the true Fisher's sum over labels, so it is at most both the true
  and the empirical Fisher. Its use is that a λ tuned in Mammoth means the same penalty here.

Both square *per-example* gradients (torch.func ``vmap(grad(...))``). Squaring the gradient of a
mini-batch mean, as Avalanche's EWCPlugin does, estimates neither: it is about ``B`` times
smaller when per-example gradients are weakly correlated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.models.head import unwrap  # noqa: F401  (re-exported for the regularisers)

FISHER_KINDS = ("true", "empirical", "mammoth")
_GRAD_BUDGET = 1 << 24  # floats of per-example gradients held at once (64 MiB)


def diagonal_fisher(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    kind: str = "true",
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    draws: int = 1,
) -> dict[str, Tensor]:
    """Diagonal Fisher of every trainable parameter, averaged over the rows of ``x``.

    ``kind="true"`` draws ``draws`` labels per row from ``softmax(logits)`` with ``generator``;
    ``kind="empirical"`` uses ``y``, and ``kind="mammoth"`` weights each row's squared gradient
    at ``y`` by the probability the model gives ``y``. The model runs in eval mode (BatchNorm
    would otherwise couple the examples, and dropout would add noise).
    """
    if kind not in FISHER_KINDS:
        raise ConfigError(f"fisher={kind!r} is invalid; expected one of {FISHER_KINDS}")
    if kind != "true" and y is None:
        raise ConfigError(f"the {kind} Fisher needs the labels y")
    module = unwrap(model)
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in module.named_parameters() if not p.requires_grad}
    fixed.update(dict(module.named_buffers()))
    device = next(iter(params.values())).device

    def example_loss(weights: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(module, {**weights, **fixed}, (xi.unsqueeze(0),))
        return F.cross_entropy(logits.float(), yi.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    size = sum(p.numel() for p in params.values())
    rows = max(1, min(batch_size, _GRAD_BUDGET // max(1, size * draws)))
    was_training = module.training
    module.eval()
    try:
        for start in range(0, len(x), rows):
            xb = x[start : start + rows].to(device)
            if kind == "true":
                with torch.no_grad():
                    probs = F.softmax(module(xb).float(), dim=1).cpu()
                labels = torch.multinomial(probs, draws, replacement=True, generator=generator)
                yb = labels.T.reshape(-1).to(device)  # draw-major, matching xb.repeat below
                xb = xb.repeat(draws, *([1] * (xb.ndim - 1)))
            else:
                assert y is not None
                yb = y[start : start + rows].to(device)
            weight = None
            if kind == "mammoth":  # p(y|x) of the observed label, a constant per row
                with torch.no_grad():
                    weight = F.softmax(module(xb).float(), dim=1).gather(1, yb[:, None])[:, 0]
            for name, g in per_example(params, xb, yb).items():
                squared = g.float().pow(2)
                if weight is not None:
                    squared = squared * weight.view(-1, *([1] * (squared.ndim - 1)))
                total[name] += squared.sum(0)
    finally:
        module.train(was_training)
    count = max(1, len(x) * (draws if kind == "true" else 1))
    return {n: t / count for n, t in total.items()}


def grow_to(tensor: Tensor, shape: torch.Size) -> Tensor:
    """``tensor`` zero-padded to ``shape`` (a grown output layer: new rows start unregularised)."""
    if tensor.shape == shape:
        return tensor
    if tensor.ndim != len(shape) or any(a > b for a, b in zip(tensor.shape, shape, strict=True)):
        raise ConfigError(
            f"a regularised parameter changed shape from {tuple(tensor.shape)} to {tuple(shape)}; "
            "only growing the output layer is supported"
        )
    out = tensor.new_zeros(shape)
    out[tuple(slice(0, s) for s in tensor.shape)] = tensor
    return out


def quadratic_penalty(
    model: nn.Module, weight: dict[str, Tensor], anchor: dict[str, Tensor]
) -> Tensor:
    """``Σ_k weight_k (θ_k - anchor_k)²`` over the parameters named in ``weight``."""
    total = torch.zeros(())
    for name, p in unwrap(model).named_parameters():
        if name in weight:
            term = (weight[name] * (p.float() - anchor[name]).pow(2)).sum()
            total = total.to(term.device) + term
    return total


def split_state(tensors: dict[str, Tensor], *prefixes: str) -> list[dict[str, Tensor]]:
    """Inverse of saving dicts as ``{prefix}.{name}`` keys in one flat tensor file."""
    out: list[dict[str, Tensor]] = [{} for _ in prefixes]
    for key, value in tensors.items():
        prefix, _, name = key.partition(".")
        out[prefixes.index(prefix)][name] = value
    return out
