"""Per-feature KS tests with Bonferroni: scipy's p-values, the correction, the most shifted
features, calibration and power over repeated draws."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import ks_2samp

from ricordo.errors import ConfigError, DataError
from ricordo.shift import ks_test


def samples(shift: torch.Tensor | float, *, n: int, d: int, count: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator) + shift


def test_bonferroni_p_value_from_scipy_per_feature() -> None:
    shift = torch.tensor([0.0, 0.0, 1.2, 0.0, 0.0])
    reference, data = next(samples(shift, n=60, d=5, count=1, seed=0))
    result = ks_test(reference, data, alpha=0.01)
    per_feature = [ks_2samp(data[:, i].numpy(), reference[:, i].numpy()) for i in range(5)]
    p_values = [float(r.pvalue) for r in per_feature]
    assert result.p_value == pytest.approx(min(1.0, 5 * min(p_values)), rel=1e-12)
    assert result.score == pytest.approx(max(float(r.statistic) for r in per_feature))
    assert result.details["min_p_value"] == pytest.approx(min(p_values), rel=1e-12)
    assert result.shifted == (result.p_value <= 0.01)
    assert result.shifted  # a 1.2-sd shift of one feature over 60 rows
    # the most shifted feature comes first: the shifted column 2; then by p-value
    listed = result.details["most_shifted"]
    assert listed[0]["feature"] == 2
    assert [f["p_value"] for f in listed] == sorted(p_values)
    assert listed[0]["p_value"] == pytest.approx(min(p_values), rel=1e-12)
    assert len(listed) == 5


def test_features_are_named_and_the_list_is_capped() -> None:
    reference, data = next(samples(torch.tensor([0.0, 2.0, 0.0]), n=40, d=3, count=1, seed=1))
    result = ks_test(reference, data, feature_names=["age", "income", "height"], top=2)
    listed = [f["feature"] for f in result.details["most_shifted"]]
    assert len(listed) == 2 and listed[0] == "income" and listed[1] in ("age", "height")
    assert result.details["correction"] == "bonferroni"


def test_bonferroni_caps_the_p_value_at_one() -> None:
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    result = ks_test(x, x.clone())
    assert result.p_value == 1.0 and result.score == 0.0 and not result.shifted


def test_false_positive_rate_stays_below_alpha() -> None:
    """Bonferroni keeps the family-wise level at most alpha (conservative): over 200 draws of
    identical distributions at most 10% are flagged (Binomial(200, 0.05): P(> 20) = 0.1%)."""
    flagged = [ks_test(a, b).shifted for a, b in samples(0.0, n=30, d=3, count=200, seed=3)]
    assert sum(flagged) / 200 <= 0.10


def test_power_on_a_moderate_mean_shift() -> None:
    """One standard deviation in each of 3 features, 30 rows per side: found in nearly every
    draw (measured: 99-100 of 100)."""
    found = [ks_test(a, b).shifted for a, b in samples(1.0, n=30, d=3, count=100, seed=4)]
    assert sum(found) / 100 >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"b": torch.randn(5, 2)}, DataError, "the reference sample has 3 features per row but"),
        ({"a": torch.empty(0, 3)}, DataError, "the reference sample has 0 rows; the test needs"),
        ({"alpha": 0}, ConfigError, "alpha=0 must be a significance level in (0, 1)"),
        ({"feature_names": ["a"]}, ConfigError, "1 feature_names for 3 features"),
    ],
)
def test_bad_input_is_one_line(kwargs: dict, error: type, message: str) -> None:
    a = kwargs.pop("a", torch.randn(5, 3))
    b = kwargs.pop("b", torch.randn(5, 3))
    with pytest.raises(error) as raised:
        ks_test(a, b, **kwargs)
    assert str(raised.value).startswith(message), str(raised.value)
