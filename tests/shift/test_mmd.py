"""The MMD two-sample test: exact statistics and p-values against brute force, calibration
(false positives near alpha on identical distributions), power on a moderate mean shift."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ricordo.errors import ConfigError, DataError
from ricordo.shift import median_bandwidth, mmd_statistics, mmd_test


def brute_force_mmd(x: torch.Tensor, group: torch.Tensor, bandwidth: float) -> float:
    """Gretton et al.'s unbiased MMD^2 from the full kernel matrix, diagonal left out."""
    kernel = torch.exp(-(torch.cdist(x, x) ** 2) / (2 * bandwidth**2))
    a, b = kernel[group][:, group], kernel[~group][:, ~group]
    n0, n1 = int(group.sum()), int((~group).sum())
    within_a = (a.sum() - a.diagonal().sum()) / (n0 * (n0 - 1))
    within_b = (b.sum() - b.diagonal().sum()) / (n1 * (n1 - 1))
    return float(within_a + within_b - 2 * kernel[group][:, ~group].mean())


def draws(shift: float, *, n: int, d: int, count: int, seed: int):
    """``count`` pairs of samples N(0, I) and N(shift, I), seeded."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator) + shift


@pytest.mark.parametrize("block_elements", [11, 2**24])  # many strips of 1 row; one strip
def test_statistics_equal_brute_force(block_elements: int) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(11, 3, generator=generator, dtype=torch.float64)
    groups = torch.zeros(6, 11, dtype=torch.bool)
    for k in range(6):  # unequal group sizes 2..7
        groups[k, torch.randperm(11, generator=generator)[: k + 2]] = True
    got = mmd_statistics(x, groups, 1.3, block_elements=block_elements)
    expected = torch.tensor([brute_force_mmd(x, g, 1.3) for g in groups], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)
    # float32 keeps the statistics to float32 accuracy (the kernel is shifted before the sums)
    single = mmd_statistics(x.float(), groups, 1.3, block_elements=block_elements)
    torch.testing.assert_close(single, expected, rtol=0, atol=1e-6)


def test_p_value_equals_the_exhaustive_permutation_test() -> None:
    """n0 = n1 = 4: all 70 splits give the exact permutation p-value; 20,000 random
    permutations land within 0.015 of it (5 standard errors)."""
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    data = torch.randn(4, 2, generator=generator, dtype=torch.float64) + 0.8
    pooled = torch.cat([reference, data])
    bandwidth = median_bandwidth(pooled)
    splits = torch.zeros(70, 8, dtype=torch.bool)
    for k, members in enumerate(itertools.combinations(range(8), 4)):
        splits[k, list(members)] = True
    stats = [brute_force_mmd(pooled, split, bandwidth) for split in splits]
    observed = brute_force_mmd(pooled, torch.arange(8) < 4, bandwidth)
    exact = sum(s >= observed - 1e-12 for s in stats) / 70
    assert 0.05 < exact < 0.5  # a case where the p-value is neither tiny nor 1

    result = mmd_test(reference, data, permutations=20_000, seed=0)
    assert result.score == pytest.approx(observed, abs=1e-12)
    assert result.details["bandwidth"] == pytest.approx(bandwidth)
    assert result.p_value == (1 + result.details["exceedances"]) / (1 + 20_000)
    assert abs(result.p_value - exact) < 0.015


def test_median_bandwidth_is_the_median_distance_of_distinct_pairs() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])  # distances 1 3 7 2 6 4: median 3.5
    assert median_bandwidth(x) == 3.5
    # mostly duplicates: the median of the non-zero distances, not 0
    assert median_bandwidth(torch.tensor([[0.0]] * 5 + [[2.0]])) == 2.0
    assert median_bandwidth(torch.zeros(4, 3)) == 1.0
    # larger samples: the median of a seeded subsample of rows
    big = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0))
    sub = median_bandwidth(big, max_samples=500, generator=torch.Generator().manual_seed(1))
    again = median_bandwidth(big, max_samples=500, generator=torch.Generator().manual_seed(1))
    assert sub == again
    assert sub == pytest.approx(float(np.median(torch.pdist(big[:1500]).numpy())), rel=0.05)


def test_false_positive_rate_is_near_alpha_on_identical_distributions() -> None:
    """200 draws of two samples of N(0, I): the test rejects about 5% of them. The rejections
    of a level-0.05 test are Binomial(200, 0.05): P(> 20) = 0.1%, P(< 2) = 0.04%."""
    rejected = [
        mmd_test(a, b, permutations=99, seed=k).shifted
        for k, (a, b) in enumerate(draws(0.0, n=20, d=3, count=200, seed=0))
    ]
    assert 0.01 <= sum(rejected) / 200 <= 0.10


def test_power_on_a_moderate_mean_shift() -> None:
    """A shift of one standard deviation per feature (3 features, 20 rows per side) is found in
    nearly every draw (measured: 99 of 100)."""
    found = [
        mmd_test(a, b, permutations=99, seed=k).shifted
        for k, (a, b) in enumerate(draws(1.0, n=20, d=3, count=100, seed=1))
    ]
    assert sum(found) / 100 >= 0.9


def test_result_fields_and_seed() -> None:
    a, b = next(draws(0.3, n=30, d=4, count=1, seed=2))
    result = mmd_test(a, b, permutations=50, alpha=0.1, seed=7)
    assert (result.detector, result.alpha) == ("mmd", 0.1)
    assert (result.n_reference, result.n_data) == (30, 30)
    assert result.shifted == (result.p_value <= 0.1)
    assert result.details["permutations"] == 50
    assert result.details["bandwidth_source"] == "median heuristic on 60 of 60 pooled rows"
    assert mmd_test(a, b, permutations=50, alpha=0.1, seed=7) == result  # same seed, same result
    assert 1 / 51 <= result.p_value <= 1
    # identical samples: every permutation ties with the observed split, p = 1
    same = mmd_test(a, a.clone(), permutations=20)
    assert same.p_value == 1.0 and not same.shifted
    # a given bandwidth is used as is
    assert mmd_test(a, b, permutations=5, bandwidth=2.5).details["bandwidth"] == 2.5


def test_blocks_do_not_change_the_result() -> None:
    a, b = next(draws(0.2, n=40, d=5, count=1, seed=4))
    whole = mmd_test(a.double(), b.double(), permutations=30)
    strips = mmd_test(a.double(), b.double(), permutations=30, block_elements=80 * 7)
    assert strips.p_value == whole.p_value
    assert math.isclose(strips.score, whole.score, rel_tol=0, abs_tol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"b": torch.randn(5, 4)}, DataError, "the reference sample has 3 features per row but"),
        ({"a": torch.randn(1, 3)}, DataError, "the reference sample has 1 rows; the test needs"),
        ({"b": torch.full((5, 3), float("nan"))}, DataError, "the data sample contains NaN"),
        ({"alpha": 1.5}, ConfigError, "alpha=1.5 must be a significance level in (0, 1)"),
        ({"permutations": 0}, ConfigError, "permutations=0 must be an integer >= 1"),
        ({"bandwidth": -1.0}, ConfigError, "bandwidth=-1.0 must be a positive number"),
        ({"a": [[1.0, 2.0, 3.0]] * 3}, DataError, "the reference sample is a list; pass a tensor"),
    ],
)
def test_bad_input_is_one_line(kwargs: dict, error: type, message: str) -> None:
    a = kwargs.pop("a", torch.randn(5, 3))
    b = kwargs.pop("b", torch.randn(5, 3))
    with pytest.raises(error) as raised:
        mmd_test(a, b, **kwargs)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)
