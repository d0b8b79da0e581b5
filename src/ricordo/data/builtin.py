"""Built-in datasets that need no download, so examples and tests run offline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.registry import Registry

DATASETS: Registry[Callable[[], tuple[ArrayDataset, ArrayDataset]]] = Registry("dataset")


@DATASETS.register("digits")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    """sklearn's bundled 8x8 digits as (N, 1, 8, 8) in [0, 1], fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x = (images.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=0.2, random_state=0, stratify=y
    )
    return (
        ArrayDataset(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])),
        ArrayDataset(torch.from_numpy(x[test_idx]), torch.from_numpy(y[test_idx])),
    )


def load_builtin(name: str) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) split of built-in dataset ``name``; unknown names list the known."""
    return DATASETS.get(name)()
