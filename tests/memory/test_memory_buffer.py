"""TensorMemory: insertion, field checks, sampling, reservoir statistics, infinite growth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ricordo.errors import ConfigError, DataError
from ricordo.memory import POLICIES, MemoryPolicy, ReservoirPolicy, TensorMemory


def batch(start: int, n: int) -> dict[str, torch.Tensor]:
    """Rows whose content encodes their stream position, so stored items are identifiable."""
    ids = torch.arange(start, start + n)
    return {
        "x": ids.float()[:, None].repeat(1, 3),
        "y": ids % 7,
        "id": ids,
    }


def stream(memory: TensorMemory, total: int, size: int) -> None:
    for start in range(0, total, size):
        memory.add(batch(start, min(size, total - start)))


def test_reservoir_keeps_min_capacity_seen() -> None:
    memory = TensorMemory(50, seed=3)
    assert len(memory) == 0 and memory.seen == 0 and memory.fields == ()
    for start, n in [(0, 20), (20, 20), (40, 20), (60, 200), (260, 1)]:
        memory.add(batch(start, n))
        assert memory.seen == start + n
        assert len(memory) == min(50, start + n)
    ids = memory.get()["id"]
    assert ids.unique().numel() == 50  # every slot holds a distinct item
    stored = memory.get()
    assert torch.equal(stored["x"][:, 0].long(), stored["id"])  # rows stay consistent across fields
    assert torch.equal(stored["y"], stored["id"] % 7)
    assert memory.fields == ("x", "y", "id")
    assert memory.capacity == 50 and memory.policy_name == "reservoir"


def test_fill_phase_is_exact_and_returns_slots() -> None:
    memory = TensorMemory(10)
    assert torch.equal(memory.add(batch(0, 4)), torch.arange(4))
    slots = memory.add(batch(4, 8))  # 6 fill the memory, 2 are offered to the reservoir
    # A filling row keeps its slot unless a later row of the same batch drew that slot.
    assert ((slots[:6] == torch.arange(4, 10)) | (slots[:6] == -1)).all()
    assert len(memory) == 10
    got = memory.get()["id"]
    for row, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert int(got[slot]) == 4 + row
    assert memory.add(batch(12, 0)).numel() == 0 and memory.seen == 12


@pytest.mark.parametrize("size", [1, 7, 32, 100, 400])
def test_batch_and_one_by_one_are_identical(size: int) -> None:
    whole = TensorMemory(60, seed=11)
    single = TensorMemory(60, seed=11)
    stream(whole, 1000, size)
    for i in range(1000):
        single.add(batch(i, 1))
    for name in whole.fields:
        assert torch.equal(whole.get()[name], single.get()[name])
    assert torch.equal(whole.sample(20)["id"], single.sample(20)["id"])


def test_loop_and_vectorised_paths_agree() -> None:
    looped = ReservoirPolicy(100)
    vectorised = ReservoirPolicy(100)
    vectorised.loop_max_rows = 0
    for seen, n in [(0, 64), (90, 64), (100, 64), (5000, 64), (150, 3), (64, 50), (0, 300)]:
        g1 = torch.Generator().manual_seed(seen + n)
        g2 = torch.Generator().manual_seed(seen + n)
        kwargs = {"seen": seen, "size": min(seen, 100), "n": n, "labels": None}
        s1, r1 = looped.place(**kwargs, generator=g1)
        s2, r2 = vectorised.place(**kwargs, generator=g2)
        assert torch.equal(s1, s2) and torch.equal(r1, r2)
        assert s1.dtype == r1.dtype == torch.int64
        assert s1.unique().numel() == s1.numel()  # contract: unique slots
        assert torch.equal(g1.get_state(), g2.get_state())


def test_reservoir_overwrite_within_batch_keeps_later_row() -> None:
    # Capacity 1: after the first item every item t replaces slot 0 with probability 1/(t+1);
    # the stored item must be the last row of the batch that drew slot 0.
    memory = TensorMemory(1, seed=0)
    one = TensorMemory(1, seed=0)
    for start in range(0, 2000, 50):
        memory.add(batch(start, 50))
        for i in range(start, start + 50):
            one.add(batch(i, 1))
        assert torch.equal(memory.get()["id"], one.get()["id"])


def test_reservoir_inclusion_is_uniform() -> None:
    """Each of N items is kept with probability C/N; 'first C' or 'last C' would fail badly."""
    n_items, capacity, runs = 2000, 100, 300
    counts = torch.zeros(n_items)
    ids = {"id": torch.arange(n_items)}
    for seed in range(runs):
        memory = TensorMemory(capacity, seed=seed)
        for start in range(0, n_items, 200):
            memory.add({"id": ids["id"][start : start + 200]})
        counts[memory.get()["id"]] += 1
    freq = counts / runs
    expected = capacity / n_items  # 0.05; per-item std = sqrt(p(1-p)/runs) ~ 0.0126
    # Block means of 200 items are tight (std ~ 0.0009): old and new items are equally likely.
    blocks = freq.view(10, 200).mean(1)
    assert (blocks - expected).abs().max() < 0.006, blocks
    assert abs(float(freq.mean()) - expected) < 1e-6  # exactly C kept in every run
    assert float(freq.max()) < 0.15 and float(freq.min()) >= 0.0
    # Chi-square over 10 blocks of the pooled counts against uniform.
    block_counts = counts.view(10, 200).sum(1)
    mean = float(block_counts.mean())
    chi2 = float(((block_counts - mean) ** 2 / mean).sum())
    assert chi2 < 27.9, chi2  # 99.9% quantile of chi2 with 9 dof


def test_fields_are_fixed_by_first_add() -> None:
    memory = TensorMemory(10)
    memory.add(batch(0, 3))
    with pytest.raises(DataError, match="'x'"):
        memory.add({**batch(3, 2), "x": torch.zeros(2, 4)})
    with pytest.raises(DataError, match="'y'"):
        memory.add({**batch(3, 2), "y": torch.zeros(2, dtype=torch.int32)})
    with pytest.raises(DataError, match="missing \\['id'\\]"):
        memory.add({k: v for k, v in batch(3, 2).items() if k != "id"})
    with pytest.raises(DataError, match="unexpected \\['z'\\]"):
        memory.add({**batch(3, 2), "z": torch.zeros(2)})
    with pytest.raises(DataError, match="'id' has 3 rows"):
        memory.add({**batch(3, 2), "id": torch.arange(3)})
    with pytest.raises(DataError, match="scalar"):
        memory.add({**batch(3, 2), "y": torch.tensor(1)})
    with pytest.raises(DataError, match="non-empty"):
        memory.add({})
    assert memory.seen == 3 and len(memory) == 3  # failed adds change nothing


def test_values_are_copied_and_detached() -> None:
    memory = TensorMemory(5)
    x = torch.ones(2, 3, requires_grad=True)
    memory.add({"x": x * 2})
    stored = memory.get()["x"]
    assert not stored.requires_grad
    with torch.no_grad():
        x.mul_(10)
    assert torch.equal(stored, torch.full((2, 3), 2.0))


def test_sample_is_reproducible_and_without_replacement() -> None:
    a, b = TensorMemory(500, seed=5), TensorMemory(500, seed=5)
    stream(a, 800, 40)
    stream(b, 800, 40)
    for n in [1, 10, 100, 499, 500, 10_000]:
        sa, sb = a.sample(n), b.sample(n)
        assert torch.equal(sa["id"], sb["id"])
        assert sa["id"].numel() == min(n, 500)
        assert sa["id"].unique().numel() == sa["id"].numel()
    c = TensorMemory(500, seed=6)
    stream(c, 800, 40)
    assert not torch.equal(a.sample(50)["id"], c.sample(50)["id"])
    assert TensorMemory(3).sample(5) == {}
    with pytest.raises(ConfigError):
        a.sample(-1)


def test_sample_large_memory_uses_rejection_and_stays_uniform() -> None:
    memory = TensorMemory(None, "infinite", seed=0)
    memory.add({"id": torch.arange(20_000)})
    hits = torch.zeros(20_000)
    for _ in range(200):
        index = memory.sample_indices(500)
        assert index.unique().numel() == 500 and int(index.max()) < 20_000
        hits[index] += 1
    blocks = hits.view(10, 2000).sum(1)  # each block expects 200 * 500 / 10 = 10_000
    assert ((blocks - 10_000).abs() < 600).all(), blocks
    assert torch.equal(memory.get(index)["id"], index)


def test_get_and_update_field() -> None:
    memory = TensorMemory(8)
    memory.add({"x": torch.arange(6.0)[:, None], "logits": torch.zeros(6, 2)})
    assert memory.get()["x"].shape == (6, 1)
    memory.update_field("logits", torch.tensor([1, 4]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    got = memory.get(torch.tensor([4, 1, 0]))
    assert torch.equal(got["logits"], torch.tensor([[3.0, 4.0], [1.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(got["x"][:, 0], torch.tensor([4.0, 1.0, 0.0]))
    with pytest.raises(DataError, match="no field 'nope'"):
        memory.update_field("nope", torch.tensor([0]), torch.zeros(1, 2))
    with pytest.raises(DataError, match="shape"):
        memory.update_field("logits", torch.tensor([0]), torch.zeros(1, 3))
    with pytest.raises(IndexError):
        memory.get(torch.tensor([6]))  # allocated but never filled: must not read garbage
    with pytest.raises(IndexError):
        memory.update_field("logits", torch.tensor([6]), torch.zeros(1, 2))
    with pytest.raises(DataError, match="integer tensor"):
        memory.get(torch.tensor([True, False]))  # a mask would silently become slots 1, 0
    with pytest.raises(DataError, match="integer tensor"):
        memory.get(torch.tensor([1.0]))
    assert memory.sample(np.int64(2))["x"].shape == (2, 1)  # numpy sizes are fine
    with pytest.raises(ConfigError, match="2.0"):
        memory.sample(2.0)  # type: ignore[arg-type]
    memory.add_field("mask", torch.tensor([True, False]))
    assert memory.fields == ("x", "logits", "mask")
    assert memory.get()["mask"].tolist() == [[True, False]] * 6
    memory.add({"x": torch.ones(1, 1), "logits": torch.ones(1, 2), "mask": torch.ones(1, 2) > 0})
    assert len(memory) == 7


def test_infinite_grows_and_keeps_order() -> None:
    memory = TensorMemory(None, "infinite")
    assert memory.capacity is None and memory.policy_name == "infinite"
    stream(memory, 5000, 37)
    assert len(memory) == memory.seen == 5000
    assert torch.equal(memory.get()["id"], torch.arange(5000))
    allocated = memory._rows_allocated()
    assert 5000 <= allocated < 10_000  # doubling, not one reallocation per add
    memory.add(batch(5000, 20_000))  # one batch larger than the doubled size
    assert torch.equal(memory.get()["id"], torch.arange(25_000))


def test_bad_capacity_and_policy() -> None:
    for capacity in [0, -3, None, 2.5, True]:
        with pytest.raises(ConfigError, match="capacity"):
            TensorMemory(capacity)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="capacity=None"):
        TensorMemory(10, "infinite")
    with pytest.raises(ConfigError) as info:
        TensorMemory(10, "fifo-ish")
    message = str(info.value)
    assert "'fifo-ish'" in message and "infinite" in message and "reservoir" in message
    assert "\n" not in message
    assert {"reservoir", "infinite"} <= set(POLICIES.names())


def test_custom_policy_plugs_in_with_labels() -> None:
    """A policy needing labels gets them; the memory enforces the placement contract."""

    class EvenLabels(MemoryPolicy):
        name = "even-labels-test"
        needs_labels = True

        def place(self, *, seen, size, n, labels, generator):  # type: ignore[no-untyped-def]
            assert labels is not None
            rows = torch.nonzero(labels % 2 == 0).flatten()[: self.capacity - size]
            return torch.arange(size, size + rows.numel()), rows

    memory = TensorMemory(5, EvenLabels(5))
    memory.add({"x": torch.arange(8.0), "y": torch.arange(8)})
    assert memory.get()["y"].tolist() == [0, 2, 4, 6]
    fresh = TensorMemory(5, EvenLabels(5))
    with pytest.raises(DataError, match="needs labels in field 'y'"):
        fresh.add({"x": torch.arange(2.0), "z": torch.arange(2)})
    assert fresh.fields == ()  # a refused first batch does not fix the fields
    with pytest.raises(ConfigError, match="differs"):
        TensorMemory(6, EvenLabels(5))

    class Broken(MemoryPolicy):
        name = "broken-test"

        def place(self, *, seen, size, n, labels, generator):  # type: ignore[no-untyped-def]
            return torch.tensor([size + 1]), torch.tensor([0])  # leaves a hole at `size`

    with pytest.raises(RuntimeError, match="placement contract"):
        TensorMemory(5, Broken(5)).add({"x": torch.zeros(1)})


@pytest.mark.parametrize("n", [30, 200, 1000])
def test_sample_loop_and_vectorised_paths_agree(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from ricordo.memory import buffer

    def draws(loop_max: int) -> list[torch.Tensor]:
        monkeypatch.setattr(buffer, "_SAMPLE_LOOP_MAX", loop_max)
        memory = TensorMemory(None, "infinite", seed=4)
        memory.add({"id": torch.arange(5000)})
        return [memory.sample_indices(n) for _ in range(20)]

    looped, vectorised = draws(10**6), draws(0)
    for a, b in zip(looped, vectorised, strict=True):
        assert torch.equal(a, b)
        assert a.unique().numel() == n
