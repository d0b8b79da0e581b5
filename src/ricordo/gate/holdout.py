"""Held-out evaluation rows kept in a state: a seeded share of every chunk, never trained on.

Each update sets aside ``holdout`` of its chunk (at most ``holdout_max`` rows), stratified by
class so that every class keeps at least one training row, and appends those rows to the
lineage's held-out set. The set is stored in the state as ``holdout.safetensors`` (tensors
``x``, ``y`` and ``update``: the update each row came from), like the rehearsal memory, and is
what the regression gate (``ricordo.gate.check``) compares an old and a new model on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from ricordo.data.dataset import ArrayDataset

HOLDOUT_FILE = "holdout.safetensors"


def holdout_counts(labels: Tensor, fraction: float, cap: int) -> dict[int, int]:
    """How many rows of each class to hold out: ``round(n_c * fraction)``, at most ``n_c - 1``
    (every class keeps a training row), scaled down to ``cap`` rows in all (largest remainders
    first, ties by class id) so that a huge chunk does not grow the state without bound."""
    classes, sizes = torch.unique(labels, return_counts=True)
    wanted = {
        int(c): min(int(round(int(n) * fraction)), int(n) - 1)
        for c, n in zip(classes.tolist(), sizes.tolist(), strict=True)
    }
    total = sum(wanted.values())
    if total <= cap:
        return wanted
    shares = {c: k * cap / total for c, k in wanted.items()}
    counts = {c: int(s) for c, s in shares.items()}
    left = cap - sum(counts.values())
    for c in sorted(shares, key=lambda c: (-(shares[c] - counts[c]), c))[:left]:
        counts[c] += 1
    return counts


def split_holdout(labels: Tensor, fraction: float, cap: int, seed: int) -> tuple[Tensor, Tensor]:
    """Row indices (train, held_out) of a chunk with these ``labels``; both sorted.

    The same labels, fraction, cap and seed always give the same split.
    """
    rows = torch.arange(len(labels))
    if fraction <= 0 or len(labels) < 2:
        return rows, torch.empty(0, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    held: list[Tensor] = []
    for c, k in sorted(holdout_counts(labels, fraction, cap).items()):
        of_class = torch.nonzero(labels == c).flatten()
        held.append(of_class[torch.randperm(len(of_class), generator=generator)[:k]])
    chosen = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[chosen] = False
    return rows[keep], chosen


@dataclass(frozen=True)
class HeldOut:
    """The lineage's held-out rows: features ``x`` (as the model reads them: float features or
    token ids), labels ``y`` and the ``update`` (0, 1, ...) each row was held out from."""

    x: Tensor
    y: Tensor
    update: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @classmethod
    def empty(cls) -> HeldOut:
        return cls(
            torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
        )

    def add(self, rows: ArrayDataset, update: int) -> HeldOut:
        """These held-out rows of update ``update`` appended (a new object; self is unchanged)."""
        if len(rows) == 0:
            return self
        tags = torch.full((len(rows),), int(update), dtype=torch.int64)
        if len(self) == 0:
            return HeldOut(rows.x.clone(), rows.y.clone(), tags)
        return HeldOut(
            torch.cat([self.x, rows.x.to(self.x.dtype)]),
            torch.cat([self.y, rows.y]),
            torch.cat([self.update, tags]),
        )

    def before(self, update: int) -> HeldOut:
        """The rows held out from updates earlier than ``update`` (what a gate compares on)."""
        keep = self.update < update
        return HeldOut(self.x[keep], self.y[keep], self.update[keep])

    def per_update(self) -> dict[int, int]:
        """Rows held out from each update."""
        values, counts = torch.unique(self.update, return_counts=True)
        return {int(u): int(n) for u, n in zip(values.tolist(), counts.tolist(), strict=True)}

    def to_bytes(self) -> bytes:
        """The safetensors file stored in the state."""
        tensors = {"x": self.x, "y": self.y, "update": self.update}
        return save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})

    @classmethod
    def from_bytes(cls, data: bytes, input_shape: tuple[int, ...]) -> HeldOut:
        """Read :meth:`to_bytes` output; ValueError (one line) when it is not such a file."""
        try:
            tensors = load_tensors(data)
        except Exception as error:  # SafetensorError, not exported everywhere
            raise ValueError(f"{HOLDOUT_FILE} is not a safetensors file ({error})") from None
        if set(tensors) != {"x", "y", "update"}:
            raise ValueError(f"{HOLDOUT_FILE} holds {sorted(tensors)}, not x, y and update")
        x, y, update = tensors["x"], tensors["y"], tensors["update"]
        n = int(y.shape[0]) if y.ndim == 1 else -1
        if (
            n < 0
            or y.dtype != torch.int64
            or update.dtype != torch.int64
            or tuple(update.shape) != (n,)
            or tuple(x.shape) != (n, *input_shape)
        ):
            raise ValueError(
                f"{HOLDOUT_FILE} has x {tuple(x.shape)}, y {tuple(y.shape)} {y.dtype} and "
                f"update {tuple(update.shape)} {update.dtype}; expected (N, {input_shape}) rows "
                "with int64 labels and update ids"
            )
        return cls(x, y, update)
