"""Read the inputs of a shift test: a chunk in any form the loaders take, optionally a seeded
random subsample of its rows (read alone when the chunk is a lazy folder)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ricordo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from ricordo.updater import Updater


def read_inputs(
    source: Any,
    *,
    updater: Updater | None = None,
    name: str = "data",
    target: str | None = None,
    dataset: str | None = None,
    dataset_options: dict[str, Any] | None = None,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """The inputs of ``source`` (rows kept in order) and its row count before subsampling.

    ``source``: a path (``.npy``, ``.npz``, ``.csv``, ``.parquet``; labels, if any, are
    ignored), an array or tensor, an ArrayDataset or LazyDataset, or with ``dataset``
    (``image-folder`` or ``hf``) a folder read sample by sample. With ``updater``, tables are
    read by the columns its model was trained on and texts tokenised by its backbone.
    ``max_samples``: keep that many rows drawn without replacement by ``generator``.
    """
    from ricordo.data.dataset import ArrayDataset
    from ricordo.data.lazy import LazyDataset
    from ricordo.data.loaders import load_features

    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ConfigError(f"max_samples={max_samples!r} must be an integer >= 1 (or None: all)")
    if dataset is not None:
        from ricordo.data.lazy_sources import open_chunk

        source = open_chunk(str(source), dataset, dict(dataset_options or {}), lazy=True)
    elif dataset_options:
        raise ConfigError("dataset options need a dataset: image-folder or hf")
    if isinstance(source, LazyDataset):
        total = len(source)
        index = _subsample(total, max_samples, generator)
        inputs = source.load(torch.arange(total) if index is None else index).x
    else:
        if isinstance(source, ArrayDataset):
            source = source if updater is None else _columns(source, updater, name)
            inputs = source.x
        else:
            inputs = load_features(
                source,
                target=target,
                name=name,
                columns=None if updater is None else updater.feature_names,
                tokenize=None if updater is None else updater.tokenizer,
            )
        total = int(inputs.shape[0])
        index = _subsample(total, max_samples, generator)
        if index is not None:
            inputs = inputs[index]
    if total == 0:
        raise DataError(f"{name} is empty (0 samples); pass a chunk with samples to compare")
    return inputs, total


def _columns(source: Any, updater: Updater, name: str) -> Any:
    names = updater.feature_names
    return source if names is None else source.select_features(names, name=name)


def _subsample(
    total: int, max_samples: int | None, generator: torch.Generator | None
) -> Tensor | None:
    """Sorted positions of a random subset of ``max_samples`` rows, or None to keep all."""
    if max_samples is None or total <= max_samples:
        return None
    return torch.randperm(total, generator=generator)[:max_samples].sort().values
