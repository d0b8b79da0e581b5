"""Selective backprop: forward the new batch without gradients, back-propagate a subset of it.

``--selective-backprop STRATEGY --keep-fraction F`` (methods.md section 10). Each step keeps
``k = ceil(F * B)`` of the B new rows (at least 1; the ceiling as Jiang et al. 2019 and the
notes' 10.1, so a small last batch never drops to 0 rows) and the method's ``loss`` sees only them:

- ``loss``: the k rows of highest cross-entropy (deterministic top-k, as the Renate prototype
  ``selective_er.py``; Jiang et al. draw rows with a loss-percentile probability instead).
- ``gradient-matching`` (Balles, Archambeau, Zappella 2023): a weighted subset whose weighted sum
  of last-layer gradients best matches the batch's mean last-layer gradient, chosen by orthogonal
  matching pursuit with non-negative least-squares weights (as GRAD-MATCH; the notes mark the
  paper's exact solver unverified). The loss then weights row j by ``k * w_j``: the weighted mean
  over the k rows is ``sum_j w_j l_j``, whose gradient approximates the full batch's mean
  gradient. The weights are the NNLS solution, not renormalised: their sum (``mean_weight_sum``
  in the report) is 1 for a perfect match and below it when the kept rows cannot reach the mean
  (about 0.26 for 8 of 32 rows with unrelated gradients), which scales the step down like a
  lower learning rate; the notes (10.4) ask to document this rather than hide it.
- ``random``: k rows drawn uniformly with the update's generator (the paper's point: neither of
  the others consistently beats it). It needs no selection forward pass.

The selection forward runs the model in training mode (the same logits the loss sees, with
``--mask-unseen``), under ``torch.no_grad``; BatchNorm running statistics are restored after it
so the kept rows do not count twice. Selection scores use the model's own output layer and
cross-entropy: for a method whose loss is something else (iCaRL's BCE, prompt or expert methods)
they are a proxy.

Compute accounting (TrainReport ``selective_backprop``): ``seen_rows`` new rows, of which
``forward_only_rows`` went through the selection forward and ``kept_rows`` were forwarded again
and back-propagated. ``estimated_saved_flops_fraction`` = 1 - (forward_only + 3 kept) /
(3 seen), taking a backward pass as twice a forward (the usual estimate); it covers the new rows
only (replayed rows and penalties cost the same with or without the option) and is negative
when the extra forward costs more than the rows dropped save (keep fractions above 2/3).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.methods.base import Batch, UpdateContext

STRATEGIES = ("loss", "gradient-matching", "random")
# A backward pass costs about two forward passes (Kaplan et al. 2020; Jiang et al. 2019).
BACKWARD_TO_FORWARD = 2.0


def kept_count(rows: int, keep_fraction: float) -> int:
    """Rows kept of a batch of ``rows``: ``ceil(keep_fraction * rows)``, at least 1."""
    # round() first: 0.3 * 10 is 3.0000000000000004 in floating point, whose ceiling is 4.
    return min(rows, max(1, math.ceil(round(keep_fraction * rows, 9))))


@dataclass
class Selection:
    """Positions of the kept rows in the batch, and their loss weights (None: unweighted)."""

    rows: Tensor
    weight: Tensor | None = None


def top_loss(logits: Tensor, y: Tensor, k: int) -> Selection:
    """The ``k`` rows of highest cross-entropy."""
    losses = F.cross_entropy(logits.float(), y, reduction="none")
    return Selection(torch.topk(losses, k).indices)


def random_rows(rows: int, k: int, generator: torch.Generator) -> Selection:
    """``k`` of ``rows`` drawn uniformly without replacement from ``generator``."""
    return Selection(torch.randperm(rows, generator=generator)[:k])


def gradient_matching(features: Tensor, logits: Tensor, y: Tensor, k: int) -> Selection:
    """A weighted subset of ``k`` rows whose weighted last-layer gradient sum matches the batch's
    mean last-layer gradient: orthogonal matching pursuit with NNLS weights, in kernel form.

    Works on the B x B Gram matrix of the closed-form last-layer gradients
    (``optim.per_example.last_layer_kernel``), never on the C x (D + 1) gradients themselves.
    Weights are ``k * w`` for the NNLS solution ``w`` (see the module docstring).
    """
    from ricordo.optim.per_example import last_layer_kernel

    f, z = features.detach().double(), logits.detach().double()
    kernel = last_layer_kernel(f, z, y, f, z, y)
    rows, weights = omp_nnls(kernel, kernel.mean(dim=1), k)
    return Selection(rows.to(features.device), (k * weights).to(features.device, features.dtype))


def omp_nnls(kernel: Tensor, target: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Greedy (OMP) choice of ``k`` rows and non-negative weights ``w`` minimising
    ``|| sum_j w_j g_j - t ||`` given only ``kernel[i, j] = <g_i, g_j>`` and
    ``target[i] = <g_i, t>``.

    Each step adds the unchosen row best correlated with the residual ``t - G_S w`` (even when
    that correlation is not positive, so that exactly ``k`` rows are chosen: every strategy
    back-propagates the same number of rows; such a row may get weight 0), then re-solves the
    weights of all chosen rows by NNLS, warm-started from the previous weights. In numpy: the
    matrices are at most batch x batch, where torch's per-call overhead would dominate.
    """
    gram = kernel.detach().cpu().double().numpy()
    b = target.detach().cpu().double().numpy()
    chosen: list[int] = []
    weights = np.zeros(0)
    free = np.ones(len(b), dtype=bool)
    for _ in range(k):
        correlation = b - gram[:, chosen] @ weights if chosen else b.copy()
        correlation[~free] = -np.inf
        j = int(np.argmax(correlation))
        chosen.append(j)
        free[j] = False
        weights = nnls_gram(gram[np.ix_(chosen, chosen)], b[chosen], np.append(weights, 0.0))
    return torch.tensor(chosen), torch.from_numpy(weights)


def nnls_gram(
    gram: np.ndarray, b: np.ndarray, start: np.ndarray | None = None, tol: float = 1e-10
) -> np.ndarray:
    """``argmin_{w >= 0} w^T A w - 2 b^T w`` for a positive semi-definite ``A`` (Lawson-Hanson
    active set on the normal equations: ``A = G^T G``, ``b = G^T t`` solve ``min ||G w - t||``).

    ``start``: an optimal solution on a subset of the columns (the others 0), e.g. the previous
    OMP step's weights with a new column appended.
    """
    n = len(b)
    w = np.zeros(n) if start is None else start.astype(np.float64).copy()
    passive = w > 0
    scale = max(float(np.abs(np.diagonal(gram)).max(initial=0.0)), 1e-300)
    for _ in range(3 * n + 3):  # Lawson-Hanson terminates in finitely many steps; a safe cap
        descent = b - gram @ w
        descent[passive] = -np.inf
        if n == 0 or float(descent.max()) <= tol * scale:
            break
        passive[int(np.argmax(descent))] = True
        while True:
            z = np.zeros(n)
            index = np.flatnonzero(passive)
            z[index] = np.linalg.pinv(gram[np.ix_(index, index)]) @ b[index]
            if bool((z[index] > 0).all()):
                w = z
                break
            # Step from w towards z until the first passive weight reaches zero.
            negative = index[z[index] <= 0]
            alpha = float(np.min(w[negative] / (w[negative] - z[negative])))
            w = w + alpha * (z - w)
            passive &= w > tol
            w[~passive] = 0.0
            if not passive.any():
                break
    return np.clip(w, 0.0, None)


class SelectiveBackprop:
    """Chooses each step's subset of the new rows and counts the rows for the TrainReport."""

    def __init__(self, strategy: str, keep_fraction: float) -> None:
        self.strategy = strategy
        self.keep_fraction = keep_fraction
        self.seen_rows = 0
        self.forward_only_rows = 0
        self.kept_rows = 0
        # gradient-matching: sum of each step's NNLS weights w (the step's scale relative to an
        # ordinary step; below 1 when the kept rows cannot match the batch mean), and steps.
        self.weight_sums = 0.0
        self.steps = 0

    def subset(self, batch: Batch, raw: Batch, ctx: UpdateContext) -> tuple[Batch, Batch]:
        """The kept rows of the (augmented) ``batch`` and of the same rows ``raw``."""
        rows = len(batch.y)
        k = kept_count(rows, self.keep_fraction)
        if self.strategy == "random":
            selection = random_rows(rows, k, ctx.generator)
        else:
            with torch.no_grad(), _frozen_batchnorm(ctx.model):
                features, logits = ctx.features_and_logits(batch.x)
            self.forward_only_rows += rows
            if self.strategy == "loss":
                selection = top_loss(logits, batch.y, k)
            else:
                selection = gradient_matching(features, logits, batch.y, k)
        self.seen_rows += rows
        self.kept_rows += k
        self.steps += 1
        if selection.weight is not None:
            self.weight_sums += float(selection.weight.sum()) / k
        return _take(batch, selection), _take(raw, selection)

    def to_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "keep_fraction": self.keep_fraction,
            "steps": self.steps,
            "seen_rows": self.seen_rows,
            "forward_only_rows": self.forward_only_rows,
            "kept_rows": self.kept_rows,
            "estimated_saved_flops_fraction": round(self.saved_fraction(), 4),
            "mean_weight_sum": round(self.weight_sums / self.steps, 4)
            if self.strategy == "gradient-matching" and self.steps
            else None,
        }

    def restore(self, saved: dict[str, object]) -> None:
        """Continue the counts of a checkpoint (``to_dict``'s output)."""
        for name in ("seen_rows", "forward_only_rows", "kept_rows"):
            setattr(self, name, int(saved[name]))  # type: ignore[call-overload]
        self.steps = int(saved["steps"])  # type: ignore[call-overload]
        weight_sum = saved.get("mean_weight_sum")
        if weight_sum is not None:
            self.weight_sums = float(weight_sum) * self.steps  # type: ignore[arg-type]

    def saved_fraction(self) -> float:
        """Estimated share of the new rows' training compute saved (module docstring)."""
        if self.seen_rows == 0:
            return 0.0
        full = (1 + BACKWARD_TO_FORWARD) * self.seen_rows
        spent = self.forward_only_rows + (1 + BACKWARD_TO_FORWARD) * self.kept_rows
        return 1.0 - spent / full


def _take(batch: Batch, selection: Selection) -> Batch:
    rows = selection.rows.to(batch.y.device)
    index = None if batch.index is None else batch.index[selection.rows.cpu()]
    return Batch(batch.x[rows], batch.y[rows], index, selection.weight)


@contextmanager
def _frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics as they were before the block (the selection forward
    would otherwise update them with the whole batch, then again with the kept rows)."""
    saved = [
        (m, [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)])
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]
    try:
        yield
    finally:
        for module, (mean, var, count) in saved:
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(count)
