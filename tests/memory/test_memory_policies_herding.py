"""herding_order: iCaRL's exemplar order (first pick nearest the mean, prefixes track the mean)."""

from __future__ import annotations

import pytest
import torch

from ricordo.errors import DataError
from ricordo.memory.herding import herding_order


def clustered(n: int = 300, d: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Skewed data (an exponential cloud) so a random subset's mean is noticeably off.
    return torch.empty(n, d).exponential_(1.0, generator=gen) ** 2


def test_first_pick_is_nearest_the_mean_and_order_is_distinct() -> None:
    f = clustered()
    order = herding_order(f, 50, normalize=False)
    assert order.dtype == torch.int64 and order.shape == (50,)
    assert order.unique().numel() == 50
    nearest = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    assert int(order[0]) == nearest
    # Deterministic, and a longer run extends the shorter one (a priority list).
    assert torch.equal(herding_order(f, 80, normalize=False)[:50], order)


def test_normalize_works_in_the_unit_sphere() -> None:
    f = clustered()
    unit = torch.nn.functional.normalize(f.double(), dim=1)
    assert torch.equal(herding_order(f, 20), herding_order(unit, 20, normalize=False))
    assert int(herding_order(f, 1)[0]) == int(((unit - unit.mean(0)) ** 2).sum(1).argmin())


def test_prefix_means_beat_random_subsets() -> None:
    f = clustered(500)
    mu = f.mean(0)
    order = herding_order(f, 40, normalize=False)
    gen = torch.Generator().manual_seed(1)
    for k in (5, 10, 20, 40):
        herd = float((f[order[:k]].mean(0) - mu).norm())
        randoms = [
            float((f[torch.randperm(500, generator=gen)[:k]].mean(0) - mu).norm())
            for _ in range(200)
        ]
        # Better than the best of 200 random subsets of the same size.
        assert herd < min(randoms), (k, herd, min(randoms))


def test_edge_cases() -> None:
    f = clustered(10)
    assert torch.equal(herding_order(f, 100, normalize=False).sort().values, torch.arange(10))
    assert herding_order(f, 0).numel() == 0
    assert herding_order(torch.empty(0, 4), 5).numel() == 0
    with pytest.raises(DataError, match="2-d"):
        herding_order(torch.zeros(5), 2)
    with pytest.raises(DataError, match="n >= 0"):
        herding_order(f, -1)
    with pytest.raises(DataError, match="NaN"):
        herding_order(torch.full((3, 2), float("nan")), 1)
