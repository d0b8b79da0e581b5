"""The in-memory dataset every layer passes around: a float feature tensor and integer labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ricordo.errors import DataError


@dataclass(frozen=True)
class ArrayDataset:
    """Features ``x`` (float32, first dim = samples) and class ids ``y`` (int64, shape (N,)).

    ``group`` (optional, shape (N,)) is a per-sample grouping value such as a year or a domain
    id; grouped scenarios cut chunks along it. ``feature_names`` (optional) names the columns of
    2-D features read from a table, so a state trained on a table can select a later table's
    columns by name instead of by position. Everything in Ricordo is tensor-batched: no
    per-sample Python objects on the hot path.
    """

    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.feature_names is not None:
            names = tuple(str(n) for n in self.feature_names)
            object.__setattr__(self, "feature_names", names)
            if self.x.ndim != 2 or self.x.shape[1] != len(names):
                raise DataError(
                    f"feature_names has {len(names)} names but x has shape "
                    f"{tuple(self.x.shape)}; pass one name per column of 2-D features"
                )
            if len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise DataError(f"feature_names repeats {', '.join(dupes)}; names must be unique")
        if self.x.ndim == 0 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"x has shape {tuple(self.x.shape)} and y {tuple(self.y.shape)}; "
                "they need the same number of rows and y must be 1-D"
            )
        if self.group is not None and (
            self.group.ndim != 1 or self.group.shape[0] != self.y.shape[0]
        ):
            raise DataError(
                f"group has shape {tuple(self.group.shape)} but y has {tuple(self.y.shape)}; "
                "pass one group value per sample as a 1-D tensor"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def classes(self) -> list[int]:
        """Sorted distinct class ids present in the data."""
        return [int(c) for c in torch.unique(self.y).tolist()]

    def subset(self, index: torch.Tensor) -> ArrayDataset:
        group = None if self.group is None else self.group[index]
        return ArrayDataset(self.x[index], self.y[index], group, self.feature_names)

    def select_features(self, names: Sequence[str], *, name: str = "data") -> ArrayDataset:
        """The same rows with the feature columns ``names``, in that order, chosen by name.

        Data without column names (arrays, ``.npz``) is returned as is: its columns are taken
        by position. Columns not in ``names`` are dropped; missing ones are refused.
        """
        if self.feature_names is None or tuple(names) == self.feature_names:
            return self
        position = {n: i for i, n in enumerate(self.feature_names)}
        missing = [n for n in names if n not in position]
        if missing:
            raise missing_features_error(name, missing)
        index = torch.tensor([position[n] for n in names], dtype=torch.int64)
        return ArrayDataset(self.x[:, index], self.y, self.group, tuple(names))

    def validate(self, *, name: str = "data") -> ArrayDataset:
        """Reject data an update cannot use, with a message that says what to fix."""
        if len(self) == 0:
            raise DataError(f"{name} is empty (0 samples); pass a chunk with at least one sample")
        if not torch.isfinite(self.x).all():
            bad = int((~torch.isfinite(self.x)).flatten(1).any(1).sum())
            raise DataError(
                f"{name} has NaN or infinite features in {bad} sample(s); "
                "clean or impute them before updating"
            )
        if int(self.y.min()) < 0:
            raise DataError(
                f"{name} has negative label {int(self.y.min())}; labels must be class ids 0..K-1"
            )
        return self

    @staticmethod
    def concat(parts: list[ArrayDataset]) -> ArrayDataset:
        """Rows of all parts in order; ``group`` is kept only when every part has one, and
        ``feature_names`` only when every part has the same."""
        groups = [p.group for p in parts]
        group = None
        if groups and all(g is not None for g in groups):
            group = torch.cat(groups)  # type: ignore[arg-type]
        names = {p.feature_names for p in parts}
        feature_names = names.pop() if len(names) == 1 else None
        return ArrayDataset(
            torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), group, feature_names
        )


def missing_features_error(label: str, missing: Sequence[str]) -> DataError:
    """The one-line error for a table that lacks feature columns a model was trained on."""
    shown = ", ".join(repr(n) for n in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return DataError(
        f"{label} lacks the feature column(s) {shown}{more} the model was trained on; add them "
        "(columns are matched by name; extra columns are ignored)"
    )
