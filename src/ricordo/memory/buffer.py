"""Rehearsal memory held in one preallocated tensor per field, with O(batch) insertion.

Unlike buffers that keep one Python object or one file per item, every operation here is a handful
of tensor ops whose cost depends on the batch size, never on how many items are stored.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import torch
from torch import Tensor

from ricordo.errors import ConfigError, DataError
from ricordo.memory.policies import POLICIES, MemoryPolicy

__all__ = ["TensorMemory"]

# Below this many stored rows (or when sampling a large share of them) one randperm is cheaper
# than rejection sampling; above it, sampling costs O(n) instead of O(len).
_RANDPERM_MAX_ROWS = 1024
# Up to this many sampled rows, duplicate rejection runs on Python ints (see sample_indices).
_SAMPLE_LOOP_MAX = 256


class TensorMemory:
    """A rehearsal memory: per-field tensors (e.g. ``x``, ``y``, ``logits``) filled by a policy.

    The field set, each field's per-row shape and dtype are fixed by the first ``add``. All
    randomness (placement and sampling) comes from the memory's own generator seeded with ``seed``,
    whose state is saved with the memory, so a restored memory continues bit for bit.
    """

    def __init__(
        self,
        capacity: int | None,
        policy: str | MemoryPolicy = "reservoir",
        seed: int = 0,
        *,
        device: str | torch.device = "cpu",
        label_field: str = "y",
    ) -> None:
        if isinstance(policy, MemoryPolicy):
            if policy.capacity != capacity:
                raise ConfigError(
                    f"memory capacity {capacity!r} differs from its policy's capacity "
                    f"{policy.capacity!r}; pass the same value to both"
                )
            self._policy = policy
        else:
            self._policy = POLICIES.get(policy)(capacity)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"memory seed must be an integer, got {seed!r}")
        self.capacity = capacity
        self.policy_name = self._policy.name
        self.seed = seed
        self.label_field = label_field
        self.device = torch.device(device)
        # Placement and sampling draw on the CPU whatever the storage device: decisions are tiny,
        # and a CPU generator state is portable across machines and devices.
        self.generator = torch.Generator().manual_seed(seed)
        self._data: dict[str, Tensor] = {}  # field -> storage with >= size rows
        self._size = 0
        self._seen = 0

    # ---------------------------------------------------------------- properties

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (
            f"TensorMemory(capacity={self.capacity}, policy={self.policy_name!r}, "
            f"size={self._size}, seen={self._seen}, fields={list(self.fields)})"
        )

    @property
    def seen(self) -> int:
        """Number of items ever offered through ``add`` (stored or not)."""
        return self._seen

    @property
    def fields(self) -> tuple[str, ...]:
        """Field names in the order the first ``add`` gave them (empty before it)."""
        return tuple(self._data)

    @property
    def policy(self) -> MemoryPolicy:
        return self._policy

    def field_spec(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Per-row shape and dtype of a field."""
        storage = self._field(name)
        return tuple(storage.shape[1:]), storage.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the filled part of all fields."""
        return sum(t[: self._size].nbytes for t in self._data.values())

    # ---------------------------------------------------------------- insertion

    def add(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Offer a batch of rows; return each row's slot (int64, CPU), or -1 where not stored."""
        n = self._check_batch(batch)
        labels = None
        if self._policy.needs_labels:
            if self.label_field not in batch:
                raise DataError(
                    f"memory policy {self.policy_name!r} needs labels in field "
                    f"{self.label_field!r}, but the batch has fields {sorted(batch)}"
                )
            labels = batch[self.label_field].detach().cpu()
        if not self._data:
            self._allocate(batch, self._initial_rows(n))
        slots, rows = self._policy.place(
            seen=self._seen, size=self._size, n=n, labels=labels, generator=self.generator
        )
        result = torch.full((n,), -1, dtype=torch.int64)
        k = slots.numel()
        if k:
            new_size = self._new_size(slots)
            if new_size > self._rows_allocated():
                self._grow(new_size)
            self._write(batch, slots, rows, n)
            self._size = new_size
            result[rows] = slots
        self._seen += n
        return result

    def _write(self, batch: Mapping[str, Tensor], slots: Tensor, rows: Tensor, n: int) -> None:
        """Copy ``batch[rows]`` into ``slots`` of every field (detached, on the memory device)."""
        k = slots.numel()
        first = int(slots[0])
        # Fill phases place the whole batch in consecutive slots: one slice copy per field is
        # several times faster than a scatter (index_copy_ works element by element on CPU).
        if (
            k == n
            and int(slots[-1]) == first + k - 1
            and (k == 1 or bool((slots[1:] > slots[:-1]).all()))
            and (k == 1 or bool((rows[1:] > rows[:-1]).all()))
        ):
            with torch.no_grad():
                for name, storage in self._data.items():
                    storage[first : first + k].copy_(batch[name].detach())
            return
        dev_slots = slots.to(self.device)
        with torch.no_grad():
            for name, storage in self._data.items():
                value = batch[name].detach()
                picked = value.index_select(0, rows.to(value.device))
                storage.index_copy_(0, dev_slots, picked.to(self.device))

    def _check_batch(self, batch: Mapping[str, Tensor]) -> int:
        """Validate a batch against the fixed fields; return its number of rows."""
        if not isinstance(batch, Mapping) or not batch:
            raise DataError(
                "memory.add expects a non-empty mapping field name -> tensor, "
                f"got {type(batch).__name__}"
            )
        n: int | None = None
        for name, value in batch.items():
            if not isinstance(value, Tensor):
                raise DataError(f"memory field {name!r} must be a torch.Tensor, got {type(value)}")
            if value.ndim == 0:
                raise DataError(f"memory field {name!r} is a scalar; pass one row per item")
            if n is None:
                n = int(value.shape[0])
            elif value.shape[0] != n:
                raise DataError(
                    f"memory field {name!r} has {value.shape[0]} rows but others have {n}; "
                    "all fields of a batch need the same first dimension"
                )
        if self._data:
            if batch.keys() != self._data.keys():
                missing = sorted(set(self._data) - set(batch))
                extra = sorted(set(batch) - set(self._data))
                raise DataError(
                    f"memory batch fields differ from the stored ones {list(self._data)}: "
                    f"missing {missing}, unexpected {extra}"
                )
            for name, storage in self._data.items():
                value = batch[name]
                if value.shape[1:] != storage.shape[1:] or value.dtype != storage.dtype:
                    raise DataError(
                        f"memory field {name!r} has rows of shape {tuple(value.shape[1:])} and "
                        f"dtype {value.dtype}, but the memory stores {tuple(storage.shape[1:])} "
                        f"{storage.dtype}; convert the batch to match"
                    )
        assert n is not None
        return n

    def _initial_rows(self, n: int) -> int:
        # Bounded memories allocate their capacity once (torch.empty: the OS commits pages only
        # when written); unbounded ones start small and double.
        return self.capacity if self.capacity is not None else max(n, 16)

    def _allocate(self, template: Mapping[str, Tensor], rows: int) -> None:
        self._data = {
            name: torch.empty((rows, *value.shape[1:]), dtype=value.dtype, device=self.device)
            for name, value in template.items()
        }

    def _rows_allocated(self) -> int:
        return next(iter(self._data.values())).shape[0]

    def _new_size(self, slots: Tensor) -> int:
        """Size after writing ``slots``; checks the policy kept the filled part a prefix."""
        top = int(slots.max()) + 1
        if top <= self._size:
            return self._size
        fresh = int((slots >= self._size).sum())
        if fresh != top - self._size or (self.capacity is not None and top > self.capacity):
            raise RuntimeError(
                f"memory policy {self.policy_name!r} broke the placement contract: slots up to "
                f"{top - 1} with {self._size} stored and capacity {self.capacity}"
            )
        return top

    def _grow(self, rows: int) -> None:
        """Reallocate to at least ``rows`` rows, doubling so growth is amortised O(batch)."""
        new_rows = max(rows, 2 * self._rows_allocated())
        if self.capacity is not None:
            new_rows = min(new_rows, self.capacity)
        for name, storage in self._data.items():
            bigger = storage.new_empty((new_rows, *storage.shape[1:]))
            bigger[: self._size] = storage[: self._size]
            self._data[name] = bigger

    # ---------------------------------------------------------------- reading

    def sample_indices(self, n: int) -> Tensor:
        """``min(n, len)`` distinct stored slots, uniformly at random (int64, CPU)."""
        n = min(_count(n), self._size)
        size = self._size
        if n == 0:
            return torch.empty(0, dtype=torch.int64)
        if size <= _RANDPERM_MAX_ROWS or 4 * n >= size:
            return torch.randperm(size, generator=self.generator)[:n]
        # Sequential rejection sampling: draw, keep each value's first occurrence (in draw order)
        # that is not already taken, redraw the shortfall. This is exactly "draw uniformly,
        # reject repeats", i.e. a uniform ordered sample without replacement, at O(n log n)
        # cost; repeats are rare because n < size / 4. Small n runs in Python (tensor ops cost
        # microseconds each); both paths consume the generator identically and agree.
        chosen = torch.empty(0, dtype=torch.int64)
        while chosen.numel() < n:
            draws = torch.randint(0, size, (n - chosen.numel(),), generator=self.generator)
            if n <= _SAMPLE_LOOP_MAX:
                merged = dict.fromkeys(chosen.tolist() + draws.tolist())
                if len(merged) == n and not chosen.numel():
                    return draws  # common case: no repeat in the first round
                chosen = torch.tensor(list(merged), dtype=torch.int64)
            else:
                chosen = _first_occurrences(torch.cat([chosen, draws]))
        return chosen

    def sample(self, n: int) -> dict[str, Tensor]:
        """``min(n, len)`` rows drawn uniformly without replacement, one tensor per field."""
        return self.get(self.sample_indices(n))

    def get(self, index: Tensor | None = None) -> dict[str, Tensor]:
        """Rows at ``index`` (copies), or views of all stored rows when ``index`` is None."""
        size = self._size
        if index is None:
            return {name: storage[:size] for name, storage in self._data.items()}
        index = _as_index(index, self.device)
        # Indexing the filled view makes out-of-range slots fail instead of reading garbage.
        return {name: storage[:size].index_select(0, index) for name, storage in self._data.items()}

    # ---------------------------------------------------------------- editing

    def update_field(self, name: str, index: Tensor, values: Tensor) -> None:
        """Overwrite stored rows of one field, e.g. DER-style refreshed logits."""
        storage = self._field(name)
        index = _as_index(index, self.device).reshape(-1)
        expected = (index.numel(), *storage.shape[1:])
        if tuple(values.shape) != expected:
            raise DataError(
                f"memory field {name!r} update has shape {tuple(values.shape)}, expected {expected}"
            )
        with torch.no_grad():
            storage[: self._size].index_copy_(
                0, index, values.detach().to(self.device, storage.dtype)
            )

    def add_field(self, name: str, fill: Tensor) -> None:
        """Add a field to a memory that already has fields; stored rows get the row ``fill``."""
        if not self._data:
            raise DataError(
                f"cannot add memory field {name!r} before the first add fixes the fields"
            )
        if name in self._data:
            raise DataError(f"memory field {name!r} already exists; use update_field to change it")
        fill = fill.detach().to(self.device)
        storage = fill.new_empty((self._rows_allocated(), *fill.shape))
        storage[: self._size] = fill
        self._data[name] = storage

    def _field(self, name: str) -> Tensor:
        try:
            return self._data[name]
        except KeyError:
            raise DataError(
                f"memory has no field {name!r}; fields are {list(self._data)}"
            ) from None

    # ---------------------------------------------------------------- persistence

    def to_files(
        self, prefix: str = "memory/", *, max_shard_bytes: int | None = None
    ) -> dict[str, bytes]:
        """Serialise to ``{path: bytes}``: safetensors shards plus ``{prefix}index.json``."""
        from ricordo.memory import persist

        return persist.to_files(self, prefix, max_shard_bytes=max_shard_bytes)

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, bytes],
        prefix: str = "memory/",
        *,
        device: str | torch.device = "cpu",
    ) -> TensorMemory:
        """Exact inverse of ``to_files``; raises StateCorruptError naming what is wrong."""
        from ricordo.memory import persist

        return persist.from_files(cls, files, prefix, device=device)

    def _restore(
        self, data: dict[str, Tensor], size: int, seen: int, generator_state: Tensor
    ) -> None:
        """Install loaded storage and counters (used by ``persist.from_files``)."""
        self._data = data
        self._size = size
        self._seen = seen
        self.generator.set_state(generator_state)


def _count(n: object) -> int:
    """A non-negative sample size; numpy integers are fine, bools and floats are mistakes."""
    try:
        if isinstance(n, bool):
            raise TypeError
        value = operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        value = -1
    if value < 0:
        raise ConfigError(f"sample size must be an integer >= 0, got {n!r}")
    return value


def _as_index(index: Tensor, device: torch.device) -> Tensor:
    """Slot indices as int64 on ``device``; a bool or float tensor is a caller bug, not an index."""
    if not isinstance(index, Tensor) or index.dtype.is_floating_point or index.dtype == torch.bool:
        what = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise DataError(f"memory index must be an integer tensor of slots, got {what}")
    return index.to(device, torch.int64)


def _first_occurrences(values: Tensor) -> Tensor:
    """``values`` without repeats, keeping each value's first occurrence, in original order."""
    sorted_values, order = torch.sort(values, stable=True)
    first = torch.ones_like(sorted_values, dtype=torch.bool)
    first[1:] = sorted_values[1:] != sorted_values[:-1]
    keep = order[first].sort().values
    return values[keep]
