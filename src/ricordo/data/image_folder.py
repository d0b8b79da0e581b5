"""Image folders: one sub-folder per class of PNG/JPEG files, read with Pillow into tensors.

``root/<class>/*.png`` (class ids follow the sorted folder names), optionally pre-split as
``root/train/<class>/...`` and ``root/test/<class>/...``; without that split a deterministic
stratified one is made. Images become float32 (N, C, H, W) in [0, 1], C = 1 (L) or 3 (RGB).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.data.split import stratified_split
from ricordo.errors import DataError

PathLike = str | os.PathLike[str]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MODES = ("auto", "RGB", "L")
SPLITS = ("all", "train", "test")
_GRAY = ("1", "L", "LA")


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow; pip install pillow") from None
    return Image


def _size(size: int | str | Sequence[int] | None) -> tuple[int, int] | None:
    """(H, W) from an int, a pair, or a string such as "32", "32,32" or "32x32" (the CLI)."""
    if size is None:
        return None
    try:
        given = size
        if isinstance(given, str):
            given = [int(v) for v in given.lower().replace("x", ",").split(",")]
        hw = (int(given), int(given)) if isinstance(given, (int, np.integer)) else tuple(given)
        if len(hw) == 1:
            hw = (hw[0], hw[0])
        ok = len(hw) == 2 and min(int(v) for v in hw) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"size={size!r} is invalid; pass (height, width) with positive values")
    return int(hw[0]), int(hw[1])


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_split(root: Path) -> bool:
    train, test = (root / "train").is_dir(), (root / "test").is_dir()
    if train != test:
        have, missing = ("train", "test") if train else ("test", "train")
        raise DataError(
            f"{root} has a {have}/ folder but no {missing}/ folder; add {missing}/ with the "
            "same class folders, or put the class folders directly under the root"
        )
    return train


def image_folder_classes(root: PathLike) -> list[str]:
    """Class names of an image folder; class id ``i`` is ``image_folder_classes(root)[i]``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; pass a folder with one folder per class")
    if _is_split(root):
        names = sorted(set(_subfolders(root / "train")) | set(_subfolders(root / "test")))
    else:
        names = _subfolders(root)
    if not names:
        raise DataError(
            f"image folder {root} has no class folders; put images in root/<class>/ "
            "(e.g. root/cat/1.png, root/dog/2.png)"
        )
    return names


def _files(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        directory = folder / name
        if not directory.is_dir():
            continue
        found = sorted(
            p
            for p in directory.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        )
        paths += found
        labels += [label] * len(found)
    return paths, labels


def _decide(
    modes: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    names: Sequence[str],
    mode: str,
    size: Any,
) -> tuple[str, tuple[int, int]]:
    """The output mode and (H, W) for images of these PIL modes and (W, H) sizes."""
    if mode not in MODES:
        raise DataError(f"mode={mode!r} is invalid; choose one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "L" if all(m in _GRAY for m in modes) else "RGB"
    hw = _size(size)
    if hw is not None:
        return mode, hw
    first: dict[tuple[int, int], str] = {}
    for wh, name in zip(sizes, names, strict=True):
        first.setdefault(wh, name)
        if len(first) > 1:
            (w0, h0), (w1, h1) = list(first)
            raise DataError(
                f"images differ in size: {first[(w0, h0)]} is {h0}x{w0} but {name} is "
                f"{h1}x{w1} (HxW); pass size=(H, W) (CLI: --dataset-option size=H,W) to resize them"
            )
    w, h = sizes[0] if sizes else (0, 0)
    return mode, (h, w)


def _convert(image: Any, mode: str, hw: tuple[int, int], name: str) -> np.ndarray:
    """One PIL image as uint8 (C, H, W) in ``mode``, resized (bilinear) to ``hw`` if needed."""
    try:
        converted = image.convert(mode)
        if converted.size != (hw[1], hw[0]):
            converted = converted.resize((hw[1], hw[0]), _pil().Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
    except OSError as error:
        raise DataError(f"cannot decode {name} ({error}); fix or remove the file") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def images_to_array(
    images: Sequence[Any], *, mode: str = "auto", size: Any = None, names: Sequence[str] = ()
) -> np.ndarray:
    """Stack PIL images as uint8 (N, C, H, W); ``names`` label them in error messages.

    ``mode`` "auto" gives L (one channel) when every image is grayscale, else RGB. Without
    ``size`` all images must share one size; with it each is resized (bilinear).
    """
    names = list(names) or [f"image {i}" for i in range(len(images))]
    mode, hw = _decide([im.mode for im in images], [im.size for im in images], names, mode, size)
    out = np.empty((len(images), 1 if mode == "L" else 3, *hw), dtype=np.uint8)
    for i, (im, name) in enumerate(zip(images, names, strict=True)):
        out[i] = _convert(im, mode, hw, name)
    return out


def _open(path: Path) -> Any:
    try:
        return _pil().open(path)  # lazy: reads the header only
    except OSError as error:
        raise DataError(f"cannot read image {path} ({error}); fix or remove the file") from None


def _read(paths: list[Path], mode: str, size: Any, root: Path) -> np.ndarray:
    """Decode image files in two passes (headers, then pixels), one open file at a time."""
    names = [str(p.relative_to(root)) for p in paths]
    modes, sizes = [], []
    for path in paths:
        with _open(path) as im:
            modes.append(im.mode)
            sizes.append(im.size)
    mode, hw = _decide(modes, sizes, names, mode, size)
    out = np.empty((len(paths), 1 if mode == "L" else 3, *hw), dtype=np.uint8)
    for i, (path, name) in enumerate(zip(paths, names, strict=True)):
        with _open(path) as im:
            out[i] = _convert(im, mode, hw, name)
    return out


def load_image_folder(
    root: PathLike,
    size: int | Sequence[int] | None = None,
    split: str = "all",
    *,
    mode: str = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArrayDataset:
    """Read an image folder as an ``ArrayDataset`` (see the module docstring for the layout).

    ``split``: "all", "train" or "test". With ``train/`` and ``test/`` folders those are used;
    otherwise a stratified split holds out ``test_fraction`` of each class (fixed by ``seed``).
    Class names: ``image_folder_classes(root)``.
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is invalid; choose one of {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    classes = image_folder_classes(root)
    if _is_split(root):
        if split == "all":
            return ArrayDataset.concat(list(_presplit(root, classes, mode, size)))
        return _load(root / split, classes, mode, size, root)
    data = _load(root, classes, mode, size, root)
    if split == "all":
        return data
    train, test = stratified_split(data.y, test_fraction, seed)
    return data.subset(train if split == "train" else test)


def load_image_folder_splits(
    root: PathLike | None,
    download: bool = False,
    *,
    size: int | Sequence[int] | None = None,
    mode: str = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of an image folder: the dataset ``image-folder`` (``root`` is required)."""
    if root is None:
        raise DataError(
            "dataset 'image-folder' needs root=FOLDER (CLI: --data-dir FOLDER) with one "
            "sub-folder of images per class"
        )
    if download:
        raise DataError("dataset 'image-folder' reads local files only; drop --download")
    root = Path(root).expanduser()
    classes = image_folder_classes(root)
    if _is_split(root):
        return _presplit(root, classes, mode, size)
    data = _load(root, classes, mode, size, root)
    train_idx, test_idx = stratified_split(data.y, test_fraction, seed)
    return data.subset(train_idx), data.subset(test_idx)


def _presplit(
    root: Path, classes: list[str], mode: str, size: Any
) -> tuple[ArrayDataset, ArrayDataset]:
    train = _load(root / "train", classes, mode, size, root)
    test = _load(root / "test", classes, mode, size, root)
    if train.feature_shape != test.feature_shape:
        raise DataError(
            f"train images have shape {train.feature_shape} but test images "
            f"{test.feature_shape}; pass size=(H, W) and mode='RGB' or 'L' to make them agree"
        )
    return train, test


def _load(folder: Path, classes: list[str], mode: str, size: Any, root: Path) -> ArrayDataset:
    paths, labels = _files(folder, classes)
    if not paths:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}/<class>/; "
            "check the folder layout"
        )
    pixels = _read(paths, mode, size, root)
    x = torch.from_numpy(pixels).to(torch.float32).div_(255.0)
    return ArrayDataset(x, torch.tensor(labels, dtype=torch.int64))
