"""Sorting scenarios: order the samples by a statistic and cut, so the input distribution drifts."""

from __future__ import annotations

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.data.scenarios.base import (
    SCENARIOS,
    Scenario,
    check_args,
    check_fraction,
    info,
    is_int,
    rng,
    too_many_updates,
)
from ricordo.data.scenarios.transforms import rgb_to_hsv
from ricordo.errors import ConfigError, DataError

STATISTICS = ("mean", "hue")
HUE_BINS = 100


def _score(data: ArrayDataset, feature: int | None, statistic: str, data_name: str) -> torch.Tensor:
    """One float per sample: the mean of feature ``feature`` (all features if None), or the
    sample's modal hue bin (of ``HUE_BINS``) for ``statistic="hue"``."""
    x = data.x
    n = len(data)
    if statistic == "hue":
        if x.ndim != 4 or x.shape[1] != 3:
            raise DataError(
                f"statistic 'hue' needs RGB images (N, 3, H, W); {data_name} has features shaped "
                f"{data.feature_shape}; use statistic='mean'"
            )
        hue = rgb_to_hsv(x.clamp(0.0, 1.0))[:, 0].reshape(n, -1)
        bins = (hue * HUE_BINS).long().clamp_(0, HUE_BINS - 1)
        counts = torch.zeros(n, HUE_BINS).scatter_add_(1, bins, torch.ones_like(hue))
        return counts.argmax(1).double()
    if feature is None:
        return x.reshape(n, -1).double().mean(1)
    if x.ndim < 2 or not 0 <= feature < x.shape[1]:
        size = x.shape[1] if x.ndim >= 2 else 1
        raise ConfigError(
            f"option feature={feature} is out of range; {data_name} has {size} features "
            f"(channels for images) along dimension 1, so pick 0..{size - 1}"
        )
    return x[:, feature].reshape(n, -1).double().mean(1)


def _sorted_parts(
    score: torch.Tensor, updates: int, randomness: float, generator: np.random.Generator
) -> list[torch.Tensor]:
    """Indices sorted by score (stable), ``randomness * N / 2`` random pairs swapped, cut into
    ``updates`` contiguous parts of sizes within one."""
    order = torch.sort(score, stable=True).indices.numpy().copy()
    n_swaps = int(randomness * len(order) / 2)
    if n_swaps:
        pos = generator.permutation(len(order))[: 2 * n_swaps].reshape(2, n_swaps)
        first, second = pos
        order[first], order[second] = order[second], order[first]
    return [torch.from_numpy(p.copy()).long() for p in np.array_split(order, updates)]


@SCENARIOS.register("feature-sorting")
def feature_sorting(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    feature: int | None = None,
    statistic: str = "mean",
    randomness: float = 0.0,
) -> Scenario:
    """Gradual covariate drift by sorting: Renate's ``FeatureSortingScenario``.

    Score: ``statistic="mean"`` averages ``x[:, feature]`` (a column of flat data, a channel of
    images; with ``feature=None`` all features, i.e. brightness); ``statistic="hue"`` takes the
    modal hue bin of RGB images (Renate's ``HueShiftScenario``). Train and test are each sorted by
    score, ascending; ``randomness`` in [0, 1] swaps ``randomness * N / 2`` random pairs; then
    each is cut into ``updates`` contiguous equal parts. Chunks keep the sorted order.
    """
    check_args(updates, seed)
    if statistic not in STATISTICS:
        raise ConfigError(
            f"option statistic={statistic!r} is unknown; choose one of: {', '.join(STATISTICS)}"
        )
    if feature is not None and not is_int(feature):
        raise ConfigError(f"option feature must be an integer index or null, got {feature!r}")
    if feature is not None and statistic == "hue":
        raise ConfigError("option feature applies to statistic='mean' only; drop feature=")
    mix = check_fraction("randomness", randomness)
    too_many_updates("feature-sorting", updates, len(train), "samples", data_name)
    train_score = _score(train, feature, statistic, data_name)
    test_score = _score(test, feature, statistic, f"the test set of {data_name}")
    train_parts = _sorted_parts(train_score, updates, mix, rng(seed, 0))
    test_parts = _sorted_parts(test_score, updates, mix, rng(seed, 1))
    chunks = [train.subset(i) for i in train_parts]
    ranges = [
        [float(train_score[i].min()), float(train_score[i].max())] if len(i) else None
        for i in train_parts
    ]
    options = {"feature": feature, "statistic": statistic, "randomness": mix}
    return Scenario(
        name="feature-sorting",
        train=chunks,
        test=[test.subset(i) for i in test_parts],
        chunk_classes=[c.classes() for c in chunks],
        info=info("feature-sorting", updates, seed, options, score_ranges=ranges),
    )
