"""Per-feature two-sample Kolmogorov-Smirnov tests with a Bonferroni correction (Rabanser et
al. 2019, "Failing loudly"; Renate's KS detector, ``reference/methods.md`` section 12.2).

Each feature gets scipy's two-sample KS test (``scipy.stats.ks_2samp``, its default exact or
asymptotic method); the data count as shifted when the smallest p-value times the number of
features is at most alpha. Bonferroni is conservative when features are many and correlated
(e.g. 384 encoder features): reduce the dimension first, or use the MMD test.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ricordo.errors import ConfigError
from ricordo.shift.result import ShiftResult
from ricordo.shift.samples import as_samples, check_alpha

# How many of the most shifted features a result lists.
TOP_FEATURES = 5


def ks_test(
    reference: Any,
    data: Any,
    *,
    alpha: float = 0.05,
    feature_names: Sequence[str] | None = None,
    top: int = TOP_FEATURES,
) -> ShiftResult:
    """Test each feature of ``data`` (N1, D) against the same feature of ``reference`` (N0, D).

    ``p_value`` is the Bonferroni-corrected ``min(1, D * min_i p_i)``; ``score`` the largest
    KS statistic (the largest gap between the two empirical CDFs of one feature, in [0, 1]).
    ``details["most_shifted"]`` lists the ``top`` features with the smallest p-values (ties:
    larger statistic first), named by ``feature_names`` (else their column index).
    """
    from scipy.stats import ks_2samp

    alpha = check_alpha(alpha)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ConfigError(f"top={top!r} must be an integer >= 0")
    ref, new = as_samples(reference, data, min_rows=1)
    features = ref.shape[1]
    if feature_names is not None and len(feature_names) != features:
        raise ConfigError(
            f"{len(feature_names)} feature_names for {features} features; pass one per column"
        )
    ref_np, new_np = ref.cpu().double().numpy(), new.cpu().double().numpy()
    statistics: list[float] = []
    p_values: list[float] = []
    with warnings.catch_warnings():
        # scipy falls back from its exact method to the asymptotic one on its own; say nothing.
        warnings.filterwarnings("ignore", message=".*Exact calculation unsuccessful.*")
        for i in range(features):
            result = ks_2samp(new_np[:, i], ref_np[:, i])
            statistics.append(float(result.statistic))
            p_values.append(float(result.pvalue))
    p_value = min(1.0, features * min(p_values))
    order = sorted(range(features), key=lambda i: (p_values[i], -statistics[i]))
    names = [str(n) for n in feature_names] if feature_names is not None else None
    most_shifted = [
        {
            "feature": names[i] if names is not None else i,
            "statistic": statistics[i],
            "p_value": p_values[i],
        }
        for i in order[:top]
    ]
    return ShiftResult(
        detector="ks",
        score=max(statistics),
        p_value=p_value,
        shifted=p_value <= alpha,
        alpha=alpha,
        n_reference=int(ref.shape[0]),
        n_data=int(new.shape[0]),
        details={
            "statistic": "largest per-feature KS statistic",
            "correction": "bonferroni",
            "features": features,
            "min_p_value": min(p_values),
            "most_shifted": most_shifted,
        },
    )
