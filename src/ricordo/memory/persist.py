"""Save and load a TensorMemory as safetensors shards or ``.npy`` files plus a JSON index.

No pickle anywhere. Layout under ``prefix`` (default ``memory/``)::

    index.json              capacity, policy, seed, seen, size, fields (dtype, shape), shard list,
                            policy state (JSON part); version 2 adds "layout" and "arrays"
    state.safetensors       generator state (uint8) and policy tensors, if any
    shard-00000.safetensors rows [0, r1) of every field, then shard-00001 ... (each <= 256 MiB)
                            (layout "safetensors": memories in RAM; format version 1)
    array-00000.npy         all rows of the first field, then array-00001.npy ... (layout "npy":
                            memory-mapped memories; format version 2). bfloat16 is stored as its
                            uint16 bit patterns. Read without pickle (header checked, then raw
                            bytes), and from a local path they are mapped, never loaded whole.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ricordo.errors import ConfigError, StateCorruptError, StateVersionError
from ricordo.memory.policies import POLICIES
from ricordo.memory.storage import as_tensor, copy_rows, numpy_dtype

if TYPE_CHECKING:  # pragma: no cover
    from ricordo.memory.buffer import TensorMemory

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_SHARD_BYTES", "from_files", "to_files"]

FORMAT = "ricordo.memory"
FORMAT_VERSION = 2  # 1: safetensors shards only; 2: adds the "npy" layout
LAYOUTS = ("safetensors", "npy")
MAX_SHARD_BYTES = 256 * 2**20
INDEX = "index.json"
STATE = "state.safetensors"
_GENERATOR_KEY = "generator"
_POLICY_KEY = "policy."

_DTYPES: dict[str, torch.dtype] = {
    str(dt).removeprefix("torch."): dt
    for dt in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_files(
    memory: TensorMemory, prefix: str = "memory/", *, max_shard_bytes: int | None = None
) -> dict[str, bytes | os.PathLike[str]]:
    """Serialise ``memory`` to ``{path: bytes or local file}``: safetensors shards (each within
    the limit) for a memory in RAM, one ``.npy`` per field for a memory-mapped one."""
    limit = MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    if limit < 1:
        raise ConfigError(f"max_shard_bytes must be >= 1, got {limit}")
    data = {name: t.detach().cpu() for name, t in memory.get().items()}
    for name, t in data.items():
        if _dtype_name(t.dtype) not in _DTYPES:
            raise ConfigError(
                f"memory field {name!r} has dtype {t.dtype}, which cannot be saved; "
                f"use one of {sorted(_DTYPES)}"
            )
    size = len(memory)
    files: dict[str, bytes | os.PathLike[str]] = {}
    shards: list[dict[str, Any]] = []
    arrays: list[dict[str, Any]] = []
    if memory.storage == "mmap":
        arrays = _npy_files(memory, prefix, files)
    else:
        shards = _shard_files(data, size, limit, prefix, files)

    policy_json: dict[str, Any] = {}
    state_tensors: dict[str, Tensor] = {_GENERATOR_KEY: memory.generator.get_state()}
    for key, value in memory.policy.state_dict().items():
        if isinstance(value, Tensor):
            state_tensors[_POLICY_KEY + key] = value.detach().cpu().contiguous()
        else:
            policy_json[key] = value
    files[prefix + STATE] = st_save(state_tensors)

    index: dict[str, Any] = {
        "format": FORMAT,
        # Memories in RAM keep writing version 1, which older libraries read.
        "version": 2 if arrays else 1,
        "capacity": memory.capacity,
        "policy": memory.policy_name,
        "seed": memory.seed,
        "label_field": memory.label_field,
        "seen": memory.seen,
        "size": size,
        "fields": [
            {"name": k, "dtype": _dtype_name(t.dtype), "shape": list(t.shape[1:])}
            for k, t in data.items()
        ],
        "shards": shards,
        "state_file": STATE,
        "policy_state": policy_json,
    }
    if arrays:
        index["layout"] = "npy"
        index["arrays"] = arrays
    files[prefix + INDEX] = json.dumps(index, indent=1).encode()
    return files


def _npy_files(
    memory: TensorMemory, prefix: str, files: dict[str, bytes | os.PathLike[str]]
) -> list[dict[str, Any]]:
    """One ``.npy`` per field: the working file itself when it holds exactly the filled rows,
    else an export copy of them (zero-byte fields, which are not mapped, as bytes)."""
    memory.release_exports()
    memory._storage.flush()
    size = len(memory)
    arrays = []
    for number, (name, storage) in enumerate(memory._data.items()):
        file = f"array-{number:05d}.npy"
        arrays.append({"name": name, "file": file})
        shape = (size, *storage.shape[1:])
        working = memory._storage.file_of(storage)
        if working is not None and storage.shape[0] == size:
            files[prefix + file] = Path(working)
            continue
        dtype = numpy_dtype(storage.dtype)
        if working is None or size == 0 or storage[:1].nbytes == 0:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.empty(shape, dtype), allow_pickle=False)
            files[prefix + file] = buffer.getvalue()
            continue
        assert memory.directory is not None
        path = os.path.join(memory.directory, f"export-{file}")
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        memory._exports.append(path)
        copy_rows(as_tensor(array, storage.dtype), storage, size)
        array.flush()
        del array
        files[prefix + file] = Path(path)
    return arrays


def _shard_files(
    data: dict[str, Tensor],
    size: int,
    limit: int,
    prefix: str,
    files: dict[str, bytes | os.PathLike[str]],
) -> list[dict[str, Any]]:
    row_bytes = sum(t[:1].nbytes if size else 0 for t in data.values())
    # A single row larger than the limit still gets its own shard: rows are never split.
    rows_per_shard = max(1, limit // row_bytes) if row_bytes else max(size, 1)
    shards = []
    for number, start in enumerate(range(0, size, rows_per_shard)):
        stop = min(start + rows_per_shard, size)
        name = f"shard-{number:05d}.safetensors"
        # clone: safetensors refuses views into a larger storage; this copies one shard at a time.
        files[prefix + name] = st_save({k: t[start:stop].clone() for k, t in data.items()})
        shards.append({"file": name, "start": start, "stop": stop})
    return shards


def _corrupt(message: str) -> StateCorruptError:
    return StateCorruptError(message)


Files = Mapping[str, "bytes | os.PathLike[str]"]


def _bytes(value: bytes | os.PathLike[str]) -> bytes:
    """A file's content, whether given as bytes or as a local path."""
    if isinstance(value, os.PathLike):
        return Path(value).read_bytes()
    return bytes(value)


def _read_index(files: Files, prefix: str) -> dict[str, Any]:
    path = prefix + INDEX
    if path not in files:
        raise _corrupt(f"memory index {path!r} is missing")
    try:
        index = json.loads(_bytes(files[path]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(f"memory index {path!r} is not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise _corrupt(f"memory index {path!r} is not a JSON object")
    if index.get("format") != FORMAT:
        raise _corrupt(f"memory index {path!r} has format {index.get('format')!r}, not {FORMAT!r}")
    version = index.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _corrupt(f"memory index {path!r} has invalid version {version!r}")
    if version > FORMAT_VERSION:
        raise StateVersionError(
            f"memory index {path!r} has format version {version}, this library reads up to "
            f"{FORMAT_VERSION}; upgrade ricordo"
        )
    expected: dict[str, type | tuple[type, ...]] = {
        "capacity": (int, type(None)),
        "policy": str,
        "seed": int,
        "label_field": str,
        "seen": int,
        "size": int,
        "fields": list,
        "shards": list,
        "state_file": str,
        "policy_state": dict,
    }
    for key, kind in expected.items():
        if key not in index:
            raise _corrupt(f"memory index {path!r} lacks key {key!r}")
        value = index[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise _corrupt(f"memory index {path!r} has invalid {key!r}: {value!r}")
    layout = index.setdefault("layout", "safetensors")
    if layout not in LAYOUTS or (layout == "npy" and version < 2):
        raise _corrupt(f"memory index {path!r} has invalid layout {layout!r}")
    if layout == "npy" and not isinstance(index.get("arrays"), list):
        raise _corrupt(f"memory index {path!r} has layout 'npy' but no list of 'arrays'")
    return index


def _load_safetensors(files: Files, path: str, what: str) -> dict[str, Tensor]:
    if path not in files:
        raise _corrupt(f"memory {what} {path!r} is missing")
    try:
        return st_load(_bytes(files[path]))
    except Exception as exc:  # safetensors raises several types for truncated/garbled bytes
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _corrupt(f"memory {what} {path!r} is unreadable ({first})") from None


def from_files(
    cls: type[TensorMemory],
    files: Files,
    prefix: str = "memory/",
    *,
    device: str | torch.device = "cpu",
    storage: str = "ram",
    directory: str | os.PathLike[str] | None = None,
) -> TensorMemory:
    """Rebuild the memory ``to_files`` wrote, checking the index against every shard/array.

    Either layout loads into either ``storage``; the files are only read (a memory-mapped
    memory copies them into its own working folder, so the saved state is never modified).
    """
    index = _read_index(files, prefix)
    where = f"memory index {prefix + INDEX!r}"
    size, seen, capacity = index["size"], index["seen"], index["capacity"]
    if size < 0 or seen < size or (capacity is not None and size > capacity):
        raise _corrupt(f"{where} has inconsistent size={size}, seen={seen}, capacity={capacity}")
    if index["policy"] not in POLICIES:
        raise _corrupt(f"{where} names unknown memory policy {index['policy']!r}")
    try:
        # Checked first without the caller's storage options, so an error here is the state's.
        cls(capacity, index["policy"], index["seed"], label_field=index["label_field"])
    except ConfigError as exc:
        raise _corrupt(f"{where} has an invalid configuration ({exc})") from None
    memory = cls(
        capacity,
        index["policy"],
        index["seed"],
        device=device,
        label_field=index["label_field"],
        storage=storage,
        directory=directory,
    )

    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for field in index["fields"]:
        try:
            name, dtype, shape = field["name"], _DTYPES[field["dtype"]], tuple(field["shape"])
        except (KeyError, TypeError):
            raise _corrupt(f"{where} has an invalid field entry {field!r}") from None
        if not isinstance(name, str) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _corrupt(f"{where} has an invalid field entry {field!r}")
        if name in specs:
            raise _corrupt(f"{where} lists field {name!r} twice")
        specs[name] = (dtype, shape)
    if size and not specs:
        raise _corrupt(f"{where} has size {size} but no fields")

    rows = capacity if capacity is not None else max(size, 16)
    data = {name: memory._new_storage(rows, shape, dtype) for name, (dtype, shape) in specs.items()}
    if index["layout"] == "npy":
        _read_arrays(files, prefix, where, index["arrays"], specs, size, data)
    else:
        _read_shards(files, prefix, where, index["shards"], specs, size, data)

    state_path = prefix + index["state_file"]
    state = _load_safetensors(files, state_path, "state file")
    generator_state = state.pop(_GENERATOR_KEY, None)
    if generator_state is None or generator_state.dtype != torch.uint8:
        raise _corrupt(f"memory state file {state_path!r} lacks a uint8 generator state")
    policy_state: dict[str, Any] = dict(index["policy_state"])
    for key, value in state.items():
        if not key.startswith(_POLICY_KEY):
            raise _corrupt(f"memory state file {state_path!r} has unexpected tensor {key!r}")
        policy_state[key.removeprefix(_POLICY_KEY)] = value
    try:
        memory.policy.load_state_dict(policy_state)
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(f"{where} has an invalid policy state ({exc})") from None
    try:
        memory._restore(data, size, seen, generator_state)
    except RuntimeError as exc:
        raise _corrupt(
            f"memory state file {state_path!r} has a bad generator state ({exc})"
        ) from None
    return memory


def _read_shards(
    files: Files,
    prefix: str,
    where: str,
    shards: list[Any],
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    size: int,
    data: dict[str, Tensor],
) -> None:
    covered = 0
    for number, shard in enumerate(shards):
        if not isinstance(shard, dict) or not {"file", "start", "stop"} <= set(shard):
            raise _corrupt(f"{where} has an invalid shard entry {shard!r}")
        start, stop = shard["start"], shard["stop"]
        if start != covered or not isinstance(stop, int) or not start < stop <= size:
            raise _corrupt(
                f"{where} shard {number} covers rows [{start}, {stop}), expected to start at "
                f"{covered} and end by {size}"
            )
        path = prefix + str(shard["file"])
        tensors = _load_safetensors(files, path, "shard")
        if set(tensors) != set(specs):
            raise _corrupt(
                f"memory shard {path!r} holds fields {sorted(tensors)}, index lists {sorted(specs)}"
            )
        for name, (dtype, shape) in specs.items():
            t = tensors[name]
            if t.dtype != dtype or tuple(t.shape) != (stop - start, *shape):
                raise _corrupt(
                    f"memory shard {path!r} field {name!r} is {t.dtype} {tuple(t.shape)}, index "
                    f"says {dtype} {(stop - start, *shape)}"
                )
            data[name][start:stop] = t
        covered = stop
    if covered != size:
        raise _corrupt(f"{where} shards cover {covered} rows but size is {size}")


def _read_arrays(
    files: Files,
    prefix: str,
    where: str,
    arrays: list[Any],
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    size: int,
    data: dict[str, Tensor],
) -> None:
    named: dict[str, str] = {}
    for entry in arrays:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("file"), str)
            or entry["name"] in named
        ):
            raise _corrupt(f"{where} has an invalid array entry {entry!r}")
        named[entry["name"]] = entry["file"]
    if set(named) != set(specs):
        raise _corrupt(f"{where} lists arrays for {sorted(named)}, fields are {sorted(specs)}")
    for name, (dtype, shape) in specs.items():
        path = prefix + named[name]
        if path not in files:
            raise _corrupt(f"memory array {path!r} is missing")
        _copy_npy(files[path], path, dtype, (size, *shape), data[name])


def _copy_npy(
    value: bytes | os.PathLike[str],
    path: str,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    out: Tensor,
) -> None:
    """Check an ``.npy`` header (no pickle: plain dtypes only) and copy its rows into ``out``;
    a local file is memory-mapped and copied in pieces, never loaded whole."""
    expected = numpy_dtype(dtype)
    local = isinstance(value, os.PathLike)
    try:
        with open(value, "rb") if local else io.BytesIO(value) as handle:  # type: ignore[arg-type]
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = handle.tell()
            length = handle.seek(0, io.SEEK_END)
    except (OSError, ValueError, SyntaxError) as exc:
        raise _corrupt(f"memory array {path!r} is unreadable ({exc})") from None
    found_shape, fortran, found_dtype = header
    if found_dtype != expected or fortran or tuple(found_shape) != shape:
        order = " (Fortran order)" if fortran else ""
        raise _corrupt(
            f"memory array {path!r} holds {found_dtype} {tuple(found_shape)}{order}, "
            f"index says {expected} {shape}"
        )
    count = int(np.prod(shape))
    nbytes = count * expected.itemsize
    if length != offset + nbytes:
        raise _corrupt(f"memory array {path!r} has {length - offset} data bytes, expected {nbytes}")
    if nbytes == 0:
        return
    if local:
        # Copy-on-write mapping: writable for torch, and the file itself is never modified.
        source = np.memmap(value, dtype=expected, mode="c", offset=offset, shape=shape)
    else:
        source = np.frombuffer(value, dtype=expected, count=count, offset=offset).reshape(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only buffer, only ever read
        copy_rows(out, as_tensor(source, dtype), shape[0])
