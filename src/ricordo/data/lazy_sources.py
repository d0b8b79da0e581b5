"""Sources of lazy chunks (``ricordo.data.lazy``): image folders, Hugging Face datasets and
``.npz`` files whose samples are read one at a time, so a chunk need not fit in memory.

Each is a small map-style torch Dataset of ``(x, y)`` items wrapped in a ``LazyDataset`` with its
labels read up front without decoding a sample: the image folder's file list, the HF label
column, the ``.npz`` array ``y``. ``open_lazy`` picks one for the CLI's ``--lazy``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ricordo.data.image_folder import (
    IMAGE_SUFFIXES,
    MODES,
    SPLITS,
    _convert,
    _files,
    _is_split,
    _open,
    _size,
    image_folder_classes,
)
from ricordo.data.lazy import LazyDataset
from ricordo.data.split import stratified_split
from ricordo.errors import ConfigError, DataError

PathLike = str | os.PathLike[str]
_GRAY = ("1", "L", "LA")
# --dataset names --lazy reads sample by sample, and the .npz files it reads without a name.
LAZY_DATASETS = ("image-folder", "hf")


# ------------------------------------------------------------------------------ image folder


class ImageFiles(Dataset[tuple[np.ndarray, int]]):
    """Image files decoded (and resized to ``hw``) one at a time, as uint8 (C, H, W)."""

    def __init__(
        self, paths: list[Path], labels: list[int], mode: str, hw: tuple[int, int], root: Path
    ) -> None:
        self.paths, self.labels, self.mode, self.hw, self.root = paths, labels, mode, hw, root
        self.targets = labels  # what LazyDataset reads instead of decoding every image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path = self.paths[i]
        with _open(path) as image:
            pixels = _convert(image, self.mode, self.hw, str(path.relative_to(self.root)))
        return pixels.astype(np.float32) / 255.0, self.labels[i]


def lazy_image_folder(
    root: PathLike,
    size: Any = None,
    split: str = "all",
    *,
    mode: str = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> LazyDataset:
    """An image folder (layout of ``load_image_folder``, same split) read image by image.

    Only the file list is read now. ``mode`` "auto" follows the first image (L when it is
    grayscale, else RGB; the eager loader checks every image); without ``size`` every image
    must have the first one's size (a different one is refused when it is read).
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is invalid; choose one of {', '.join(SPLITS)}")
    if mode not in MODES:
        raise DataError(f"mode={mode!r} is invalid; choose one of {', '.join(MODES)}")
    root = Path(root).expanduser()
    classes = image_folder_classes(root)
    if _is_split(root):
        folders = ["train", "test"] if split == "all" else [split]
        listed = [_files(root / f, classes) for f in folders]
        paths = [p for found, _ in listed for p in found]
        labels = [label for _, found in listed for label in found]
    else:
        paths, labels = _files(root, classes)
        if split != "all":
            train, test = stratified_split(
                torch.tensor(labels, dtype=torch.int64), test_fraction, seed
            )
            keep = (train if split == "train" else test).tolist()
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    if not paths:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}/<class>/; "
            "check the folder layout"
        )
    with _open(paths[0]) as first:
        if mode == "auto":
            mode = "L" if first.mode in _GRAY else "RGB"
        hw = _size(size) or (first.size[1], first.size[0])
    return LazyDataset(
        ImageFiles(paths, labels, mode, hw, root), labels=labels, name=f"image folder {root}"
    )


# ---------------------------------------------------------------------------- Hugging Face


class HFRows(Dataset[tuple[Any, int]]):
    """Rows of a Hugging Face dataset, one decoded at a time (images resized to ``hw``)."""

    def __init__(
        self,
        dataset: Any,
        column: str,
        labels: np.ndarray,
        image: tuple[str, tuple[int, int]] | None,
    ) -> None:
        self.dataset, self.column, self.labels, self.image = dataset, column, labels, image
        self.targets = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        value = self.dataset[int(i)][self.column]
        if self.image is not None:
            mode, hw = self.image
            value = _convert(value, mode, hw, f"row {i} ({self.column})").astype(np.float32) / 255.0
        return np.asarray(value), int(self.labels[i])


def lazy_hf(
    name_or_path: PathLike,
    split: str | None = None,
    x_column: str | None = None,
    y_column: str | None = None,
    *,
    mode: str = "auto",
    size: Any = None,
) -> LazyDataset:
    """One split of a Hugging Face dataset read row by row (labels: its label column, read
    now; features: one column, an image or an array, decoded per row). The columns are chosen
    as by ``load_hf``; several numeric columns stacked as features need the eager loader."""
    from ricordo.data.hf import _kind, _labels, _pick_split, _x_columns, open_hf

    name = f"Hugging Face dataset {str(name_or_path)!r}"
    dataset = _pick_split(open_hf(name_or_path), split, name)
    columns = list(dataset.column_names)
    kinds = {c: _kind(dataset.features[c]) for c in columns}
    if y_column is None:
        from ricordo.data.hf import _LABEL_NAMES

        y_column = next((c for c in _LABEL_NAMES if c in columns), None)
    if y_column is None or y_column not in columns:
        raise DataError(
            f"{name} has no label column {y_column!r}; pass y_column= (columns: "
            f"{', '.join(columns)})"
        )
    chosen = _x_columns(x_column, columns, kinds, y_column, name)
    if len(chosen) != 1 or kinds[chosen[0]] not in ("image", "array", "number"):
        raise DataError(
            f"{name}: lazy reading takes one image or array column as x_column (got {chosen}); "
            "read several numeric columns without --lazy"
        )
    column = chosen[0]
    labels = _labels(dataset, y_column, kinds[y_column], name).numpy()
    image = None
    if kinds[column] == "image":
        first = dataset[0][column]
        if mode == "auto":
            mode = "L" if first.mode in _GRAY else "RGB"
        image = (mode, _size(size) or (first.size[1], first.size[0]))
        rows = HFRows(dataset, column, labels, image)
    else:
        rows = HFRows(dataset.with_format("numpy", columns=[column]), column, labels, None)
    return LazyDataset(rows, labels=labels, name=name)


# ------------------------------------------------------------------------------------ .npz


class NpzRows(Dataset[tuple[np.ndarray, int]]):
    """Rows of the array ``x`` of an uncompressed ``.npz`` (``np.savez``), read with ``pread``
    at their offset: nothing is mapped, so the file's pages never count as this process's
    memory. Each process (DataLoader worker) opens the file itself."""

    def __init__(
        self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], labels: np.ndarray
    ) -> None:
        self.path, self.offset, self.dtype, self.shape = path, offset, dtype, shape
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.targets = labels
        self._fd: tuple[int, int] | None = None  # (pid, descriptor)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        data = os.pread(self._fd[1], self.row_bytes, self.offset + int(i) * self.row_bytes)
        row = np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])
        return row, int(self.targets[i])

    def __getstate__(self) -> dict[str, Any]:  # a worker started by spawn opens its own file
        return {**self.__dict__, "_fd": None}


def lazy_npz(path: PathLike, name: str | None = None) -> LazyDataset:
    """A ``.npz`` with arrays ``x`` and ``y`` whose ``x`` is read row by row from the file
    (``y`` is read now). ``x`` must be stored uncompressed (``np.savez``, not
    ``savez_compressed``) in C order."""
    from numpy.lib import format as npy_format

    from ricordo.data.loaders import _labels

    path = Path(path).expanduser()
    label = name or path.name
    if not path.is_file():
        raise DataError(f"file {str(path)!r} not found; check the path")
    try:
        with zipfile.ZipFile(path) as archive:
            names = {info.filename: info for info in archive.infolist()}
            if "x.npy" not in names or "y.npy" not in names:
                raise DataError(
                    f"{label} needs arrays 'x' and 'y'; save with np.savez(path, x=, y=)"
                )
            info = names["x.npy"]
            if info.compress_type != zipfile.ZIP_STORED:
                raise DataError(
                    f"{label} stores 'x' compressed, which cannot be read row by row; re-save it "
                    "with np.savez (not savez_compressed), or read it without --lazy"
                )
            with archive.open("y.npy") as member:
                y = npy_format.read_array(member, allow_pickle=False)
        with path.open("rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
            if local[:4] != b"PK\x03\x04":
                raise DataError(f"{label} is not a readable .npz file; re-save it with np.savez")
            start = (
                info.header_offset
                + 30
                + int.from_bytes(local[26:28], "little")
                + int.from_bytes(local[28:30], "little")
            )
            handle.seek(start)
            version = npy_format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy format version {version} (re-save with np.savez)")
            read_header = getattr(npy_format, f"read_array_header_{version[0]}_0")
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise DataError(
            f"{label} is not a readable .npz file ({error}); re-save it with np.savez"
        ) from None
    if fortran or dtype.hasobject or dtype.kind not in "biuf" or not shape:
        raise DataError(
            f"{label} array 'x' ({dtype}, {'Fortran' if fortran else 'C'} order) cannot be read "
            "row by row; save a numeric C-order array"
        )
    held = info.file_size - (offset - start)
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > held:
        raise DataError(f"{label} declares more array data than it holds; the file is corrupt")
    labels = _labels(y, label, label).numpy()
    if len(labels) != shape[0]:
        raise DataError(
            f"{label} has {shape[0]} feature rows but {len(labels)} labels; pass one label per row"
        )
    return LazyDataset(
        NpzRows(path, offset, dtype, tuple(shape), labels), labels=labels, name=label
    )


def open_chunk(
    data: str, dataset: str | None, options: dict[str, Any], *, lazy: bool
) -> LazyDataset | Any:
    """The CLI's chunk given ``--dataset`` and/or ``--lazy``: with ``--lazy`` an ``.npz`` file
    (``x`` read row by row), or the folder ``data`` of ``dataset`` ``image-folder`` or ``hf``
    read sample by sample; without it that folder read into memory (``load_image_folder``,
    ``load_hf``). ``options``: the ``--dataset-option``s, the readers' keyword arguments."""
    if dataset is None:
        if not lazy or Path(data).suffix.lower() != ".npz":
            raise ConfigError(
                f"--lazy reads a .npz file, or a folder with --dataset "
                f"{' or '.join(LAZY_DATASETS)}; {data} is neither (CSV and Parquet tables are "
                "read into memory: drop --lazy)"
            )
        if options:
            raise ConfigError("--dataset-option needs --dataset; a .npz file takes none")
        return lazy_npz(data, name=data)
    if dataset not in LAZY_DATASETS:
        raise ConfigError(
            f"--dataset {dataset!r} is not a folder update reads; choose "
            f"{' or '.join(LAZY_DATASETS)} (other datasets: ricordo data NAME --out DIR, then "
            "--data DIR/train-K.npz)"
        )
    if lazy:
        reader: Any = lazy_image_folder if dataset == "image-folder" else lazy_hf
    else:
        from ricordo.data.hf import load_hf
        from ricordo.data.image_folder import load_image_folder

        reader = load_image_folder if dataset == "image-folder" else load_hf
    try:
        return reader(data, **options)
    except TypeError as error:
        raise ConfigError(f"--dataset {dataset}: {error}; check --dataset-option") from None
