"""Save and load a TensorMemory as safetensors shards plus a JSON index: no pickle anywhere.

Layout under ``prefix`` (default ``memory/``)::

    index.json              capacity, policy, seed, seen, size, fields (dtype, shape), shard list,
                            policy state (JSON part)
    state.safetensors       generator state (uint8) and policy tensors, if any
    shard-00000.safetensors rows [0, r1) of every field, then shard-00001 ... (each <= 256 MiB)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ricordo.errors import ConfigError, StateCorruptError, StateVersionError
from ricordo.memory.policies import POLICIES

if TYPE_CHECKING:  # pragma: no cover
    from ricordo.memory.buffer import TensorMemory

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_SHARD_BYTES", "from_files", "to_files"]

FORMAT = "ricordo.memory"
FORMAT_VERSION = 1
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
) -> dict[str, bytes]:
    """Serialise ``memory`` to ``{path: bytes}``; rows are split so each shard fits the limit."""
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
    row_bytes = sum(t[:1].nbytes if size else 0 for t in data.values())
    # A single row larger than the limit still gets its own shard: rows are never split.
    rows_per_shard = max(1, limit // row_bytes) if row_bytes else max(size, 1)
    files: dict[str, bytes] = {}
    shards = []
    for number, start in enumerate(range(0, size, rows_per_shard)):
        stop = min(start + rows_per_shard, size)
        name = f"shard-{number:05d}.safetensors"
        # clone: safetensors refuses views into a larger storage; this copies one shard at a time.
        files[prefix + name] = st_save({k: t[start:stop].clone() for k, t in data.items()})
        shards.append({"file": name, "start": start, "stop": stop})

    policy_json: dict[str, Any] = {}
    state_tensors: dict[str, Tensor] = {_GENERATOR_KEY: memory.generator.get_state()}
    for key, value in memory.policy.state_dict().items():
        if isinstance(value, Tensor):
            state_tensors[_POLICY_KEY + key] = value.detach().cpu().contiguous()
        else:
            policy_json[key] = value
    files[prefix + STATE] = st_save(state_tensors)

    index = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
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
    files[prefix + INDEX] = json.dumps(index, indent=1).encode()
    return files


def _corrupt(message: str) -> StateCorruptError:
    return StateCorruptError(message)


def _read_index(files: Mapping[str, bytes], prefix: str) -> dict[str, Any]:
    path = prefix + INDEX
    if path not in files:
        raise _corrupt(f"memory index {path!r} is missing")
    try:
        index = json.loads(files[path])
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
    return index


def _load_safetensors(files: Mapping[str, bytes], path: str, what: str) -> dict[str, Tensor]:
    if path not in files:
        raise _corrupt(f"memory {what} {path!r} is missing")
    try:
        return st_load(files[path])
    except Exception as exc:  # safetensors raises several types for truncated/garbled bytes
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _corrupt(f"memory {what} {path!r} is unreadable ({first})") from None


def from_files(
    cls: type[TensorMemory],
    files: Mapping[str, bytes],
    prefix: str = "memory/",
    *,
    device: str | torch.device = "cpu",
) -> TensorMemory:
    """Rebuild the memory ``to_files`` wrote, checking the index against every shard."""
    index = _read_index(files, prefix)
    where = f"memory index {prefix + INDEX!r}"
    size, seen, capacity = index["size"], index["seen"], index["capacity"]
    if size < 0 or seen < size or (capacity is not None and size > capacity):
        raise _corrupt(f"{where} has inconsistent size={size}, seen={seen}, capacity={capacity}")
    if index["policy"] not in POLICIES:
        raise _corrupt(f"{where} names unknown memory policy {index['policy']!r}")
    try:
        memory = cls(
            capacity,
            index["policy"],
            index["seed"],
            device=device,
            label_field=index["label_field"],
        )
    except ConfigError as exc:
        raise _corrupt(f"{where} has an invalid configuration ({exc})") from None

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
    data = {
        name: torch.empty((rows, *shape), dtype=dtype, device=memory.device)
        for name, (dtype, shape) in specs.items()
    }
    covered = 0
    for number, shard in enumerate(index["shards"]):
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
