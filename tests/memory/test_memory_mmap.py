"""Memory-mapped TensorMemory: data lives in .npy files, saves as .npy, reloads bit for bit."""

from __future__ import annotations

import copy
import gc
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo.errors import ConfigError, StateCorruptError
from ricordo.memory import TensorMemory
from ricordo.state import read_state, write_state


def batch(start: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + start)
    ids = torch.arange(start, start + n)
    return {
        "x": torch.randn(n, 2, 3, generator=gen),
        "y": ids % 5,
        "id": ids,
        "half": torch.randn(n, 4, generator=gen).to(torch.bfloat16),
        "flag": torch.rand(n, generator=gen) > 0.5,
        "byte": torch.randint(0, 255, (n, 2), generator=gen).to(torch.uint8),
    }


def filled(
    storage: str, policy: str = "reservoir", capacity: int | None = 40, **kw
) -> TensorMemory:
    memory = TensorMemory(capacity, policy, seed=3, storage=storage, **kw)
    for start in range(0, 130, 13):
        memory.add(batch(start, 13))
    return memory


def same(a: TensorMemory, b: TensorMemory) -> None:
    assert (len(a), a.seen, a.capacity, a.policy_name, a.fields) == (
        len(b),
        b.seen,
        b.capacity,
        b.policy_name,
        b.fields,
    )
    for name, value in a.get().items():
        other = b.get()[name]
        assert value.dtype == other.dtype and torch.equal(value, other), name
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_fields_live_in_npy_files_in_the_working_folder(tmp_path: Path) -> None:
    memory = filled("mmap", directory=tmp_path)
    assert memory.storage == "mmap" and memory.directory is not None
    assert Path(memory.directory).parent == tmp_path
    for name, value in memory.get().items():
        path = memory.field_file(name)
        assert path is not None and path.startswith(memory.directory) and path.endswith(".npy")
        on_disk = np.load(path, mmap_mode="r", allow_pickle=False)
        assert on_disk.shape[0] == 40  # preallocated to the capacity
        expect = value.view(torch.int16).numpy() if value.dtype == torch.bfloat16 else value
        np.testing.assert_array_equal(on_disk[: len(memory)].view(np.asarray(expect).dtype), expect)
        # The tensor is a view of the mapping, not a RAM copy.
        raw = memory._data[name]
        mapped = memory._storage._files[raw.data_ptr()][0]
        assert raw.data_ptr() == mapped.ctypes.data
    # A write through the memory reaches the file.
    memory.update_field("id", torch.tensor([0]), torch.tensor([-7]))
    assert int(np.load(memory.field_file("id"), mmap_mode="r")[0]) == -7
    assert TensorMemory(5).storage == "ram" and TensorMemory(5).directory is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_field_larger_than_a_small_ram_budget_stays_on_disk(tmp_path: Path) -> None:
    """A 2 GiB field: the file is sparse and the process's resident memory barely moves."""

    def resident_mib() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = resident_mib()
    memory = TensorMemory(524_288, "reservoir", storage="mmap", directory=tmp_path)
    memory.add({"x": torch.ones(64, 1024), "y": torch.zeros(64, dtype=torch.int64)})
    path = memory.field_file("x")
    assert path is not None and os.path.getsize(path) >= 2 * 2**30
    assert os.stat(path).st_blocks * 512 < 64 * 2**20  # only the touched pages exist
    assert resident_mib() - before < 256
    sample = memory.sample(8)["x"]
    assert torch.equal(sample, torch.ones(8, 1024))


@pytest.mark.parametrize(
    "policy, capacity", [("reservoir", 40), ("class-balanced", 40), ("infinite", None)]
)
def test_state_round_trip_is_bit_exact_with_npy_files_and_no_pickle(
    policy: str, capacity: int | None, tmp_path: Path
) -> None:
    memory = filled("mmap", policy, capacity)
    files = memory.to_files()
    arrays = sorted(k for k in files if k.endswith(".npy"))
    assert len(arrays) == len(memory.fields)
    assert not any(k.endswith(".safetensors") and "shard" in k for k in files)
    write_state(str(tmp_path / "s"), files, {})
    memory.release_exports()
    for key in arrays:  # plain .npy: numpy reads them with pickling disabled
        loaded = np.load(tmp_path / "s" / key, allow_pickle=False)
        assert loaded.shape[0] == len(memory) and loaded.dtype != object
    index = json.loads((tmp_path / "s" / "memory" / "index.json").read_text())
    assert index["version"] == 2 and index["layout"] == "npy"

    digest = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "s").rglob("*")
        if p.is_file()
    }
    state = read_state(str(tmp_path / "s"), lazy_prefixes=("memory/",))
    assert all(isinstance(state.files[k], Path) for k in arrays)
    restored = TensorMemory.from_files(state.files, storage="mmap")
    same(memory, restored)
    assert restored.directory != memory.directory
    # Both continue identically, and the saved state is never touched (copy-on-load).
    for m in (memory, restored):
        m.add(batch(500, 30, seed=1))
        m.update_field("id", torch.tensor([0]), torch.tensor([123]))
    same(memory, restored)
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "s").rglob("*")
        if p.is_file()
    }
    assert after == digest


def test_full_memory_saves_its_working_files_directly() -> None:
    memory = filled("mmap")
    files = memory.to_files()
    for number, name in enumerate(memory.fields):
        value = files[f"memory/array-{number:05d}.npy"]
        assert isinstance(value, os.PathLike) and os.fspath(value) == memory.field_file(name)
    assert memory._exports == []
    partial = TensorMemory(100, storage="mmap")
    partial.add(batch(0, 10))
    exported = [v for k, v in partial.to_files().items() if k.endswith(".npy")]
    assert all(os.path.exists(p) for p in exported) and len(partial._exports) == len(exported)
    partial.release_exports()
    assert not any(os.path.exists(p) for p in exported)


@pytest.mark.parametrize("source, target", [("ram", "mmap"), ("mmap", "ram"), ("ram", "ram")])
def test_either_layout_loads_into_either_storage(source: str, target: str) -> None:
    memory = filled(source)
    files = memory.to_files()
    layout = "npy" if source == "mmap" else "safetensors"
    assert any(k.endswith(".npy") for k in files) == (layout == "npy")
    restored = TensorMemory.from_files(files, storage=target)
    assert restored.storage == target
    same(memory, restored)
    # bytes instead of paths work too (e.g. a state read from s3://)
    as_bytes = {
        k: Path(v).read_bytes() if isinstance(v, os.PathLike) else v for k, v in files.items()
    }
    same(memory, TensorMemory.from_files(as_bytes, storage=target))


def test_infinite_mmap_memory_grows_and_frees_old_files() -> None:
    memory = TensorMemory(None, "infinite", storage="mmap")
    memory.add(batch(0, 10))
    first = memory.field_file("x")
    for start in range(10, 300, 29):
        memory.add(batch(start, 29))
    assert torch.equal(memory.get()["id"], torch.arange(300))
    assert first is not None and not os.path.exists(first)
    assert len(os.listdir(memory.directory)) == len(memory.fields)


def test_deepcopy_copies_files_and_working_folders_are_removed(tmp_path: Path) -> None:
    memory = filled("mmap", directory=tmp_path)
    twin = copy.deepcopy(memory)
    assert twin.directory != memory.directory and twin.storage == "mmap"
    same(memory, twin)
    twin.update_field("id", torch.tensor([1]), torch.tensor([-1]))
    assert int(memory.get()["id"][1]) != -1
    folders = {memory.directory, twin.directory}
    del memory, twin
    gc.collect()
    assert not any(os.path.exists(f) for f in folders)
    assert tmp_path.exists()  # the user's folder itself stays


def test_empty_like_keeps_storage_and_generator() -> None:
    memory = filled("mmap")
    fresh = memory.empty_like()
    assert len(fresh) == 0 and fresh.storage == "mmap" and fresh.directory != memory.directory
    assert torch.equal(fresh.generator.get_state(), memory.generator.get_state())


def test_bad_storage_options() -> None:
    with pytest.raises(ConfigError, match="storage"):
        TensorMemory(5, storage="disk")
    with pytest.raises(ConfigError, match="only used with storage='mmap'"):
        TensorMemory(5, directory="/tmp")
    with pytest.raises(ConfigError, match="CPU"):
        TensorMemory(5, storage="mmap", device="meta")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_corrupt_npy_files_are_refused_without_unpickling() -> None:
    memory = TensorMemory(10, storage="mmap")
    memory.add({"x": torch.arange(20.0).view(10, 2), "y": torch.arange(10)})
    files = {
        k: Path(v).read_bytes() if isinstance(v, os.PathLike) else v
        for k, v in memory.to_files().items()
    }
    key = "memory/array-00000.npy"
    cases = {
        "object dtype": _npy(np.array([[object(), 1]] * 10, dtype=object)),
        "wrong dtype": _npy(np.zeros((10, 2), dtype=np.float64)),
        "wrong shape": _npy(np.zeros((9, 2), dtype=np.float32)),
        "fortran": _npy(
            np.asfortranarray(np.zeros((10, 2), dtype=np.float32))[:, :1].copy(order="F")
        ),
        "truncated": files[key][:-3],
        "not npy": b"garbage" * 20,
    }
    for what, data in cases.items():
        with pytest.raises(StateCorruptError, match="array-00000.npy"):
            TensorMemory.from_files(dict(files, **{key: data}))
            pytest.fail(what)
    missing = dict(files)
    del missing[key]
    with pytest.raises(StateCorruptError, match="missing"):
        TensorMemory.from_files(missing)
