"""Herding selection (Rebuffi et al. 2017, iCaRL, Algorithm 4; Welling 2009, "Herding").

Exemplars are picked one at a time so that the mean of the picked feature vectors stays as close
as possible to the mean of all of them; the resulting order is a priority list (a prefix of it is
the best subset of that size), which is why iCaRL can shrink a class's exemplar set by truncation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.errors import DataError

__all__ = ["herding_order"]


def herding_order(features: Tensor, n: int, *, normalize: bool = True) -> Tensor:
    """Indices (int64, CPU) of ``min(n, len(features))`` distinct rows in herding order.

    Step k picks the row ``i`` minimising ``|mu - (s + f_i) / k|`` where ``mu`` is the mean of
    all rows and ``s`` the sum of the rows picked before; so the first pick is the row closest to
    the mean. ``normalize`` L2-normalises each row first, as iCaRL does with its features. Ties go
    to the lowest index, so the order is deterministic. Cost O(n * N * d), in float64.
    """
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise DataError(f"herding needs a 2-d (rows, dims) feature tensor, got {shape}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"herding needs a number of picks n >= 0, got {n!r}")
    f = features.detach().to("cpu", torch.float64)
    if normalize:
        f = F.normalize(f, dim=1)
    if not bool(torch.isfinite(f).all()):
        raise DataError("herding features contain NaN or infinite values")
    count = min(n, f.shape[0])
    picked = torch.empty(count, dtype=torch.int64)
    if count == 0:
        return picked
    mu = f.mean(0)
    squares = (f * f).sum(1)  # |f_i|^2
    taken = torch.zeros(f.shape[0], dtype=torch.bool)
    total = torch.zeros_like(mu)
    for k in range(1, count + 1):
        # |k mu - s - f_i|^2 = |k mu - s|^2 - 2 (k mu - s).f_i + |f_i|^2: argmin over i of the last
        # two terms, one matrix-vector product per pick.
        target = k * mu - total
        score = squares - 2 * (f @ target)
        score[taken] = float("inf")
        best = int(torch.argmin(score))
        picked[k - 1] = best
        taken[best] = True
        total += f[best]
    return picked
