"""Built-in digits: shape, range, a deterministic stratified split, and the registry lookup."""

from __future__ import annotations

import pytest
import torch

from ricordo.data import DATASETS, load_builtin
from ricordo.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    return load_builtin("digits")


def test_digits_shapes_and_dtypes(digits) -> None:
    train, test = digits
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    assert train.feature_shape == (1, 8, 8) and test.feature_shape == (1, 8, 8)
    for ds in (train, test):
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
        ds.validate()


def test_digits_stratified(digits) -> None:
    train, test = digits
    assert train.classes() == list(range(10)) and test.classes() == list(range(10))
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # ~20% of ~180 per class


def test_digits_deterministic(digits) -> None:
    again = load_builtin("digits")
    for a, b in zip(digits, again, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_digits_split_disjoint(digits) -> None:
    train, test = digits
    rows = {tuple(r) for r in train.x.flatten(1).tolist()}
    # digits has a few duplicate images, so allow a handful of coincidences, not a leak
    assert sum(tuple(r) in rows for r in test.x.flatten(1).tolist()) < 10


def test_registry() -> None:
    assert "digits" in DATASETS.names()
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'; choose one of: cifar10, "):
        load_builtin("svhn")
