"""A deterministic stratified train/test split of labelled rows (no sklearn needed)."""

from __future__ import annotations

import torch

from ricordo.errors import DataError


def stratified_split(
    y: torch.Tensor, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, test): each class sends ``round(n * test_fraction)`` rows to test.

    The same labels and seed always give the same split; both index tensors are sorted.
    """
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction} is invalid; expected a value in [0, 1)")
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_test = int(round(len(rows) * test_fraction))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    empty = torch.empty(0, dtype=torch.int64)
    return (
        torch.sort(torch.cat(train)).values if train else empty,
        torch.sort(torch.cat(test)).values if test else empty,
    )
