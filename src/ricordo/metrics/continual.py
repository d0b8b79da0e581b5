"""Continual-learning metrics computed from the accuracy matrix — every formula in one place.

Notation: ``A[i][j]`` is the accuracy on the test set of chunk ``j`` after update ``i``
(``T`` updates, so ``A`` is T x T; entries with j > i are measured on chunks not trained yet).
``b[j]`` is the accuracy on chunk ``j`` of the model before any update (for forward transfer).

- average_accuracy            = mean_j A[T-1][j]                       (final accuracy, all chunks)
- average_incremental_accuracy = mean_i ( mean_{j<=i} A[i][j] )        (Rebuffi et al., iCaRL)
- learning_accuracy           = mean_i A[i][i]                         (plasticity)
- forgetting                  = mean_{j<T-1} ( max_{j<=i<T-1} A[i][j] - A[T-1][j] )  (Chaudhry 2018)
- backward_transfer           = mean_{j<T-1} ( A[T-1][j] - A[j][j] )   (Lopez-Paz & Ranzato 2017)
- forward_transfer            = mean_{j>0} ( A[j-1][j] - b[j] )        (Lopez-Paz & Ranzato 2017)

Metrics that need at least two updates are ``None`` for a single update.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ricordo.errors import DataError


def _matrix(accuracy: Sequence[Sequence[float]]) -> np.ndarray:
    matrix = np.asarray(accuracy, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise DataError(f"the accuracy matrix must be square T x T, got shape {matrix.shape}")
    return matrix


def average_accuracy(accuracy: Sequence[Sequence[float]]) -> float:
    return float(_matrix(accuracy)[-1].mean())


def average_incremental_accuracy(accuracy: Sequence[Sequence[float]]) -> float:
    a = _matrix(accuracy)
    return float(np.mean([a[i, : i + 1].mean() for i in range(a.shape[0])]))


def learning_accuracy(accuracy: Sequence[Sequence[float]]) -> float:
    return float(np.diag(_matrix(accuracy)).mean())


def forgetting(accuracy: Sequence[Sequence[float]]) -> float | None:
    a = _matrix(accuracy)
    t = a.shape[0]
    if t < 2:
        return None
    return float(np.mean([a[j : t - 1, j].max() - a[t - 1, j] for j in range(t - 1)]))


def backward_transfer(accuracy: Sequence[Sequence[float]]) -> float | None:
    a = _matrix(accuracy)
    t = a.shape[0]
    if t < 2:
        return None
    return float(np.mean([a[t - 1, j] - a[j, j] for j in range(t - 1)]))


def forward_transfer(accuracy: Sequence[Sequence[float]], initial: Sequence[float]) -> float | None:
    a = _matrix(accuracy)
    t = a.shape[0]
    b = np.asarray(initial, dtype=np.float64)
    if b.shape != (t,):
        raise DataError(f"initial accuracies need one value per chunk ({t}), got {b.shape}")
    if t < 2:
        return None
    return float(np.mean([a[j - 1, j] - b[j] for j in range(1, t)]))


def summarize(
    accuracy: Sequence[Sequence[float]], initial: Sequence[float]
) -> dict[str, float | None]:
    """Every metric above, keyed by name (as stored in results.json)."""
    return {
        "average_accuracy": average_accuracy(accuracy),
        "average_incremental_accuracy": average_incremental_accuracy(accuracy),
        "learning_accuracy": learning_accuracy(accuracy),
        "forgetting": forgetting(accuracy),
        "backward_transfer": backward_transfer(accuracy),
        "forward_transfer": forward_transfer(accuracy, initial),
    }
