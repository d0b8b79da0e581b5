"""Rehearsal memory held in one preallocated tensor per field, with O(batch) insertion.

Unlike buffers that keep one Python object or one file per item, every operation here is a handful
of tensor ops whose cost depends on the batch size, never on how many items are stored. The field
tensors live in RAM or, with ``storage="mmap"``, in memory-mapped ``.npy`` files, so a memory may
be larger than RAM.
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
import os
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

from ricordo.errors import ConfigError, DataError
from ricordo.memory.policies import POLICIES, MemoryPolicy
from ricordo.memory.storage import MmapStorage, RamStorage, copy_rows, make_storage

__all__ = ["TensorMemory"]

# Below this many stored rows (or when sampling a large share of them) one randperm is cheaper
# than rejection sampling; above it, sampling costs O(n) instead of O(len).
_RANDPERM_MAX_ROWS = 1024
# Up to this many sampled rows, duplicate rejection runs on Python ints (see sample_indices).
_SAMPLE_LOOP_MAX = 256
# A bounded memory whose capacity needs more than this starts small and grows by doubling.
_PREALLOCATE_MAX_BYTES = 1 << 30


class TensorMemory:
    """A rehearsal memory: per-field tensors (e.g. ``x``, ``y``, ``logits``) filled by a policy.

    The field set, each field's per-row shape and dtype are fixed by the first ``add``. All
    randomness (placement and sampling) comes from the memory's own generator seeded with ``seed``,
    whose state is saved with the memory, so a restored memory continues bit for bit.

    ``storage="mmap"`` keeps every field in a memory-mapped ``.npy`` file in a private subfolder
    of ``directory`` (default: the system temp folder; avoid a RAM-backed tmpfs), removed when the
    memory is freed; such a memory saves its fields as ``.npy`` files.
    """

    def __init__(
        self,
        capacity: int | None,
        policy: str | MemoryPolicy = "reservoir",
        seed: int = 0,
        *,
        device: str | torch.device = "cpu",
        label_field: str = "y",
        storage: str = "ram",
        directory: str | os.PathLike[str] | None = None,
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
        if storage == "mmap" and self.device.type != "cpu":
            raise ConfigError(
                f"memory-mapped memories live on the CPU, got device {self.device}; "
                "use storage='ram' for a memory on an accelerator"
            )
        self._storage: RamStorage | MmapStorage = make_storage(storage, directory)
        # Placement and sampling draw on the CPU whatever the storage device: decisions are tiny,
        # and a CPU generator state is portable across machines and devices.
        self.generator = torch.Generator().manual_seed(seed)
        self._data: dict[str, Tensor] = {}  # field -> storage with >= size rows
        self._size = 0
        self._seen = 0
        self._exports: list[str] = []  # export files of the last to_files (memory-mapped only)
        self._closed = False  # inside closed(): add() stores and counts nothing

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

    @property
    def storage(self) -> str:
        """Where the fields live: "ram" or "mmap"."""
        return self._storage.kind

    @property
    def directory(self) -> str | None:
        """The working folder of a memory-mapped memory's ``.npy`` files (None in RAM)."""
        return self._storage.root

    def field_file(self, name: str) -> str | None:
        """The ``.npy`` file holding a field of a memory-mapped memory (None in RAM)."""
        return self._storage.file_of(self._field(name))

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
        if self._closed:
            return torch.full((n,), -1, dtype=torch.int64)
        labels = None
        if self._policy.needs_labels:
            if self.label_field not in batch:
                raise DataError(
                    f"memory policy {self.policy_name!r} needs labels in field "
                    f"{self.label_field!r}, but the batch has fields {sorted(batch)}"
                )
            labels = batch[self.label_field].detach().cpu()
        slots, rows = self._policy.place(
            seen=self._seen, size=self._size, n=n, labels=labels, generator=self.generator
        )
        if not self._data:  # after place: a batch the policy rejects does not fix the fields
            self._allocate(batch, self._initial_rows(n, batch))
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

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        """Inside the block ``add`` stores nothing and does not count the rows as seen (it
        returns -1 for each). The engine closes the memory after an update's first epoch with
        ``memory_insert="once"``, so each row is offered once and a reservoir stays a uniform
        sample of the distinct rows rather than favouring rows offered every epoch."""
        previous, self._closed = self._closed, True
        try:
            yield
        finally:
            self._closed = previous

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

    def _initial_rows(self, n: int, template: Mapping[str, Tensor]) -> int:
        # Bounded memories allocate their capacity once (torch.empty or a sparse file: pages are
        # committed only when written), except in RAM above _PREALLOCATE_MAX_BYTES, where
        # --memory-size 10**12 would fail to allocate before storing a row; those and unbounded
        # memories start small and double up to the capacity.
        row_bytes = sum(math.prod(v.shape[1:]) * v.element_size() for v in template.values())
        if self.capacity is not None and (
            self.storage == "mmap" or self.capacity * row_bytes <= _PREALLOCATE_MAX_BYTES
        ):
            return self.capacity
        rows = max(n, 16)
        return rows if self.capacity is None else min(rows, self.capacity)

    def _allocate(self, template: Mapping[str, Tensor], rows: int) -> None:
        self._data = {
            name: self._new_storage(rows, tuple(value.shape[1:]), value.dtype)
            for name, value in template.items()
        }

    def _new_storage(self, rows: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return self._storage.allocate((rows, *shape), dtype, self.device)

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
            bigger = self._new_storage(new_rows, tuple(storage.shape[1:]), storage.dtype)
            copy_rows(bigger, storage, self._size)
            self._data[name] = bigger
            self._storage.free(storage)

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

    def widen_field(self, name: str, width: int) -> None:
        """Make a field of 1-D rows (e.g. DER's stored logits) at least ``width`` columns wide;
        stored rows get zeros in the new columns. Lets a field grow with a model's output
        layer instead of being allocated at its largest possible width up front."""
        storage = self._field(name)
        if storage.ndim != 2:
            raise DataError(
                f"memory field {name!r} has rows of shape {tuple(storage.shape[1:])}; only "
                "fields of 1-D rows can be widened"
            )
        old = storage.shape[1]
        if width <= old:
            return
        wider = self._new_storage(storage.shape[0], (width,), storage.dtype)
        with torch.no_grad():
            wider[: self._size, old:] = 0
        copy_rows(wider[:, :old], storage, self._size)
        self._data[name] = wider
        self._storage.free(storage)

    def add_field(self, name: str, fill: Tensor) -> None:
        """Add a field to a memory that already has fields; stored rows get the row ``fill``."""
        if not self._data:
            raise DataError(
                f"cannot add memory field {name!r} before the first add fixes the fields"
            )
        if name in self._data:
            raise DataError(f"memory field {name!r} already exists; use update_field to change it")
        fill = fill.detach().to(self.device)
        storage = self._new_storage(self._rows_allocated(), tuple(fill.shape), fill.dtype)
        storage[: self._size] = fill
        self._data[name] = storage

    def reselect(
        self,
        embed: Callable[[Tensor], Tensor],
        candidates: Mapping[str, Tensor] | None = None,
        *,
        input_field: str = "x",
        batch_size: int = 1024,
    ) -> Tensor:
        """Offline selection (e.g. herding) at the end of an update; returns the kept pool rows.

        The pool is the stored rows the policy keeps in play (``policy.pool_size``: for herding,
        the exemplars of earlier updates) followed by ``candidates`` (e.g. the chunk's rows, with
        the memory's fields). ``embed`` maps a batch of ``input_field`` rows (and their labels,
        when ``policy.embeds_labels``) to features (N, d); only the rows of
        ``policy.subsample`` are embedded when it returns some. The policy picks at most
        ``capacity`` pool rows, which become the memory's contents, in the order picked. Rows
        are gathered in pieces into fresh storage, so a memory-mapped memory never holds the
        pool in RAM (only its features and labels).
        """
        if not self._policy.offline:
            raise ConfigError(
                f"memory policy {self.policy_name!r} selects rows as they arrive; reselect is "
                "for offline policies such as 'herding'"
            )
        extra = 0
        if candidates is not None:
            if self._data and candidates.keys() != self._data.keys():
                raise ConfigError(
                    f"memory policy {self.policy_name!r} re-selects from the stored rows and "
                    f"candidate rows with the same fields, but the memory stores "
                    f"{list(self._data)} and the candidates have {sorted(candidates)}; supply "
                    "every field (override Method.memory_candidates) or use policy 'reservoir'"
                )
            extra = self._check_batch(candidates)
        if not self._data and not extra:
            return torch.empty(0, dtype=torch.int64)
        template = self._data or candidates
        assert template is not None
        for name in (input_field, self.label_field):
            if name not in template:
                raise DataError(
                    f"memory policy {self.policy_name!r} needs fields {input_field!r} and "
                    f"{self.label_field!r}, but the memory has {list(template)}"
                )
        kept = self._policy.pool_size(self._size) if self._data else 0
        sources = [] if not kept else [{k: v[:kept] for k, v in self._data.items()}]
        if extra:
            assert candidates is not None
            sources.append(dict(candidates))
        labels = torch.cat([source[self.label_field].detach().cpu() for source in sources])
        # A policy may embed only a sub-sample of a large pool (its cost bound).
        chosen = self._policy.subsample(labels, self.generator)
        features = []
        offset = 0
        with torch.no_grad():
            for source in sources:
                inputs, targets = source[input_field], source[self.label_field]
                count = len(inputs)
                rows = None
                if chosen is not None:
                    rows = chosen[(chosen >= offset) & (chosen < offset + count)] - offset
                offset += count
                total = count if rows is None else len(rows)
                for start in range(0, total, batch_size):
                    part = (
                        slice(start, start + batch_size)
                        if rows is None
                        else rows[start : start + batch_size]
                    )
                    # Labelled embeddings (gradient-matching) need each row's class too.
                    out = (
                        embed(inputs[part], targets[part])
                        if self._policy.embeds_labels
                        else embed(inputs[part])
                    )
                    features.append(out.detach().float().cpu().reshape(len(out), -1))
        if chosen is not None:
            labels = labels[chosen]
        picks = self._policy.select(torch.cat(features), labels)
        if chosen is not None:
            picks = chosen[picks]
        pool = kept + extra
        limit = pool if self.capacity is None else min(pool, self.capacity)
        valid = picks.numel() <= limit and (
            picks.numel() == 0
            or (
                int(picks.min()) >= 0
                and int(picks.max()) < pool
                and picks.unique().numel() == picks.numel()
            )
        )
        if not valid:
            raise RuntimeError(
                f"memory policy {self.policy_name!r} picked invalid rows {picks.tolist()[:8]} "
                f"from a pool of {pool} with capacity {self.capacity}"
            )
        if not self._data:
            assert candidates is not None
            self._allocate(candidates, self._initial_rows(picks.numel(), candidates))
        rows = max(self._rows_allocated(), picks.numel())
        step = 4096
        for name, storage in list(self._data.items()):
            fresh = self._new_storage(rows, tuple(storage.shape[1:]), storage.dtype)
            with torch.no_grad():
                for start in range(0, picks.numel(), step):
                    index = picks[start : start + step]
                    old = index < kept
                    part = torch.empty(
                        (len(index), *storage.shape[1:]), dtype=storage.dtype, device=self.device
                    )
                    if bool(old.any()):
                        part[old] = storage.index_select(0, index[old].to(self.device))
                    if not bool(old.all()):
                        assert candidates is not None
                        value = candidates[name].detach()
                        new_rows = (index[~old] - kept).to(value.device)
                        part[~old] = value.index_select(0, new_rows).to(self.device)
                    fresh[start : start + len(index)] = part
            self._data[name] = fresh
            self._storage.free(storage)
        self._size = picks.numel()
        self._policy.reselected(self._size)
        return picks

    def empty_like(self) -> TensorMemory:
        """An empty memory with this one's configuration (capacity, policy, seed, device, label
        field, storage and its parent folder) and a copy of its generator state."""
        other = TensorMemory(
            self.capacity,
            self.policy_name,
            self.seed,
            device=self.device,
            label_field=self.label_field,
            storage=self.storage,
            directory=getattr(self._storage, "parent", None),
        )
        other.generator.set_state(self.generator.get_state())
        return other

    def without(self, index: Tensor) -> TensorMemory:
        """A copy holding every stored row except those at ``index``, in order (rows set aside
        from training: ``ricordo.tune`` validates on them). Reservoir memories only: the copy is
        a reservoir whose capacity is smaller by the rows removed, over the same stream (a
        uniform subsample of a reservoir sample is one), with this memory's generator state, so
        later rows enter it by the same rule."""
        if self.policy_name != "reservoir" or self.capacity is None:
            raise ConfigError(
                f"only a reservoir memory can set rows aside, not {self.policy_name!r}"
            )
        drop = torch.zeros(self._size, dtype=torch.bool)
        drop[_as_index(index, torch.device("cpu"))] = True
        removed = int(drop.sum())
        if removed >= self.capacity:
            raise ConfigError(
                f"cannot set aside {removed} rows of a memory of capacity {self.capacity}"
            )
        capacity = self.capacity - removed
        other = TensorMemory(
            capacity,
            self.policy_name,
            self.seed,
            device=self.device,
            label_field=self.label_field,
            storage=self.storage,
            directory=getattr(self._storage, "parent", None),
        )
        # While filling (seen < capacity) slot = seen, so seen shrinks with the rows removed.
        seen = self._seen - removed if self._seen < self.capacity else self._seen
        kept = self.get(torch.nonzero(~drop).reshape(-1))
        data: dict[str, Tensor] = {}
        if self._data:
            for name, rows in kept.items():
                storage = other._new_storage(capacity, tuple(rows.shape[1:]), rows.dtype)
                copy_rows(storage, rows, len(rows))
                data[name] = storage
        other._restore(data, self._size - removed, seen, self.generator.get_state())
        return other

    def __deepcopy__(self, memo: dict[int, object]) -> TensorMemory:
        """A deep copy with its own storage (memory-mapped files are copied into a new folder);
        only the filled rows are copied."""
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key not in ("_data", "_storage", "_exports"):
                setattr(new, key, copy.deepcopy(value, memo))
        new._storage = self._storage.sibling()
        new._exports = []
        new._data = {}
        for name, storage in self._data.items():
            clone = new._storage.allocate(tuple(storage.shape), storage.dtype, storage.device)
            copy_rows(clone, storage, self._size)
            new._data[name] = clone
        return new

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
    ) -> dict[str, bytes | os.PathLike[str]]:
        """Serialise to ``{path: bytes or local file}`` plus ``{prefix}index.json``.

        In RAM: safetensors shards (bytes). Memory-mapped: one ``.npy`` file per field, given as
        a local path (the working file itself when the memory is full, else an export copy of
        the filled rows); the paths stay valid until ``release_exports`` or the next call.
        """
        from ricordo.memory import persist

        return persist.to_files(self, prefix, max_shard_bytes=max_shard_bytes)

    def release_exports(self) -> None:
        """Delete the export files the last ``to_files`` of a memory-mapped memory made."""
        for path in self._exports:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self._exports = []

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, bytes | os.PathLike[str]],
        prefix: str = "memory/",
        *,
        device: str | torch.device = "cpu",
        storage: str = "ram",
        directory: str | os.PathLike[str] | None = None,
    ) -> TensorMemory:
        """Exact inverse of ``to_files`` (either layout, into either storage; files may be bytes
        or local paths, which are only read); raises StateCorruptError naming what is wrong."""
        from ricordo.memory import persist

        return persist.from_files(
            cls, files, prefix, device=device, storage=storage, directory=directory
        )

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
