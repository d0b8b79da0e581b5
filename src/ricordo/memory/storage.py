"""Where a memory's field tensors live: RAM, or numpy ``.npy`` memory maps in a working folder.

A memory-mapped field is an ``.npy`` file opened with ``numpy.lib.format.open_memmap`` and viewed
as a torch tensor without a copy, so the memory's usual tensor ops (slice copies, index_copy_,
index_select) read and write the file through the page cache: the OS keeps the hot pages in RAM
and the memory may be much larger than RAM. Files are private to one memory (a fresh subfolder of
``directory``, a temp folder by default) and removed when the memory is garbage-collected.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ricordo.errors import ConfigError

__all__ = ["STORAGES", "MmapStorage", "RamStorage", "copy_rows", "make_storage", "numpy_dtype"]

STORAGES = ("ram", "mmap")
# Rows are copied between tensors in pieces of about this many bytes, so a copy between two
# memory-mapped fields never needs more than this much RAM.
COPY_CHUNK_BYTES = 64 * 2**20

# numpy has no bfloat16: such fields are stored as their raw 16-bit patterns.
_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.float64: np.dtype("<f8"),
    torch.float32: np.dtype("<f4"),
    torch.float16: np.dtype("<f2"),
    torch.bfloat16: np.dtype("<u2"),
    torch.int64: np.dtype("<i8"),
    torch.int32: np.dtype("<i4"),
    torch.int16: np.dtype("<i2"),
    torch.int8: np.dtype("i1"),
    torch.uint8: np.dtype("u1"),
    torch.bool: np.dtype("?"),
}


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The little-endian numpy dtype a torch dtype is stored as in ``.npy`` files."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise ConfigError(
            f"memory fields of dtype {dtype} cannot be memory-mapped; use one of "
            f"{sorted(str(d).removeprefix('torch.') for d in _NUMPY_DTYPES)}"
        ) from None


def as_tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A torch view (no copy) of a numpy array written by ``numpy_dtype(dtype)``."""
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


def copy_rows(dst: Tensor, src: Tensor, rows: int) -> None:
    """``dst[:rows] = src[:rows]`` in pieces of about ``COPY_CHUNK_BYTES``."""
    row_bytes = max(1, src[:1].nbytes)
    step = max(1, COPY_CHUNK_BYTES // row_bytes)
    with torch.no_grad():
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            dst[start:stop].copy_(src[start:stop])


class RamStorage:
    """Field tensors in RAM (or on the memory's device)."""

    kind: ClassVar[str] = "ram"
    root: str | None = None

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.empty(shape, dtype=dtype, device=device)

    def free(self, tensor: Tensor) -> None:
        """Forget a tensor that is no longer a field (RAM is released with the tensor)."""

    def file_of(self, tensor: Tensor) -> str | None:
        return None

    def flush(self) -> None:
        """Nothing to write back."""

    def sibling(self) -> RamStorage:
        """A new, empty storage of the same kind (for copies of the memory)."""
        return RamStorage()


class MmapStorage:
    """Field tensors memory-mapped from ``.npy`` files in a private working folder."""

    kind: ClassVar[str] = "mmap"

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        parent = None if directory is None else os.fspath(directory)
        if parent is not None:
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot use memory directory {parent!r}: {exc}") from None
        self.parent = parent
        self.root = tempfile.mkdtemp(prefix="ricordo-memory-", dir=parent)
        # Remove the files when the memory goes away (or at exit), never the user's folder.
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, True)
        self._files: dict[int, tuple[np.memmap, str]] = {}  # data_ptr -> (array, path)
        self._counter = 0

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        if device.type != "cpu":
            raise ConfigError(
                f"memory-mapped memories live on the CPU, got device {device}; "
                "use storage='ram' for a memory on an accelerator"
            )
        if int(np.prod(shape)) == 0:  # an empty file cannot be mapped; nothing to store anyway
            return torch.empty(shape, dtype=dtype)
        path = os.path.join(self.root, f"field-{self._counter:05d}.npy")
        self._counter += 1
        array = np.lib.format.open_memmap(path, mode="w+", dtype=numpy_dtype(dtype), shape=shape)
        tensor = as_tensor(array, dtype)
        self._files[tensor.data_ptr()] = (array, path)
        return tensor

    def free(self, tensor: Tensor) -> None:
        """Delete the file behind a tensor that is no longer a field (its pages go with it)."""
        entry = self._files.pop(tensor.data_ptr(), None) if tensor.numel() else None
        if entry is not None:
            os.remove(entry[1])  # on POSIX the mapping stays valid until the tensor is freed

    def file_of(self, tensor: Tensor) -> str | None:
        """The ``.npy`` file a field tensor maps (None for zero-size fields)."""
        entry = self._files.get(tensor.data_ptr()) if tensor.numel() else None
        return None if entry is None else entry[1]

    def flush(self) -> None:
        """Write dirty pages back so the files can be read (copied, hashed) from disk."""
        for array, _ in self._files.values():
            array.flush()

    def sibling(self) -> MmapStorage:
        return MmapStorage(self.parent)


def make_storage(
    storage: str, directory: str | os.PathLike[str] | None
) -> RamStorage | MmapStorage:
    """The storage named by ``storage`` ("ram" or "mmap")."""
    if storage == "ram":
        if directory is not None:
            raise ConfigError(
                f"memory directory {os.fspath(directory)!r} is only used with storage='mmap'"
            )
        return RamStorage()
    if storage == "mmap":
        return MmapStorage(directory)
    raise ConfigError(f"memory storage {storage!r} is invalid; choose one of {STORAGES}")
