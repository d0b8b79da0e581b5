"""Hugging Face ``datasets``: a saved dataset folder, a local data folder, or a hub name.

Needs the optional ``datasets`` package (``pip install 'ricordo[nlp]'``), imported only here.
Numeric, array and image columns become ``x`` (images as float32 (N, C, H, W) in [0, 1]);
text columns need a feature extractor, which this loader does not have yet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.data.image_folder import images_to_array
from ricordo.data.split import stratified_split
from ricordo.errors import DataError

PathLike = str | os.PathLike[str]
_LABEL_NAMES = ("label", "labels", "y", "target", "fine_label")
_IMAGE_NAMES = ("image", "img", "pixel_values")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "loading Hugging Face datasets needs the 'datasets' package; pip install 'ricordo[nlp]'"
        ) from None
    return datasets


def open_hf(name_or_path: PathLike, **kwargs: Any) -> Any:
    """The ``Dataset``/``DatasetDict`` at a saved folder (``save_to_disk``), a data folder or
    file path (``load_dataset(path)``), or a hub name (``load_dataset(name)``, needs network).
    """
    ds = _datasets()
    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return ds.load_from_disk(str(path))
        if path.exists():
            return ds.load_dataset(str(path), **kwargs)
        return ds.load_dataset(str(name_or_path), **kwargs)
    except Exception as error:  # datasets raises many unrelated types (hub, IO, format)
        where = "local path" if path.exists() else "hub name (needs network access)"
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"cannot load Hugging Face dataset {str(name_or_path)!r} as a {where} ({message}); "
            "pass a folder written by save_to_disk, a data folder, or a hub dataset name"
        ) from None


def _pick_split(data: Any, split: str | None, name: str) -> Any:
    ds = _datasets()
    if isinstance(data, ds.DatasetDict):
        splits = list(data)
        if split is None:
            if len(splits) == 1:
                return data[splits[0]]
            split = "train"
        if split not in data:
            raise DataError(f"{name} has no split {split!r}; available splits: {', '.join(splits)}")
        return data[split]
    if split is not None:
        raise DataError(
            f"{name} is a single dataset without splits; drop split={split!r} (or save a "
            "DatasetDict with train/test splits)"
        )
    return data


def load_hf(
    name_or_path: PathLike,
    split: str | None = None,
    x_column: str | Sequence[str] | None = None,
    y_column: str | None = None,
    *,
    mode: str = "auto",
    size: Any = None,
) -> ArrayDataset:
    """One split of a Hugging Face dataset as an ``ArrayDataset``.

    ``split``: the split of a DatasetDict (default: its only split, else "train"). ``y_column``
    defaults to the first of label/labels/y/target present; ``x_column`` to an image column if
    there is one, else the remaining column if only one, else all numeric scalar columns
    (stacked as features, like a CSV). Image columns take ``mode``/``size`` as image folders.
    """
    data = open_hf(name_or_path)
    name = f"Hugging Face dataset {str(name_or_path)!r}"
    return _convert(_pick_split(data, split, name), name, x_column, y_column, mode, size)


def load_hf_splits(
    root: PathLike | None,
    download: bool = False,
    *,
    name: str | None = None,
    x_column: str | Sequence[str] | None = None,
    y_column: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    test_fraction: float = 0.2,
    seed: int = 0,
    mode: str = "auto",
    size: Any = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of the dataset ``hf``: ``root`` is a local dataset folder, ``name`` a hub name.

    A dataset without ``test_split`` is split stratified (``test_fraction``, ``seed``).
    """
    if (root is None) == (name is None):
        raise DataError(
            "dataset 'hf' needs exactly one of root=FOLDER (a saved or local dataset, CLI: "
            "--data-dir) or name=HUB_NAME (CLI: --dataset-option name=...)"
        )
    source = name if name is not None else root
    assert source is not None
    if root is not None and not Path(root).expanduser().exists():
        raise DataError(f"Hugging Face dataset folder {root} not found; check --data-dir")
    data = open_hf(source)
    label = f"Hugging Face dataset {str(source)!r}"
    ds = _datasets()
    if isinstance(data, ds.DatasetDict) and test_split in data:
        train = _convert(
            _pick_split(data, train_split, label), label, x_column, y_column, mode, size
        )
        test = _convert(_pick_split(data, test_split, label), label, x_column, y_column, mode, size)
        return train, test
    whole = _convert(
        _pick_split(data, train_split if isinstance(data, ds.DatasetDict) else None, label),
        label,
        x_column,
        y_column,
        mode,
        size,
    )
    train_idx, test_idx = stratified_split(whole.y, test_fraction, seed)
    return whole.subset(train_idx), whole.subset(test_idx)


# ------------------------------------------------------------------------------- columns


def _kind(feature: Any) -> str:
    ds = _datasets()
    if isinstance(feature, ds.Image):
        return "image"
    if isinstance(feature, ds.ClassLabel):
        return "number"
    if isinstance(feature, ds.Value):
        dtype = str(feature.dtype)
        if dtype.startswith(("int", "uint", "float", "bool")):
            return "number"
        if dtype in ("string", "large_string"):
            return "text"
        return "other"
    if isinstance(feature, ds.Translation | ds.TranslationVariableLanguages):
        return "text"
    if isinstance(feature, list) or hasattr(feature, "feature"):
        return "array"
    if type(feature).__name__.startswith("Array"):
        return "array"
    return "other"


def _convert(
    dataset: Any,
    name: str,
    x_column: str | Sequence[str] | None,
    y_column: str | None,
    mode: str,
    size: Any,
) -> ArrayDataset:
    columns = list(dataset.column_names)
    kinds = {c: _kind(dataset.features[c]) for c in columns}
    if y_column is None:
        y_column = next((c for c in _LABEL_NAMES if c in columns), None)
        if y_column is None:
            raise DataError(
                f"{name} has no label column named {', '.join(_LABEL_NAMES)}; pass "
                f"y_column= (columns: {', '.join(columns)})"
            )
    elif y_column not in columns:
        raise DataError(f"{name} has no column {y_column!r}; columns: {', '.join(columns)}")
    x_columns = _x_columns(x_column, columns, kinds, y_column, name)
    for c in x_columns:
        if kinds[c] == "text":
            raise DataError(
                f"{name} column {c!r} holds text; text needs a feature extractor (tokenizer or "
                "embedding model), which is not supported yet: embed the text into numeric "
                "columns first, or pick numeric/image columns with x_column="
            )
        if kinds[c] == "other":
            raise DataError(
                f"{name} column {c!r} has unsupported type {dataset.features[c]}; pick numeric, "
                "array or image columns with x_column="
            )
    y = _labels(dataset, y_column, kinds[y_column], name)
    if len(x_columns) == 1 and kinds[x_columns[0]] == "image":
        column = x_columns[0]
        images = dataset.with_format(None, columns=[column])[:][column]
        names = [f"{name} row {i} ({column})" for i in range(len(images))]
        pixels = images_to_array(images, mode=mode, size=size, names=names)
        x = torch.from_numpy(pixels).to(torch.float32).div_(255.0)
        return ArrayDataset(x, y)
    if any(kinds[c] == "image" for c in x_columns):
        raise DataError(f"{name}: an image column must be the only x_column; got {x_columns}")
    if len(x_columns) == 1:
        x = _array(dataset, x_columns[0], name)
    else:
        bad = [c for c in x_columns if kinds[c] != "number"]
        if bad:
            raise DataError(
                f"{name}: several x columns must all be numeric scalars; {bad} are not "
                "(pass one array column as x_column=)"
            )
        x = np.stack([_array(dataset, c, name) for c in x_columns], axis=1)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), y)


def _x_columns(
    x_column: str | Sequence[str] | None,
    columns: list[str],
    kinds: dict[str, str],
    y_column: str,
    name: str,
) -> list[str]:
    if x_column is not None:
        chosen = [x_column] if isinstance(x_column, str) else list(x_column)
        missing = [c for c in chosen if c not in columns]
        if missing or not chosen:
            raise DataError(
                f"{name} has no column(s) {missing or chosen}; columns: {', '.join(columns)}"
            )
        return chosen
    rest = [c for c in columns if c != y_column]
    images = [c for c in rest if kinds[c] == "image"]
    if images:
        preferred = [c for c in _IMAGE_NAMES if c in images]
        return [preferred[0] if preferred else images[0]]
    if len(rest) == 1:
        return rest
    numbers = [c for c in rest if kinds[c] == "number"]
    if numbers:
        return numbers
    raise DataError(
        f"{name}: cannot tell which columns are the features; pass x_column= "
        f"(columns: {', '.join(columns)})"
    )


def _array(dataset: Any, column: str, name: str) -> np.ndarray:
    values = dataset.with_format("numpy", columns=[column])[:][column]
    array = np.asarray(values)
    if array.dtype == object:
        raise DataError(
            f"{name} column {column!r} has rows of different lengths; pad them to one shape"
        )
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{name} column {column!r} has dtype {array.dtype}, not numbers; encode it first"
        )
    return array


def _labels(dataset: Any, column: str, kind: str, name: str) -> torch.Tensor:
    if kind != "number":
        raise DataError(
            f"{name} label column {column!r} is not integer class ids "
            f"({dataset.features[column]}); "
            "map the labels to ids 0..K-1 first (e.g. dataset.class_encode_column)"
        )
    y = _array(dataset, column, name)
    if y.ndim != 1:
        raise DataError(f"{name} label column {column!r} has shape {y.shape}; expected 1-D")
    if y.dtype.kind == "f" and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DataError(
            f"{name} label column {column!r} holds non-integer values; labels must be "
            "class ids 0..K-1"
        )
    return torch.from_numpy(y.astype(np.int64))
