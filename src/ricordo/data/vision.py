"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from their standard binary files.

MNIST-style data comes as four idx files (``.gz`` or uncompressed), CIFAR as the *binary*
version (fixed-length records: label byte(s) then 3072 pixel bytes). The python/pickle versions
of CIFAR are never read: Ricordo does not unpickle. Images become float32 (N, C, H, W) in
[0, 1], labels int64. ``download=True`` fetches the official files, verifies their MD5 and
extracts archives safely; ``sources=`` replaces the URL/checksum table (tests, private mirrors).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.data.download import Resource, fetch, resolve_root, safe_extract_tar
from ricordo.errors import DataError

PathLike = str | os.PathLike[str]

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_TORONTO = "https://www.cs.toronto.edu/~kriz/"


def _mirrored(mirrors: Sequence[str], files: dict[str, str]) -> tuple[Resource, ...]:
    return tuple(
        Resource(name, tuple(m + name for m in mirrors), md5=md5) for name, md5 in files.items()
    )


# The official files and their published MD5 checksums.
SOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": _mirrored(
        _MNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": _mirrored(
        _FASHION_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        Resource(
            "cifar-10-binary.tar.gz",
            (_TORONTO + "cifar-10-binary.tar.gz",),
            md5="c32a1d4ab5d03f1284b67883e8d87530",
        ),
    ),
    "cifar100": (
        Resource(
            "cifar-100-binary.tar.gz",
            (_TORONTO + "cifar-100-binary.tar.gz",),
            md5="03b5dce01913d631647c71ecec9e9cb8",
        ),
    ),
}

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR100_DIR = "cifar-100-binary"
CIFAR100_FILES = ("train.bin", "test.bin")

# idx type codes -> big-endian numpy dtypes
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ------------------------------------------------------------------------------- parsers


def read_idx(path: PathLike) -> np.ndarray:
    """Parse an idx file (MNIST format, gzip-compressed or not) into a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
    dimension, then the values in big-endian row-major order.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        raw = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read idx file {path} ({error}); replace the file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an idx file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header of {ndim} dims incomplete)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header {dims} needs "
            f"{expected}; the file is truncated or corrupt, replace it"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


def read_cifar_bin(path: PathLike, label_bytes: int, label_index: int = -1) -> ArrayDataset:
    """Parse a CIFAR binary batch: records of ``label_bytes`` label bytes + 3x32x32 pixels.

    ``label_index`` picks the label byte (CIFAR-100: 0 = coarse, 1 = fine).
    """
    path = Path(path)
    record = label_bytes + 3072
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DataError(f"cannot read CIFAR file {path} ({error}); replace the file") from None
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path} has {raw.size} bytes, not a multiple of the {record}-byte CIFAR record; "
            "use the binary version of the dataset (not python/matlab) and replace the file"
        )
    rows = raw.reshape(-1, record)
    y = torch.from_numpy(rows[:, label_index].astype(np.int64))
    return ArrayDataset(_to_unit(rows[:, label_bytes:].reshape(-1, 3, 32, 32)), y)


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] without a float64 detour."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)


def _idx_pair(images: Path, labels: Path) -> ArrayDataset:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(
            f"{images.name} has shape {x.shape} and {labels.name} {y.shape}; expected "
            "(N, H, W) images and N labels"
        )
    if x.dtype != np.uint8:
        raise DataError(f"{images.name} holds {x.dtype} pixels; expected unsigned bytes")
    return ArrayDataset(_to_unit(x[:, None]), torch.from_numpy(y.astype(np.int64)))


# ------------------------------------------------------------------------------- locating


def _find(candidates: Sequence[Path], required: Sequence[Sequence[str]]) -> list[Path] | None:
    """The first folder holding every required file (each given by its accepted names)."""
    for folder in candidates:
        found = []
        for names in required:
            path = next((folder / n for n in names if (folder / n).is_file()), None)
            if path is None:
                break
            found.append(path)
        else:
            return found
    return None


def _locate(
    name: str,
    root: PathLike | None,
    download: bool,
    sources: Sequence[Resource] | None,
    required: Sequence[Sequence[str]],
    subdir: str | None = None,
) -> list[Path]:
    """Paths of the required files; downloads them first when asked and missing."""
    base = resolve_root(root)
    home = base / name
    candidates = [home, base]
    if subdir is not None:
        candidates = [home / subdir, home, base / subdir, base]
    found = _find(candidates, required)
    if found is None and download:
        for resource in SOURCES[name] if sources is None else sources:
            path = fetch(resource, home)
            if path.name.endswith((".tar.gz", ".tgz", ".tar")):
                safe_extract_tar(path, home)
                path.unlink()
        found = _find(candidates, required)
        if found is None:
            raise DataError(
                f"downloaded {name} into {home} but the expected files are still missing "
                f"({', '.join(r[0] for r in required)}); delete the folder and retry"
            )
    if found is None:
        where = candidates[0]
        raise DataError(
            f"{name} files not found in {where}: expected {', '.join(r[0] for r in required)}; "
            "pass --download (download=True) or place the files there"
        )
    return found


# ------------------------------------------------------------------------------- loaders


def _idx_loader(name: str) -> Callable[..., tuple[ArrayDataset, ArrayDataset]]:
    def load(
        root: PathLike | None = None,
        download: bool = False,
        *,
        sources: Sequence[Resource] | None = None,
    ) -> tuple[ArrayDataset, ArrayDataset]:
        required = [(f, f.removesuffix(".gz")) for f in MNIST_FILES]
        tr_x, tr_y, te_x, te_y = _locate(name, root, download, sources, required)
        return _idx_pair(tr_x, tr_y), _idx_pair(te_x, te_y)

    load.__name__ = load.__qualname__ = "load_" + name.replace("-", "_")
    load.__doc__ = (
        f"{name}: (train, test) as (N, 1, 28, 28) float32 in [0, 1] from the four idx files in "
        f"``root/{name}`` (or ``root``); ``download=True`` fetches and verifies them."
    )
    return load


load_mnist = _idx_loader("mnist")
load_fashion_mnist = _idx_loader("fashion-mnist")


def load_cifar10(
    root: PathLike | None = None,
    download: bool = False,
    *,
    sources: Sequence[Resource] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 (binary version): 50k train / 10k test as (N, 3, 32, 32) float32 in [0, 1]."""
    paths = _locate("cifar10", root, download, sources, [(f,) for f in CIFAR10_FILES], CIFAR10_DIR)
    train = ArrayDataset.concat([read_cifar_bin(p, 1, 0) for p in paths[:-1]])
    return train, read_cifar_bin(paths[-1], 1, 0)


def load_cifar100(
    root: PathLike | None = None,
    download: bool = False,
    *,
    labels: str = "fine",
    sources: Sequence[Resource] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-100 (binary version) with its 100 ``fine`` labels or 20 ``coarse`` superclasses."""
    if labels not in ("fine", "coarse"):
        raise DataError(f"cifar100 labels={labels!r} is invalid; choose 'fine' or 'coarse'")
    index = 1 if labels == "fine" else 0
    train, test = _locate(
        "cifar100", root, download, sources, [(f,) for f in CIFAR100_FILES], CIFAR100_DIR
    )
    return read_cifar_bin(train, 2, index), read_cifar_bin(test, 2, index)
