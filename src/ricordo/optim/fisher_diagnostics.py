"""True Fisher vs empirical Fisher on a model and a batch, and the natural-gradient directions
each gives (methods.md section 9.2).

Kunstner, Balles & Hennig (2019), "Limitations of the Empirical Fisher Approximation for Natural
Gradient Descent", arXiv 1905.12558. For a classifier ``p_θ(c | x)`` and rows ``(x_n, y_n)``:

- true Fisher ``F = (1/N) Σ_n Σ_c p_θ(c|x_n) ∇log p_θ(c|x_n) ∇log p_θ(c|x_n)ᵀ``: the expectation
  over the model's own predictive distribution, computed *exactly* here by summing over the
  classes (``C`` gradient passes; no sampled labels);
- empirical Fisher ``EF = (1/N) Σ_n ∇log p_θ(y_n|x_n) ∇log p_θ(y_n|x_n)ᵀ`` at the observed labels
  (``= Cov(g) + ḡḡᵀ``). It is not an approximation of ``F`` in general: near a fit it shrinks
  where the model is confident and grows with label noise.

The natural-gradient direction with either is ``(M + δI)⁻¹ ∇L`` (``∇L``: the batch's mean
cross-entropy gradient; ``δ``: damping, 1e-6 as the paper's code); the angle between the two
directions says how far EF-preconditioning strays from natural gradient on this batch. The
Fishers of networks are nearly singular (a softmax Fisher has null directions), and a damping
this small amplifies rounding in them by up to ``1/δ``: the numbers are computed in the model's
dtype, so for angles to trust on a float32 model, pass ``model.double()`` and ``x.double()``
(cheap at the sizes where the full matrix is taken) or a larger damping.

Diagonals reuse :func:`ricordo.methods.fisher.diagonal_fisher` (the estimator EWC uses): its
``empirical`` kind, and its ``mammoth`` kind (``p(y|x) g_y²``) summed over every label ``y``,
which is the exact diagonal of ``F``. Full ``P x P`` matrices (small models, or a few layers via
``params``) come from per-example gradients (:func:`ricordo.optim.per_example_grads`).
Everything runs in eval mode (BatchNorm would couple the rows, dropout add noise); only the
parameters that require grad count, in ``named_parameters`` order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import ConfigError, DataError
from ricordo.methods.fisher import diagonal_fisher
from ricordo.models.head import unwrap
from ricordo.optim.per_example import per_example_grads

DAMPING = 1e-6  # eftk (the paper's code): δ added to the Fisher before solving
MAX_FULL_PARAMETERS = 2048  # full matrices up to this size (2048² float64 = 32 MiB each)


@dataclass
class FisherComparison:
    """What :func:`compare_fisher` measured on one batch (flattened in ``parameters`` order)."""

    parameters: list[str]
    rows: int
    classes: int
    damping: float
    gradient: Tensor  # (P,) mean cross-entropy gradient at the observed labels
    true_diagonal: Tensor  # (P,)
    empirical_diagonal: Tensor  # (P,)
    angle_diagonal: float  # degrees between the diagonal-preconditioned directions
    true_full: Tensor | None = None  # (P, P), float64
    empirical_full: Tensor | None = None
    angle_full: float | None = None  # degrees between the full natural-gradient directions

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (no matrices)."""
        ratio = self.empirical_diagonal.sum() / self.true_diagonal.sum().clamp_min(1e-300)
        return {
            "parameters": int(self.gradient.numel()),
            "rows": self.rows,
            "classes": self.classes,
            "damping": self.damping,
            "trace_true": float(self.true_diagonal.sum()),
            "trace_empirical": float(self.empirical_diagonal.sum()),
            "trace_ratio": float(ratio),
            "angle_diagonal": self.angle_diagonal,
            "angle_full": self.angle_full,
        }


def natural_gradient(fisher: Tensor, gradient: Tensor, damping: float = DAMPING) -> Tensor:
    """``(fisher + damping I)⁻¹ gradient`` in float64: ``fisher`` is a diagonal ``(P,)`` or a
    full ``(P, P)`` matrix."""
    if damping < 0 or not math.isfinite(damping):
        raise ConfigError(f"damping {damping!r} is invalid; expected a finite value >= 0")
    g = gradient.double().reshape(-1)
    m = fisher.double()
    if m.ndim == 1:
        return g / (m + damping)
    if m.shape != (g.numel(), g.numel()):
        raise DataError(f"a Fisher of shape {tuple(m.shape)} does not match {g.numel()} gradients")
    eye = torch.eye(g.numel(), dtype=m.dtype, device=m.device)
    return torch.linalg.solve(m + damping * eye, g)


def natural_gradient_angle(
    fisher_a: Tensor, fisher_b: Tensor, gradient: Tensor, damping: float = DAMPING
) -> float:
    """The angle in degrees between the natural-gradient directions with ``fisher_a`` and
    ``fisher_b`` (each diagonal or full); 0 when they point the same way."""
    a = natural_gradient(fisher_a, gradient, damping)
    b = natural_gradient(fisher_b, gradient, damping)
    norms = a.norm() * b.norm()
    if norms == 0:
        raise DataError(
            "the gradient is zero on this batch: natural-gradient directions are undefined"
        )
    cosine = float((a @ b) / norms)
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def true_fisher(
    model: nn.Module,
    x: Tensor,
    *,
    full: bool = False,
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The exact true Fisher of ``model`` on the rows ``x``: ``(P,)`` diagonal, or ``(P, P)``
    with ``full`` (float64), summing over every class."""
    return _fisher(model, x, None, full=full, params=params, chunk_size=chunk_size)


def empirical_fisher(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    full: bool = False,
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The empirical Fisher of ``model`` at the observed labels ``y``: ``(P,)`` diagonal, or
    ``(P, P)`` with ``full`` (float64)."""
    return _fisher(model, x, y, full=full, params=params, chunk_size=chunk_size)


def compare_fisher(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    full: bool | None = None,
    damping: float = DAMPING,
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> FisherComparison:
    """True vs empirical Fisher of a classifier on the batch ``(x, y)``.

    Diagonals always; the full matrices too when ``full`` (``None``: when the compared
    parameters number at most ``MAX_FULL_PARAMETERS``). ``params`` restricts the comparison to
    some parameters by name (e.g. the output layer of a large model). The angles are between
    the natural-gradient directions ``(M + damping I)⁻¹ ∇L`` with each Fisher ``M``.
    """
    module = unwrap(model)
    names = _names(module, params)
    size = sum(dict(module.named_parameters())[n].numel() for n in names)
    if full is None:
        full = size <= MAX_FULL_PARAMETERS
    gradient = _mean_gradient(module, x, y, names)
    true_diag = true_fisher(module, x, params=names)
    empirical_diag = empirical_fisher(module, x, y, params=names)
    result = FisherComparison(
        parameters=names,
        rows=len(x),
        classes=_classes(module, x),
        damping=damping,
        gradient=gradient,
        true_diagonal=true_diag,
        empirical_diagonal=empirical_diag,
        angle_diagonal=natural_gradient_angle(true_diag, empirical_diag, gradient, damping),
    )
    if full:
        result.true_full = true_fisher(module, x, full=True, params=names, chunk_size=chunk_size)
        result.empirical_full = empirical_fisher(
            module, x, y, full=True, params=names, chunk_size=chunk_size
        )
        result.angle_full = natural_gradient_angle(
            result.true_full, result.empirical_full, gradient, damping
        )
    return result


def _fisher(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    *,
    full: bool,
    params: Iterable[str] | None,
    chunk_size: int | None,
) -> Tensor:
    module = unwrap(model)
    names = _names(module, params)
    if len(x) == 0:
        raise DataError("a Fisher needs at least one row")
    if y is not None and len(y) != len(x):
        raise DataError(f"x has {len(x)} rows but y has {len(y)}")
    if not full:
        return _diagonal(module, x, y, names)
    size = sum(dict(module.named_parameters())[n].numel() for n in names)
    if size > MAX_FULL_PARAMETERS:
        raise ConfigError(
            f"a full Fisher of {size} parameters is too large (at most {MAX_FULL_PARAMETERS}); "
            "take the diagonal (full=False) or fewer parameters (params=['head.weight', ...])"
        )
    with _eval(module):
        cases: list[tuple[Tensor, Tensor | None]] = []
        if y is None:  # every class c, each row's outer product weighted by p(c | x)
            with torch.no_grad():
                probs = F.softmax(module(x).double(), dim=1).cpu()
            for c in range(probs.shape[1]):
                label = torch.full((len(x),), c, dtype=torch.long, device=x.device)
                cases.append((label, probs[:, c]))
        else:
            cases.append((y, None))
        total = torch.zeros(size, size, dtype=torch.float64)
        for target, weight in cases:
            grads = per_example_grads(
                module, F.cross_entropy, x, target, params=names, chunk_size=chunk_size
            )
            g = torch.cat([grads[n].reshape(len(x), -1) for n in names], dim=1).double().cpu()
            if weight is not None:
                g = g * weight.sqrt()[:, None]
            total += g.T @ g
    return total / len(x)


def _diagonal(module: nn.Module, x: Tensor, y: Tensor | None, names: list[str]) -> Tensor:
    """The diagonal by :func:`diagonal_fisher` (it differentiates every trainable parameter;
    ``names`` picks the ones compared)."""
    if y is not None:
        parts = diagonal_fisher(module, x, y, kind="empirical")
    else:
        parts = {}
        for c in range(_classes(module, x)):
            labels = torch.full((len(x),), c, dtype=torch.long, device=x.device)
            term = diagonal_fisher(module, x, labels, kind="mammoth")
            parts = term if not parts else {n: parts[n] + term[n] for n in parts}
    return torch.cat([parts[n].reshape(-1) for n in names]).double()


def _mean_gradient(module: nn.Module, x: Tensor, y: Tensor, names: list[str]) -> Tensor:
    """``∇ mean_n CE(model(x_n), y_n)`` over the named parameters, flattened (float64)."""
    if len(y) != len(x):
        raise DataError(f"x has {len(x)} rows but y has {len(y)}")
    named = dict(module.named_parameters())
    with _eval(module):
        logits = module(x)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, [named[n] for n in names])
    return torch.cat([g.reshape(-1) for g in grads]).double().cpu()


def _names(module: nn.Module, params: Iterable[str] | None) -> list[str]:
    named = dict(module.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    if params is None:
        names = trainable
    else:
        names = list(params)
        unknown = [n for n in names if n not in trainable]
        if unknown:
            raise ConfigError(f"no trainable parameters named {unknown}; pick from {trainable[:8]}")
    if not names:
        raise ConfigError("the model has no trainable parameters to take a Fisher of")
    return names


def _classes(module: nn.Module, x: Tensor) -> int:
    with torch.no_grad(), _eval(module):
        return int(module(x[:1]).shape[1])


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block, the previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
