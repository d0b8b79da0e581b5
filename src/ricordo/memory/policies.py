"""Selection policies: which incoming rows a rehearsal memory keeps, and in which slots.

A policy only decides placement; the memory owns the tensors. Each policy is one class registered in
``POLICIES``. Every ``place`` call costs O(batch), never O(capacity) (Avalanche's class-balanced
buffer slows down 100x as memories grow, avalanche#650/#653).

Which policy suits which method: ``reservoir`` (default, uniform over the stream),
``class-balanced`` (GDumb's greedy balancing; needs integer labels), ``sliding-window`` (the most
recent rows, for drifting streams) and ``herding`` (iCaRL-style offline selection at the end of
each update; needs a model with penultimate features and rows made only of ``x`` and ``y``, e.g.
ER) and ``gradient-matching`` (offline like herding, from the gradients of freshly initialised
copies of the model: ``ricordo.memory.gradient_matching``) all work with any method that inserts
into its memory (ER and the replay family). ``infinite`` is for ``joint``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ricordo.errors import ConfigError, DataError
from ricordo.registry import Registry

__all__ = [
    "POLICIES",
    "ClassBalancedPolicy",
    "GradientMatchingPolicy",
    "HerdingPolicy",
    "InfinitePolicy",
    "MemoryPolicy",
    "ReservoirPolicy",
    "SlidingWindowPolicy",
    "balanced_quota",
    "keep_last_per_slot",
]

# Random draws are integers in [0, 2**62) reduced modulo t + 1: exact integer arithmetic (no float
# rounding), with a modulo bias below t / 2**62, i.e. invisible for any realistic stream length.
_DRAW_HIGH = 2**62


class MemoryPolicy:
    """Base class: decide, for one offered batch, which rows go to which memory slots.

    Contract for ``place``: return ``(slots, rows)``, two int64 CPU tensors of equal length;
    ``rows`` index the incoming batch, ``slots`` index memory storage. Rows and slots must each be
    unique (resolve
    overwrites inside the batch yourself, e.g. with ``keep_last_per_slot``), lie below ``capacity``,
    and keep the filled part a prefix: slots at or beyond the current ``size`` must be exactly
    ``size, size + 1, ...``. All randomness must come from ``generator`` (the memory saves its
    state).
    """

    name: ClassVar[str] = ""
    # True: the policy stores without bound; capacity must be None and storage grows by doubling.
    unbounded: ClassVar[bool] = False
    # True: ``place`` needs the labels of the incoming rows (the memory's label field must exist).
    needs_labels: ClassVar[bool] = False
    # True: the policy selects offline, from features, at the end of each update
    # (``TensorMemory.reselect``); ``place`` then only fills free slots in between.
    offline: ClassVar[bool] = False
    # True (offline policies): ``reselect``'s embedding takes each batch's labels too.
    embeds_labels: ClassVar[bool] = False

    def __init__(self, capacity: int | None) -> None:
        if self.unbounded:
            if capacity is not None:
                raise ConfigError(
                    f"memory policy {self.name!r} stores every item, got capacity={capacity!r}; "
                    "pass capacity=None or choose a bounded policy such as 'reservoir'"
                )
        elif isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(
                f"memory policy {self.name!r} needs an integer capacity >= 1, got {capacity!r}; "
                "pass e.g. capacity=1000, or policy='infinite' to keep everything"
            )
        self.capacity = capacity

    def place(
        self,
        *,
        seen: int,
        size: int,
        n: int,
        labels: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Slots and batch rows to store, given ``seen`` items offered before, ``size`` stored."""
        raise NotImplementedError

    def pool_size(self, size: int) -> int:
        """Offline policies: how many stored rows (a prefix of the slots) join the re-selection
        pool; the rest are copies of the chunk, which the caller offers again as candidates."""
        return size

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse (ConfigError) ``--memory-option`` values this policy does not take."""
        if options:
            raise ConfigError(
                f"memory policy {cls.name!r} takes no --memory-option, got {sorted(options)}; "
                "drop them (memory policies with options: gradient-matching)"
            )

    def configure(self, options: Mapping[str, Any]) -> None:
        """Apply the job's ``--memory-option`` values (the engine calls this before each
        re-selection, so they may change from one update to the next)."""
        self.check_options(options)

    def subsample(self, labels: Tensor | None, generator: torch.Generator) -> Tensor | None:
        """Offline policies: the pool rows (sorted int64) to embed and select from, to bound the
        cost on large pools; None: every row. Randomness must come from ``generator``."""
        return None

    def embedding(
        self, model: Any, *, seed: int, device: torch.device
    ) -> Callable[[Tensor, Tensor], Tensor] | None:
        """Offline policies that embed rows themselves: ``(inputs, labels) -> (N, d)`` features
        (gradient-matching: gradients at fresh initialisations of ``model``'s architecture,
        drawn from ``seed``). None: the engine embeds with the trained model's penultimate
        features (herding)."""
        return None

    def select(self, features: Tensor, labels: Tensor | None) -> Tensor:
        """Offline policies: the pool rows to keep (int64, at most ``capacity``), in the order
        they will be stored; called by ``TensorMemory.reselect``."""
        raise NotImplementedError(f"memory policy {self.name!r} does not select offline")

    def reselected(self, size: int) -> None:
        """Offline policies: the memory now holds the ``size`` selected rows."""

    def state_dict(self) -> dict[str, Any]:
        """Policy state to persist: JSON-able values, or tensors (saved in a safetensors file)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned; stateless policies accept only an empty state."""
        if state:
            raise ValueError(f"memory policy {self.name!r} has no state, got keys {sorted(state)}")


POLICIES: Registry[type[MemoryPolicy]] = Registry("memory policy")


def keep_last_per_slot(slots: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Drop earlier writes to a slot that a later row of the same batch overwrites.

    ``rows`` must be ascending. O(batch log batch) and independent of the memory's capacity: a
    stable sort groups equal slots with rows still ascending, and the last of each group wins.
    """
    if slots.numel() < 2:
        return slots, rows
    sorted_slots, order = torch.sort(slots, stable=True)
    last = torch.ones_like(sorted_slots, dtype=torch.bool)
    last[:-1] = sorted_slots[1:] != sorted_slots[:-1]
    return sorted_slots[last], rows[order[last]]


@POLICIES.register("reservoir")
class ReservoirPolicy(MemoryPolicy):
    """Classic reservoir sampling, exactly as if items arrived one at a time.

    Item number ``t`` (0-based over the whole stream) goes to slot ``t`` while ``t < capacity``;
    afterwards ``j`` is drawn uniformly from ``[0, t]`` and the item replaces slot ``j`` if
    ``j < capacity``. Every item seen so far is then stored with probability ``capacity / seen``.
    One draw per item past the fill phase, in stream order, so adding a batch at once or row by
    row consumes the generator identically and gives the same memory.
    """

    name = "reservoir"
    # Up to this many rows a plain Python loop beats a dozen tiny tensor ops (each costs a few
    # microseconds of dispatch); both paths give identical placements for the same draws.
    loop_max_rows: int = 64

    def place(
        self,
        *,
        seen: int,
        size: int,
        n: int,
        labels: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        capacity = self.capacity
        assert capacity is not None  # guaranteed by __init__; narrows the type
        direct = max(0, min(n, capacity - seen))  # rows that land in still-empty slots
        if direct == n:  # fill phase: no randomness, no collisions
            return torch.arange(seen, seen + n), torch.arange(n)
        draws = torch.randint(0, _DRAW_HIGH, (n - direct,), generator=generator)
        if n <= self.loop_max_rows:
            return self._place_loop(seen, direct, draws)
        return self._place_vectorised(seen, n, direct, draws)

    def _place_loop(self, seen: int, direct: int, draws: Tensor) -> tuple[Tensor, Tensor]:
        capacity = self.capacity
        assert capacity is not None
        placed = {seen + row: row for row in range(direct)}
        t = seen + direct  # stream position of the first drawing row
        for offset, draw in enumerate(draws.tolist()):
            j = draw % (t + offset + 1)
            if j < capacity:
                placed[j] = direct + offset  # a later row overwrites an earlier one in slot j
        if not placed:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        slots = sorted(placed)  # slot order, like the vectorised path
        rows = [placed[slot] for slot in slots]
        return torch.tensor(slots, dtype=torch.int64), torch.tensor(rows, dtype=torch.int64)

    def _place_vectorised(
        self, seen: int, n: int, direct: int, draws: Tensor
    ) -> tuple[Tensor, Tensor]:
        capacity = self.capacity
        assert capacity is not None
        rows = torch.arange(direct, n)
        # Position t of each drawing item; j = draw mod (t + 1) is uniform on [0, t].
        j = draws % (rows + (seen + 1))
        hit = j < capacity
        slots, rows = j[hit], rows[hit]
        if direct:
            slots = torch.cat([torch.arange(seen, seen + direct), slots])
            rows = torch.cat([torch.arange(direct), rows])
        return keep_last_per_slot(slots, rows)


@POLICIES.register("infinite")
class InfinitePolicy(MemoryPolicy):
    """Store every item in arrival order (capacity None); the memory's storage grows by doubling."""

    name = "infinite"
    unbounded = True

    def place(
        self,
        *,
        seen: int,
        size: int,
        n: int,
        labels: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        return torch.arange(size, size + n), torch.arange(n)


@POLICIES.register("sliding-window")
class SlidingWindowPolicy(MemoryPolicy):
    """Keep the most recent ``capacity`` rows: stream item ``t`` goes to slot ``t % capacity``.

    A FIFO ring without randomness; a batch longer than the capacity keeps only its last rows.
    """

    name = "sliding-window"

    def place(
        self,
        *,
        seen: int,
        size: int,
        n: int,
        labels: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        capacity = self.capacity
        assert capacity is not None
        if size != min(seen, capacity):
            raise ConfigError(
                f"memory policy 'sliding-window' needs every offered row stored until the memory "
                f"is full, but it holds {size} of {seen} seen rows; do not switch policies"
            )
        rows = torch.arange(max(0, n - capacity), n)
        return (rows + seen) % capacity, rows


def _int_labels(labels: Tensor | None, policy: str) -> list[int]:
    if labels is None or labels.ndim != 1 or labels.dtype.is_floating_point or labels.is_complex():
        what = None if labels is None else f"{labels.dtype} {tuple(labels.shape)}"
        raise DataError(
            f"memory policy {policy!r} needs one integer class label per row, got {what}; "
            "use 'reservoir' for unlabelled or regression data"
        )
    return labels.tolist()


@POLICIES.register("class-balanced")
class ClassBalancedPolicy(MemoryPolicy):
    """GDumb's greedy class balancing (Prabhu et al. 2020, "GDumb", Algorithm 1).

    While the memory has free slots every row is stored. Once full, a row whose class is not among
    the largest classes evicts a uniformly random row of a uniformly random largest class;
    otherwise it is skipped. Classes with enough rows in the stream end up with counts that differ
    by at most one. Each row costs O(1): the policy keeps, per class, the list of its slots
    (random eviction swaps with the last) and, per count, the sorted list of classes with that
    count, so the largest classes are known without a scan (and none is listed twice, unlike
    Renate's GreedyClassBalancingBuffer). Two random draws per row past the fill phase, in stream
    order, so adding a batch at once or row by row gives the same memory.
    """

    name = "class-balanced"
    needs_labels = True

    def __init__(self, capacity: int | None) -> None:
        super().__init__(capacity)
        self._slots: dict[int, list[int]] = {}  # class -> its slots, in a reproducible order
        self._by_count: dict[int, list[int]] = {}  # count >= 1 -> sorted classes with that count
        self._largest = 0

    def counts(self) -> dict[int, int]:
        """Stored rows per class."""
        return {c: len(s) for c, s in self._slots.items() if s}

    def place(
        self,
        *,
        seen: int,
        size: int,
        n: int,
        labels: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        capacity = self.capacity
        assert capacity is not None
        ids = _int_labels(labels, self.name)
        direct = max(0, min(n, capacity - size))
        placed = {size + row: row for row in range(direct)}
        for row in range(direct):
            self._add(ids[row], size + row)
        if direct < n:
            draws = torch.randint(0, _DRAW_HIGH, (n - direct, 2), generator=generator).tolist()
            for row, (pick_class, pick_slot) in zip(range(direct, n), draws, strict=True):
                label = ids[row]
                if len(self._slots.get(label, ())) >= self._largest:
                    continue  # its class is among the largest: skip the row
                largest = self._by_count[self._largest]
                victim = largest[pick_class % len(largest)]
                slot = self._remove(victim, pick_slot)
                self._add(label, slot)
                placed[slot] = row  # a later row of the batch may evict this one again
        if not placed:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        slots = sorted(placed)
        return torch.tensor(slots, dtype=torch.int64), torch.tensor(
            [placed[s] for s in slots], dtype=torch.int64
        )

    def _move(self, label: int, old: int, new: int) -> None:
        """Move ``label`` from the classes with count ``old`` to those with count ``new``."""
        if old:
            bucket = self._by_count[old]
            del bucket[bisect.bisect_left(bucket, label)]
            if not bucket:
                del self._by_count[old]
        if new:
            bisect.insort(self._by_count.setdefault(new, []), label)
        # O(1): counts move by one, so an emptied top bucket means the class moved one down.
        if new > self._largest or (old == self._largest and old not in self._by_count):
            self._largest = new

    def _add(self, label: int, slot: int) -> None:
        slots = self._slots.setdefault(label, [])
        slots.append(slot)
        self._move(label, len(slots) - 1, len(slots))

    def _remove(self, label: int, draw: int) -> int:
        slots = self._slots[label]
        position = draw % len(slots)
        slot = slots[position]
        slots[position] = slots[-1]
        slots.pop()
        self._move(label, len(slots) + 1, len(slots))
        return slot

    def state_dict(self) -> dict[str, Any]:
        classes = [c for c, s in self._slots.items() if s]
        return {
            "classes": torch.tensor(classes, dtype=torch.int64),
            "counts": torch.tensor([len(self._slots[c]) for c in classes], dtype=torch.int64),
            "slots": torch.tensor([s for c in classes for s in self._slots[c]], dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"classes", "counts", "slots"}:
            raise ValueError(
                f"class-balanced policy state needs classes, counts, slots; got {sorted(state)}"
            )
        classes, counts, slots = (state[k] for k in ("classes", "counts", "slots"))
        if not all(isinstance(t, Tensor) and t.ndim == 1 for t in (classes, counts, slots)):
            raise ValueError("class-balanced policy state must be three 1-d tensors")
        if (
            len(classes) != len(counts)
            or int(counts.sum()) != len(slots)
            or bool((counts < 1).any())
        ):
            raise ValueError("class-balanced policy state has inconsistent counts")
        flat = slots.tolist()
        assert self.capacity is not None
        if len(set(flat)) != len(flat) or any(not 0 <= s < self.capacity for s in flat):
            raise ValueError("class-balanced policy state has repeated or out-of-range slots")
        self._slots, self._by_count, self._largest = {}, {}, 0
        start = 0
        for label, count in zip(classes.tolist(), counts.tolist(), strict=True):
            if label in self._slots:
                raise ValueError(f"class-balanced policy state lists class {label} twice")
            self._slots[label] = flat[start : start + count]
            self._move(label, 0, count)
            start += count


def balanced_quota(available: Mapping[int, int], capacity: int) -> dict[int, int]:
    """Rows to keep per class: as equal as possible, at most ``available[c]``, summing to
    ``min(capacity, total)``. Classes with few rows give their share to the others
    (water-filling); the leftover ones go to the smallest class ids."""
    quota = {c: 0 for c in available}
    left = min(capacity, sum(available.values()))
    open_classes = sorted(c for c, a in available.items() if a > 0)
    while left and open_classes:
        share = left // len(open_classes)
        if share == 0:  # fewer rows left than classes: one each, smallest class ids first
            for c in open_classes[:left]:
                quota[c] += 1
            break
        still = []
        for c in open_classes:
            take = min(share, available[c] - quota[c])
            quota[c] += take
            left -= take
            if quota[c] < available[c]:
                still.append(c)
        open_classes = still
    return quota


@POLICIES.register("herding")
class HerdingPolicy(MemoryPolicy):
    """iCaRL's herding selection (Rebuffi et al. 2017), run offline at the end of each update.

    Herding needs features of the current model, so it cannot decide per incoming row. During an
    update the memory only fills free slots (it never evicts, so the exemplars chosen before
    survive); at the end, ``TensorMemory.reselect`` pools the exemplars of earlier updates with
    the chunk's rows, splits the capacity equally among the classes (``balanced_quota``) and keeps
    each class's first rows in herding order (``herding_order``), i.e. the rows whose running mean
    best tracks the class's mean feature. Rows stored during the update are copies of the chunk,
    so they leave the pool (the chunk is offered whole instead). Deterministic: no randomness.
    """

    name = "herding"
    needs_labels = True
    offline = True

    def __init__(self, capacity: int | None) -> None:
        super().__init__(capacity)
        self._selected = 0  # rows [0, selected) were chosen by the last re-selection

    def place(
        self,
        *,
        seen: int,
        size: int,
        n: int,
        labels: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        assert self.capacity is not None
        direct = max(0, min(n, self.capacity - size))
        return torch.arange(size, size + direct), torch.arange(direct)

    def pool_size(self, size: int) -> int:
        return min(self._selected, size)

    def select(self, features: Tensor, labels: Tensor | None) -> Tensor:
        from ricordo.memory.herding import herding_order

        assert self.capacity is not None
        ids = torch.tensor(_int_labels(labels, self.name), dtype=torch.int64)
        classes, counts = torch.unique(ids, return_counts=True)
        available = dict(zip(classes.tolist(), counts.tolist(), strict=True))
        quota = balanced_quota(available, self.capacity)
        keep = []
        for label in classes.tolist():
            rows = (ids == label).nonzero().flatten()
            keep.append(rows[herding_order(features[rows], quota[label])])
        return torch.cat(keep) if keep else torch.empty(0, dtype=torch.int64)

    def reselected(self, size: int) -> None:
        self._selected = size

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self._selected}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        selected = state.get("selected")
        if set(state) != {"selected"} or not isinstance(selected, int) or selected < 0:
            raise ValueError(f"herding policy state needs an integer 'selected', got {state!r}")
        self._selected = selected


@POLICIES.register("gradient-matching")
class GradientMatchingPolicy(HerdingPolicy):
    """Gradient-matching coresets (Balles, Zappella, Archambeau 2021; methods.md 4), offline.

    Fills free slots during an update and re-selects at the end of it exactly like ``herding``
    (same pool: earlier selections plus the chunk), but embeds each pool row by its per-example
    gradients at ``initialisations`` fresh random initialisations of the model's architecture
    (``ricordo.memory.gradient_matching``) and herds on those without normalisation, so the
    memory's mean gradient tracks the pool's (per class when ``balanced``). Options
    (``--memory-option K=V``): see ``GradientMatchingOptions``. Randomness: the pool sub-sample
    draws on the memory's generator; the initialisations on the lineage's seed.
    """

    name = "gradient-matching"
    needs_labels = True
    offline = True
    embeds_labels = True

    def __init__(self, capacity: int | None) -> None:
        from ricordo.memory.gradient_matching import GradientMatchingOptions

        super().__init__(capacity)
        self.options = GradientMatchingOptions()

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        from ricordo.memory.gradient_matching import GradientMatchingOptions

        GradientMatchingOptions.parse(options)

    def configure(self, options: Mapping[str, Any]) -> None:
        from ricordo.memory.gradient_matching import GradientMatchingOptions

        self.options = GradientMatchingOptions.parse(options)

    def subsample(self, labels: Tensor | None, generator: torch.Generator) -> Tensor | None:
        limit = self.options.pool
        ids = torch.tensor(_int_labels(labels, self.name), dtype=torch.int64)
        if not limit or len(ids) <= limit:
            return None
        if not self.options.balanced:
            return torch.randperm(len(ids), generator=generator)[:limit].sort().values
        classes, counts = torch.unique(ids, return_counts=True)
        quota = balanced_quota(dict(zip(classes.tolist(), counts.tolist(), strict=True)), limit)
        keep = []
        for label in classes.tolist():
            rows = (ids == label).nonzero().flatten()
            keep.append(rows[torch.randperm(len(rows), generator=generator)[: quota[label]]])
        return torch.cat(keep).sort().values

    def embedding(
        self, model: Any, *, seed: int, device: torch.device
    ) -> Callable[[Tensor, Tensor], Tensor]:
        from ricordo.memory.gradient_matching import InitialisationEmbedding

        return InitialisationEmbedding(model, self.options, seed, device)

    def select(self, features: Tensor, labels: Tensor | None) -> Tensor:
        from ricordo.memory.herding import herding_order

        assert self.capacity is not None
        ids = torch.tensor(_int_labels(labels, self.name), dtype=torch.int64)
        if not self.options.balanced:
            return herding_order(features, self.capacity, normalize=False)
        classes, counts = torch.unique(ids, return_counts=True)
        quota = balanced_quota(
            dict(zip(classes.tolist(), counts.tolist(), strict=True)), self.capacity
        )
        keep = []
        for label in classes.tolist():
            rows = (ids == label).nonzero().flatten()
            keep.append(rows[herding_order(features[rows], quota[label], normalize=False)])
        return torch.cat(keep) if keep else torch.empty(0, dtype=torch.int64)
