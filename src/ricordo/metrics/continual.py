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
- micro_average_accuracy      = sum_j n[j] A[T-1][j] / sum_j n[j]      (final accuracy, per sample)

``n[j]`` is the number of test samples of chunk ``j``: ``average_accuracy`` weighs every chunk the
same (macro average), ``micro_average_accuracy`` weighs every test sample the same, i.e. it is the
final accuracy on all test chunks pooled; the two differ when chunks have different sizes.

Metrics that need at least two updates are ``None`` for a single update.

The same formulas apply to the task-incremental accuracy matrix (logits masked to the classes of
the chunk being evaluated, task id known), which ``ricordo.bench`` stores next to the class-IL one.
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


def micro_average_accuracy(accuracy: Sequence[Sequence[float]], test_sizes: Sequence[int]) -> float:
    """Final accuracy over all test samples pooled: chunk accuracies weighted by their sizes."""
    a = _matrix(accuracy)
    t = a.shape[0]
    n = np.asarray(test_sizes, dtype=np.float64)
    if n.shape != (t,):
        raise DataError(f"test sizes need one value per chunk ({t}), got shape {n.shape}")
    if (n < 0).any() or n.sum() <= 0:
        raise DataError(
            f"test sizes must be >= 0 with a positive total, got {list(test_sizes)}; "
            "pass the number of test samples of each chunk"
        )
    return float((a[-1] * n).sum() / n.sum())


def summarize(
    accuracy: Sequence[Sequence[float]],
    initial: Sequence[float],
    test_sizes: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """Every metric above, keyed by name (as stored in results.json).

    ``micro_average_accuracy`` is included when ``test_sizes`` (samples per test chunk) is given.
    """
    metrics: dict[str, float | None] = {
        "average_accuracy": average_accuracy(accuracy),
        "average_incremental_accuracy": average_incremental_accuracy(accuracy),
        "learning_accuracy": learning_accuracy(accuracy),
        "forgetting": forgetting(accuracy),
        "backward_transfer": backward_transfer(accuracy),
        "forward_transfer": forward_transfer(accuracy, initial),
    }
    if test_sizes is not None:
        metrics["micro_average_accuracy"] = micro_average_accuracy(accuracy, test_sizes)
    return metrics
