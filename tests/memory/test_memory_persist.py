"""TensorMemory.to_files / from_files: bit-exact round trip, sharding, corruption detection."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ricordo.errors import StateCorruptError, StateVersionError
from ricordo.memory import TensorMemory


def filled(capacity: int | None = 40, policy: str = "reservoir", seed: int = 1) -> TensorMemory:
    memory = TensorMemory(capacity, policy, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, 150, 25):
        memory.add(
            {
                "x": torch.randn(25, 2, 3, generator=gen),
                "y": torch.arange(start, start + 25),
                "half": torch.randn(25, 4, generator=gen).to(torch.bfloat16),
                "flag": torch.rand(25, generator=gen) > 0.5,
            }
        )
    return memory


def next_batch(start: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(start)
    return {
        "x": torch.randn(25, 2, 3, generator=gen),
        "y": torch.arange(start, start + 25),
        "half": torch.randn(25, 4, generator=gen).to(torch.bfloat16),
        "flag": torch.rand(25, generator=gen) > 0.5,
    }


def assert_same(a: TensorMemory, b: TensorMemory) -> None:
    assert (len(a), a.seen, a.capacity, a.policy_name, a.fields) == (
        len(b),
        b.seen,
        b.capacity,
        b.policy_name,
        b.fields,
    )
    for name in a.fields:
        ta, tb = a.get()[name], b.get()[name]
        assert ta.dtype == tb.dtype and ta.shape == tb.shape
        # Bit-for-bit: compare raw bytes, so NaN payloads and -0.0 count too.
        assert torch.equal(ta.contiguous().view(torch.uint8), tb.contiguous().view(torch.uint8))


@pytest.mark.parametrize("policy, capacity", [("reservoir", 40), ("infinite", None)])
def test_round_trip_is_exact_and_continues_identically(policy: str, capacity: int | None) -> None:
    memory = filled(capacity, policy)
    memory.update_field(
        "x", torch.tensor([0]), torch.tensor([[[float("nan"), -0.0, 1, 2, 3, 4]]]).view(1, 2, 3)
    )
    files = memory.to_files()
    assert set(files) == {
        "memory/index.json",
        "memory/state.safetensors",
        "memory/shard-00000.safetensors",
    }
    restored = TensorMemory.from_files(files)
    assert_same(memory, restored)
    for step in range(5):
        start = 150 + 25 * step
        assert torch.equal(memory.add(next_batch(start)), restored.add(next_batch(start)))
        assert torch.equal(memory.sample_indices(17), restored.sample_indices(17))
    assert_same(memory, restored)
    # Saving again gives the same bytes: the format is deterministic.
    assert memory.to_files() == restored.to_files()


def test_multi_shard_split_rows() -> None:
    memory = filled()
    row_bytes = sum(t[:1].nbytes for t in memory.get().values())
    files = memory.to_files("state/mem/", max_shard_bytes=row_bytes * 7 + 1)
    index = json.loads(files["state/mem/index.json"])
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [
        (0, 7),
        (7, 14),
        (14, 21),
        (21, 28),
        (28, 35),
        (35, 40),
    ]
    for shard in index["shards"]:
        data = files["state/mem/" + shard["file"]]
        assert len(data) <= row_bytes * 7 + 1024  # payload within the limit, plus a small header
    restored = TensorMemory.from_files(files, "state/mem/")
    assert_same(memory, restored)
    assert torch.equal(memory.sample(9)["y"], restored.sample(9)["y"])
    # A row bigger than the limit still gets saved, one row per shard.
    tiny = memory.to_files(max_shard_bytes=1)
    assert len([k for k in tiny if "shard-" in k]) == 40
    assert_same(memory, TensorMemory.from_files(tiny))


def test_empty_memories_round_trip() -> None:
    fresh = TensorMemory(5, seed=9)
    restored = TensorMemory.from_files(fresh.to_files())
    assert len(restored) == 0 and restored.fields == ()
    restored.add({"x": torch.arange(3.0)})
    fresh.add({"x": torch.arange(3.0)})
    assert_same(fresh, restored)
    shaped = TensorMemory(5)
    shaped.add({"x": torch.zeros(0, 4)})  # fields fixed, nothing stored
    again = TensorMemory.from_files(shaped.to_files())
    assert again.fields == ("x",) and again.field_spec("x") == ((4,), torch.float32)


def edit_index(files: dict[str, bytes], **changes: object) -> dict[str, bytes]:
    index = json.loads(files["memory/index.json"])
    index.update(changes)
    return {**files, "memory/index.json": json.dumps(index).encode()}


def corruptions() -> dict[str, tuple[dict[str, bytes], str]]:
    memory = filled()
    row_bytes = sum(t[:1].nbytes for t in memory.get().values())
    files = memory.to_files(max_shard_bytes=row_bytes * 16)  # shards of 16, 16, 8 rows
    index = json.loads(files["memory/index.json"])
    shard1 = "memory/" + index["shards"][1]["file"]
    shard_tensors = st_load(files[shard1])
    fields = index["fields"]
    wrong_dtype = [dict(f, dtype="float64") if f["name"] == "x" else f for f in fields]
    wrong_shape = [dict(f, shape=[3, 2]) if f["name"] == "x" else f for f in fields]
    gaps = [dict(s) for s in index["shards"]]
    gaps[1]["start"] += 1
    return {
        "missing index": ({k: v for k, v in files.items() if "index" not in k}, "missing"),
        "index not json": ({**files, "memory/index.json": b"{nope"}, "not valid JSON"),
        "index not object": ({**files, "memory/index.json": b"[]"}, "not a JSON object"),
        "wrong format": (edit_index(files, format="other"), "format"),
        "missing key": (
            {**files, "memory/index.json": json.dumps({**index, "seen": None}).encode()},
            "'seen'",
        ),
        "size over capacity": (edit_index(files, size=41), "inconsistent size"),
        "seen below size": (edit_index(files, seen=10), "inconsistent size"),
        "unknown policy": (edit_index(files, policy="lru"), "unknown memory policy 'lru'"),
        "bad dtype name": (
            edit_index(files, fields=[dict(fields[0], dtype="complex7"), *fields[1:]]),
            "invalid field entry",
        ),
        "duplicate field": (edit_index(files, fields=[fields[0], *fields]), "twice"),
        "missing shard": ({k: v for k, v in files.items() if k != shard1}, "missing"),
        "truncated shard": ({**files, shard1: files[shard1][:-10]}, "unreadable"),
        "garbage shard": ({**files, shard1: b"\x00" * 5}, "unreadable"),
        "shard lacks field": (
            {**files, shard1: st_save({k: v for k, v in shard_tensors.items() if k != "y"})},
            "holds fields",
        ),
        "shard wrong rows": (
            {**files, shard1: st_save({k: v[:-1].clone() for k, v in shard_tensors.items()})},
            "field",
        ),
        "index dtype mismatch": (edit_index(files, fields=wrong_dtype), "'x'"),
        "index shape mismatch": (edit_index(files, fields=wrong_shape), "'x'"),
        "shard gap": (edit_index(files, shards=gaps), "shard 1 covers rows"),
        "shards short": (edit_index(files, shards=index["shards"][:2]), "cover 32 rows"),
        "missing state": (
            {k: v for k, v in files.items() if "state.safetensors" not in k},
            "state file",
        ),
        "bad generator": (
            {
                **files,
                "memory/state.safetensors": st_save(
                    {"generator": torch.zeros(3, dtype=torch.uint8)}
                ),
            },
            "generator state",
        ),
        "policy state junk": (edit_index(files, policy_state={"bogus": 1}), "policy state"),
    }


CASES = corruptions()


@pytest.mark.parametrize("case", sorted(CASES))
def test_corruption_raises_one_line_state_corrupt_error(case: str) -> None:
    files, fragment = CASES[case]
    with pytest.raises(StateCorruptError) as info:
        TensorMemory.from_files(files)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message


def test_newer_format_version_is_refused() -> None:
    files = edit_index(filled().to_files(), version=99)
    with pytest.raises(StateVersionError, match="version 99"):
        TensorMemory.from_files(files)


def test_no_pickle_in_files() -> None:
    files = filled().to_files()
    for path, data in files.items():
        assert not data.startswith(b"\x80"), path  # pickle protocol marker
        assert b"PK\x03\x04" not in data[:4], path  # torch.save zip container
