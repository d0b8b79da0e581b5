"""Named datasets: the bundled digits (offline), standard vision sets from local files, image
folders and Hugging Face datasets; each loader returns a (train, test) pair of ArrayDatasets.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.data.hf import load_hf_splits
from ricordo.data.image_folder import load_image_folder_splits
from ricordo.data.vision import load_cifar10, load_cifar100, load_fashion_mnist, load_mnist
from ricordo.errors import ConfigError
from ricordo.registry import Registry

# loader(root, download, **options) -> (train, test)
DatasetLoader = Callable[..., tuple[ArrayDataset, ArrayDataset]]
DATASETS: Registry[DatasetLoader] = Registry("dataset", plugins="ricordo.datasets")


@DATASETS.register("digits")
def digits(
    root: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """sklearn's bundled 8x8 digits as (N, 1, 8, 8) in [0, 1], fixed stratified 80/20 split.

    Bundled with scikit-learn: ``root`` and ``download`` are accepted and ignored.
    """
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


DATASETS.register("mnist")(load_mnist)
DATASETS.register("fashion-mnist")(load_fashion_mnist)
DATASETS.register("cifar10")(load_cifar10)
DATASETS.register("cifar100")(load_cifar100)
DATASETS.register("image-folder")(load_image_folder_splits)
DATASETS.register("hf")(load_hf_splits)


def dataset_options(name: str) -> list[str]:
    """The extra keyword options dataset ``name`` takes (besides ``root`` and ``download``)."""
    params = inspect.signature(DATASETS.get(name)).parameters
    return [p for p in params if p not in ("root", "download")]


def load_builtin(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    **options: Any,
) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) split of dataset ``name``; unknown names list the known.

    ``root``: the data folder (default ``$RICORDO_DATA`` or ``~/.cache/ricordo/datasets``; a
    dataset looks in ``root/<name>`` and then ``root``). ``download``: fetch missing files from
    the official URLs and verify their checksums. ``options``: per-dataset keywords, e.g.
    ``labels="coarse"`` for cifar100 or ``size=(32, 32)`` for image-folder.
    """
    loader = DATASETS.get(name)
    known = dataset_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"dataset {name!r} has no option(s) {unknown}; "
            f"its options: {', '.join(known) or 'none'}"
        )
    params = inspect.signature(loader).parameters
    options = {k: _coerce(name, k, v, params[k].default) for k, v in options.items()}
    return loader(root=root, download=download, **options)


def _coerce(dataset: str, key: str, value: Any, default: Any) -> Any:
    """A CLI string converted to the type of the option's default (bool, int or float)."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError(value)
        if isinstance(default, (int, float)):
            return type(default)(value)
    except ValueError:
        raise ConfigError(
            f"dataset {dataset!r} option {key}={value!r} is not a valid {type(default).__name__}"
        ) from None
    return value
