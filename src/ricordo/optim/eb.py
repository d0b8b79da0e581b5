"""The EB criterion: early stopping without a validation set (methods.md section 6).

Mahsereci, Balles, Lassner & Hennig (2017), "Early Stopping without a Validation Set",
arXiv 1703.09580. From the per-example gradients ``g_b`` of a training batch of ``B`` rows over
``D`` parameters, with mean ``ḡ_k`` and unbiased variance ``σ̂²_k`` per coordinate::

    EB = 1 - (B / D) * Σ_k ḡ_k² / (σ̂²_k + ε)          stop when EB > 0

Why: by the central limit theorem the batch gradient is about ``N(∇L, Σ/B)``; where the gradient
of the true risk is zero, each ``B ḡ_k² / σ_k²`` has expectation 1, so once their mean falls below
1 the observed gradient is indistinguishable from the noise of the finite sample, and further
descent fits that noise.

The paper's formula has no ``ε``; cockpit's ``EarlyStopping`` quantity adds ``ε = 1e-5`` to the
variance so that dead coordinates (variance 0) stay finite. That constant is not small next to
the variances of a small network's gradients: on the built-in digits MLP (256, 128) after 18
epochs on a 2-class chunk, 95 % of the coordinates' variances over a 64-row batch were below
1e-5 (37 % exactly 0), and with it the statistic read +0.50 (stop) where without it it read -2.9
(keep going, counting every coordinate; -5.2 over the nonzero-variance ones). Our default is
therefore the paper's formula (``epsilon=0``) with the coordinates whose variance is 0 left out
of the sum and of ``D``: their rows all agree, nearly always on 0 (weights of an always-zero
input, dead ReLU units), and the ratio is undefined. ``epsilon=1e-5`` (``--eb-epsilon``)
computes cockpit's version over all ``D``.

The per-step value is noisy, and how much the paper smooths it is not recorded in our notes;
:class:`EBStopper` smooths it with an exponential moving average whose weight on the newest value
is 0.2, the smoothing cockpit's plotter draws over its EB gauge (``EMA_alpha``), and stops when
the smoothed value is above 0. ``smoothing=1`` is the unsmoothed per-step rule.

The criterion was derived for plain SGD (cockpit refuses other optimizers); the statistic only
needs gradients, so it is computed alongside any optimizer here, with that caveat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import DataError
from ricordo.optim.per_example import (
    grad_moments,
    last_layer_grads,
    per_example_grads,
)

EB_EPSILON = 0.0  # the paper's formula; cockpit (quantities/early_stopping.py) adds 1e-5
EB_SMOOTHING = 0.2  # cockpit CockpitPlotter.EMA_alpha, the EMA drawn over the EB gauge


def eb_statistic(
    mean: Tensor, variance: Tensor, batch_size: int, epsilon: float = EB_EPSILON
) -> float:
    """``1 - (B / D) Σ_k mean_k² / (variance_k + ε)`` over ``D`` coordinates.

    ``variance`` is the unbiased per-coordinate variance of the per-example gradients
    (``grad_moments``); ``batch_size`` is ``B``, the rows they came from. ``epsilon > 0``
    (cockpit): every coordinate counts. ``epsilon = 0`` (the paper): coordinates of variance 0
    are left out (``D`` counts the others); if none is left, the value is 1 (stop).
    """
    total, count = _ratio_sum(mean, variance, epsilon)
    return _eb(total, count, batch_size)


def eb_from_grads(per_example: Mapping[str, Tensor] | Tensor, epsilon: float = EB_EPSILON) -> float:
    """The EB value of one batch's per-example gradients (``(B, ...)`` or a dict of them).

    Moments are taken parameter by parameter (``grad_moments``, unbiased), never concatenated
    into one ``(B, D)`` copy.
    """
    parts = [per_example] if isinstance(per_example, Tensor) else list(per_example.values())
    if not parts:
        raise DataError("the EB criterion needs per-example gradients of at least one parameter")
    total, count = 0.0, 0
    for g in parts:
        mean, variance = grad_moments(g)  # unbiased: (S2 - B ḡ²) / (B - 1)
        part_total, part_count = _ratio_sum(mean, variance, epsilon)
        total, count = total + part_total, count + part_count
    return _eb(total, count, len(parts[0]))


def _ratio_sum(mean: Tensor, variance: Tensor, epsilon: float) -> tuple[float, int]:
    """``Σ_k mean_k² / (variance_k + ε)`` and the number of coordinates it counts."""
    mean, variance = mean.double().reshape(-1), variance.double().reshape(-1)
    if epsilon == 0:
        informative = variance > 0
        mean, variance = mean[informative], variance[informative]
    return float((mean.pow(2) / (variance + epsilon)).sum()), mean.numel()


def _eb(total: float, count: int, batch_size: int) -> float:
    if count == 0:  # every coordinate left out: the rows' gradients all agree
        return 1.0
    return 1.0 - batch_size / count * total


def eb_per_layer(
    per_example: Mapping[str, Tensor], epsilon: float = EB_EPSILON
) -> dict[str, float]:
    """The EB value of each parameter on its own: a diagnostic of which layers still learn
    signal (the criterion is separable by coordinate, methods.md 6.2)."""
    return {name: eb_from_grads(g, epsilon) for name, g in per_example.items()}


def batch_eb(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    layers: str = "all",
    allowed_classes: list[int] | None = None,
    epsilon: float = EB_EPSILON,
    chunk_size: int | None = None,
) -> float:
    """The EB value of a classifier's cross-entropy on the batch ``(x, y)``, at its weights now.

    ``layers="all"``: exact per-example gradients of every parameter that requires grad
    (``vmap``, ``chunk_size`` rows at a time). ``layers="last"``: the output layer only, in
    closed form from one forward pass (``(softmax - onehot) ⊗ [features, 1]``): much cheaper,
    and a different statistic (``D`` is the head's size). ``allowed_classes``: the classes that
    compete (``--mask-unseen``); the others' logits are -inf. Runs the model in eval mode, since
    BatchNorm in train mode couples the rows (methods.md 0.1) and dropout adds noise.
    """
    if len(x) < 2:
        raise DataError(f"the EB criterion needs a batch of at least 2 rows, got {len(x)}")
    from ricordo.models.head import features_and_logits, unwrap

    module = unwrap(model)
    was_training = module.training
    module.eval()
    try:
        if layers == "last":
            with torch.no_grad():
                features, logits = features_and_logits(module, x)
                logits = _mask(logits.float(), allowed_classes)
                grads: Mapping[str, Tensor] | Tensor = last_layer_grads(features.float(), logits, y)
        else:

            def loss(out: Tensor, target: Tensor) -> Tensor:
                return F.cross_entropy(_mask(out.float(), allowed_classes), target)

            grads = per_example_grads(module, loss, x, y, chunk_size=chunk_size)
    finally:
        module.train(was_training)
    return eb_from_grads(grads, epsilon)


def _mask(logits: Tensor, allowed: list[int] | None) -> Tensor:
    if allowed is None:
        return logits
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[[c for c in allowed if c < logits.shape[-1]]] = True
    return logits.masked_fill(~keep, float("-inf"))


@dataclass
class EBStopper:
    """The loop's EB bookkeeping: the smoothed value, and when and why it stopped."""

    smoothing: float = EB_SMOOTHING
    smoothed: float | None = None
    evaluations: int = 0
    stopped_step: int | None = None

    def observe(self, value: float, step: int) -> bool:
        """Take the batch's EB ``value`` measured at ``step``; True when the update should stop."""
        if self.smoothed is None:
            self.smoothed = value
        else:
            self.smoothed = self.smoothing * value + (1 - self.smoothing) * self.smoothed
        self.evaluations += 1
        if self.smoothed > 0:
            self.stopped_step = step
            return True
        return False
