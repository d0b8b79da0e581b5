"""Selection policies: which incoming rows a rehearsal memory keeps, and in which slots.

A policy only decides placement; the memory owns the tensors. Each policy is one class registered in
``POLICIES``, so class-balanced, sliding-window or herding selection can be added as one class each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ricordo.errors import ConfigError
from ricordo.registry import Registry

__all__ = ["POLICIES", "InfinitePolicy", "MemoryPolicy", "ReservoirPolicy", "keep_last_per_slot"]

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
