"""class-balanced, sliding-window and herding policies: behaviour, persistence, cost."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from ricordo.errors import ConfigError, DataError, StateCorruptError
from ricordo.memory import POLICIES, ClassBalancedPolicy, TensorMemory
from ricordo.memory.policies import balanced_quota


def rows(start: int, labels: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows whose ``id`` is their stream position, with the given labels."""
    y = torch.as_tensor(labels, dtype=torch.int64)
    ids = torch.arange(start, start + len(y))
    return {"x": ids.float()[:, None].repeat(1, 2), "y": y, "id": ids}


def feed(memory: TensorMemory, labels: torch.Tensor, batch: int) -> None:
    for start in range(0, len(labels), batch):
        memory.add(rows(memory.seen, labels[start : start + batch]))


def check_consistent(memory: TensorMemory) -> None:
    """Stored rows are intact and the policy's per-class bookkeeping matches the stored labels."""
    stored = memory.get()
    assert torch.equal(stored["x"][:, 0].long(), stored["id"])
    assert stored["id"].unique().numel() == len(memory)
    policy = memory.policy
    assert isinstance(policy, ClassBalancedPolicy)
    counted = dict(zip(*torch.unique(stored["y"], return_counts=True), strict=True))
    assert policy.counts() == {int(c): int(n) for c, n in counted.items()}
    for label, slots in policy._slots.items():
        assert all(int(stored["y"][s]) == label for s in slots)


def test_registry_has_every_policy() -> None:
    expected = {"reservoir", "infinite", "class-balanced", "sliding-window", "herding"}
    assert expected <= set(POLICIES.names())


# ------------------------------------------------------------------------------ class-balanced


@pytest.mark.parametrize("batch", [1, 10, 64])
def test_class_balanced_counts_differ_by_at_most_one_when_full(batch: int) -> None:
    gen = torch.Generator().manual_seed(batch)
    memory = TensorMemory(53, "class-balanced", seed=1)
    # Skewed fill (mostly class 0), then a shuffled stream of 7 classes.
    feed(memory, torch.zeros(40, dtype=torch.int64), batch)
    feed(memory, torch.randint(0, 7, (600,), generator=gen), batch)
    check_consistent(memory)
    counts = torch.bincount(memory.get()["y"], minlength=7)
    assert len(memory) == 53 and int(counts.max() - counts.min()) <= 1, counts


def test_class_balanced_class_incremental_stream_is_balanced_after_each_chunk() -> None:
    memory = TensorMemory(60, "class-balanced", seed=0)
    for chunk in range(5):  # two new classes per chunk, 100 rows each, in order
        labels = torch.tensor([2 * chunk] * 100 + [2 * chunk + 1] * 100)
        feed(
            memory, labels[torch.randperm(200, generator=torch.Generator().manual_seed(chunk))], 32
        )
        check_consistent(memory)
        counts = torch.bincount(memory.get()["y"])
        present = counts[counts > 0]
        assert len(present) == 2 * (chunk + 1)  # no class is ever evicted completely
        assert int(present.max() - present.min()) <= 1, counts


def test_class_balanced_skips_rows_of_the_largest_classes() -> None:
    memory = TensorMemory(4, "class-balanced", seed=0)
    memory.add(rows(0, [0, 0, 1, 1]))
    before = memory.get()["id"].clone()
    assert memory.add(rows(4, [0, 1, 1, 0])).tolist() == [-1] * 4  # all tied at the top: skip
    assert torch.equal(memory.get()["id"], before)
    slots = memory.add(rows(8, [2]))
    assert int(slots[0]) >= 0  # a new class evicts from a largest class
    assert sorted(memory.get()["y"].tolist()).count(2) == 1


def test_class_balanced_ties_are_uniform_among_the_largest_classes() -> None:
    """Renate appends a new maximum class twice, biasing tie-breaks; each one here once."""
    evicted = torch.zeros(4)
    for seed in range(400):
        memory = TensorMemory(8, "class-balanced", seed=seed)
        memory.add(rows(0, [0, 0, 1, 1, 2, 2, 3, 3]))
        memory.add(rows(8, [9]))
        left = torch.bincount(memory.get()["y"][memory.get()["y"] < 9], minlength=4)
        evicted += 2 - left
    assert int(evicted.sum()) == 400
    assert ((evicted - 100).abs() < 35).all(), evicted  # ~1/4 each, binomial sd ~ 8.7


def test_class_balanced_batch_and_row_by_row_are_identical() -> None:
    labels = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(3))
    whole, single = (
        TensorMemory(37, "class-balanced", seed=5),
        TensorMemory(37, "class-balanced", seed=5),
    )
    feed(whole, labels, 100)
    feed(single, labels, 1)
    assert torch.equal(whole.get()["id"], single.get()["id"])
    assert whole.policy._slots == single.policy._slots


def test_class_balanced_round_trip_continues_identically() -> None:
    gen = torch.Generator().manual_seed(0)
    memory = TensorMemory(30, "class-balanced", seed=2)
    feed(memory, torch.randint(0, 6, (200,), generator=gen), 16)
    restored = TensorMemory.from_files(memory.to_files())
    assert restored.policy._slots == memory.policy._slots
    assert restored.policy._by_count == memory.policy._by_count
    more = torch.randint(0, 9, (300,), generator=gen)
    feed(memory, more, 16)
    feed(restored, more, 16)
    assert torch.equal(memory.get()["id"], restored.get()["id"])
    check_consistent(restored)


def test_class_balanced_rejects_bad_labels_and_corrupt_state() -> None:
    memory = TensorMemory(5, "class-balanced")
    with pytest.raises(DataError, match="integer class label"):
        memory.add({"x": torch.zeros(2, 1), "y": torch.zeros(2)})
    with pytest.raises(DataError, match="needs labels"):
        memory.add({"x": torch.zeros(2, 1)})
    memory.add(rows(0, [0, 1, 1]))
    files = memory.to_files()
    from safetensors.torch import load, save

    state = load(files["memory/state.safetensors"])
    state["policy.slots"] = torch.tensor([0, 0, 1])
    bad = dict(files, **{"memory/state.safetensors": save(state)})
    with pytest.raises(StateCorruptError, match="policy state"):
        TensorMemory.from_files(bad)


def _steady_add_us(capacity: int, policy: str, repeats: int = 5) -> float:
    """Microseconds per add of 32 rows into a full memory (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(0)
    pool = [
        {"y": torch.randint(0, 10, (32,), generator=gen), "v": torch.randn(32, 4, generator=gen)}
        for _ in range(16)
    ]
    memory = TensorMemory(capacity, policy, seed=0)
    memory.add(
        {"y": torch.arange(capacity) % 10, "v": torch.zeros(capacity, 4)}
    )  # full in one call
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(100):
            memory.add(pool[i % 16])
        best = min(best, (time.perf_counter() - start) / 100 * 1e6)
    return best


@pytest.mark.parametrize("policy", ["class-balanced", "sliding-window"])
def test_insert_cost_stays_flat_as_capacity_grows(policy: str) -> None:
    """O(batch) per add: 100x the capacity must not make an add noticeably slower."""
    small = _steady_add_us(1_000, policy)
    large = _steady_add_us(100_000, policy)
    # Generous bound (a shared CI machine is noisy); an O(capacity) add would be ~100x.
    assert large < 4 * small + 50, (small, large)


# ------------------------------------------------------------------------------ sliding window


@pytest.mark.parametrize("batch", [1, 7, 25, 100])
def test_sliding_window_holds_exactly_the_last_rows(batch: int) -> None:
    memory = TensorMemory(25, "sliding-window")
    for total in (10, 25, 26, 113, 300):
        feed(memory, torch.zeros(total - memory.seen, dtype=torch.int64), batch)
        stored = memory.get()
        assert len(memory) == min(total, 25)
        assert sorted(stored["id"].tolist()) == list(range(max(0, total - 25), total))
        assert torch.equal(stored["x"][:, 0].long(), stored["id"])
        # Slot t % capacity holds item t: the ring order is recoverable.
        assert (stored["id"] % 25 == torch.arange(len(memory))).all()


def test_sliding_window_round_trip_continues_identically() -> None:
    memory = TensorMemory(10, "sliding-window")
    feed(memory, torch.zeros(37, dtype=torch.int64), 4)
    restored = TensorMemory.from_files(memory.to_files())
    for m in (memory, restored):
        feed(m, torch.zeros(8, dtype=torch.int64), 3)
    assert torch.equal(memory.get()["id"], restored.get()["id"])
    assert sorted(restored.get()["id"].tolist()) == list(range(35, 45))


# ------------------------------------------------------------------------------ herding


def test_balanced_quota_water_fills() -> None:
    assert balanced_quota({0: 100, 1: 100, 2: 100}, 10) == {0: 4, 1: 3, 2: 3}
    assert balanced_quota({0: 2, 1: 100, 2: 100}, 10) == {0: 2, 1: 4, 2: 4}
    assert balanced_quota({0: 2, 1: 3}, 10) == {0: 2, 1: 3}
    assert balanced_quota({5: 1, 7: 9}, 0) == {5: 0, 7: 0}
    assert balanced_quota({}, 10) == {}


def herd_batch(start: int, n: int, label: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(start, start + n)
    return {
        "x": torch.randn(n, 3, generator=gen) + 3 * label,
        "y": torch.full((n,), label),
        "id": ids,
    }


def test_herding_fills_free_slots_then_reselects_balanced_exemplars() -> None:
    memory = TensorMemory(12, "herding")
    policy = memory.policy
    assert policy.offline and not POLICIES.get("reservoir").offline
    chunk = {
        k: torch.cat([a, b])
        for (k, a), b in zip(
            herd_batch(0, 30, 0, 0).items(), herd_batch(30, 30, 1, 1).values(), strict=True
        )
    }
    memory.add({k: v[:20] for k, v in chunk.items()})  # rows stored while training
    assert len(memory) == 12 and memory.add({k: v[20:] for k, v in chunk.items()}).eq(-1).all()
    picks = memory.reselect(lambda x: x, chunk)
    stored = memory.get()
    assert len(memory) == 12 and torch.bincount(stored["y"]).tolist() == [6, 6]
    # The pool was the chunk only (the rows stored during training are copies of it).
    assert picks.tolist() == stored["id"].tolist()
    assert stored["id"].unique().numel() == 12
    # Each class's exemplars are that class's herding order on the embedded features.
    from ricordo.memory.herding import herding_order

    for label in (0, 1):
        mine = (chunk["y"] == label).nonzero().flatten()
        expected = mine[herding_order(chunk["x"][mine], 6)]
        assert stored["id"][stored["y"] == label].tolist() == expected.tolist()

    # Next update: two more classes; old exemplars stay in the pool, new rows never evict them.
    new = {
        k: torch.cat([a, b])
        for (k, a), b in zip(
            herd_batch(60, 30, 2, 2).items(), herd_batch(90, 30, 3, 3).values(), strict=True
        )
    }
    assert memory.add(new).eq(-1).all()
    memory.reselect(lambda x: x, new)
    stored = memory.get()
    assert torch.bincount(stored["y"]).tolist() == [3, 3, 3, 3]
    assert set(stored["id"][stored["y"] < 2].tolist()) <= set(picks.tolist())
    restored = TensorMemory.from_files(memory.to_files())
    assert restored.policy.pool_size(len(restored)) == 12


def test_reselect_needs_an_offline_policy_and_matching_fields() -> None:
    with pytest.raises(ConfigError, match="offline"):
        TensorMemory(5).reselect(lambda x: x, rows(0, [0]))
    memory = TensorMemory(5, "herding")
    memory.add(
        {
            "x": torch.zeros(2, 2),
            "y": torch.zeros(2, dtype=torch.int64),
            "logits": torch.zeros(2, 3),
        }
    )
    with pytest.raises(ConfigError, match="memory_candidates"):
        memory.reselect(
            lambda x: x, {"x": torch.zeros(2, 2), "y": torch.zeros(2, dtype=torch.int64)}
        )


@pytest.mark.parametrize("policy", ["class-balanced", "sliding-window", "herding"])
def test_deepcopy_is_independent(policy: str) -> None:
    memory = TensorMemory(20, policy, seed=4)
    feed(memory, torch.arange(30) % 3, 8)
    twin = copy.deepcopy(memory)
    assert torch.equal(twin.get()["id"], memory.get()["id"])
    feed(twin, torch.arange(30) % 5, 8)
    feed(memory, torch.arange(30) % 5, 8)
    assert torch.equal(twin.get()["id"], memory.get()["id"])
    twin.update_field("x", torch.tensor([0]), torch.full((1, 2), -1.0))
    assert float(memory.get()["x"][0, 0]) != -1.0
