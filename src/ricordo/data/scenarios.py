"""Scenarios cut one (train, test) dataset into a sequence of chunks, one per model update.

A scenario is one registered function ``(train, test, updates, seed, *, data_name) -> Scenario``;
adding task-incremental, permuted, rotated or i.i.d. streams later is one more function each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError, DataError
from ricordo.registry import Registry


@dataclass(frozen=True)
class Scenario:
    """Chunk k is ``train[k]`` (learned at update k) and ``test[k]`` (evaluated after every update).

    ``chunk_classes[k]`` lists the classes chunk k introduces; ``info`` is JSON-able provenance
    (scenario parameters, class order, seed) so a run can be described and repeated.
    """

    name: str
    train: list[ArrayDataset]
    test: list[ArrayDataset]
    chunk_classes: list[list[int]]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError(f"scenario {self.name!r} has no chunks; it needs at least one")
        if not len(self.train) == len(self.test) == len(self.chunk_classes):
            raise DataError(
                f"scenario {self.name!r} has {len(self.train)} train chunks, {len(self.test)} "
                f"test chunks and {len(self.chunk_classes)} class lists; they must match"
            )

    def __len__(self) -> int:
        return len(self.train)

    @property
    def updates(self) -> int:
        """Number of chunks, i.e. model updates the scenario drives."""
        return len(self.train)

    def test_all(self) -> ArrayDataset:
        """All test chunks in one dataset, for a single overall accuracy."""
        return ArrayDataset.concat(self.test)


class ScenarioFn(Protocol):
    """The signature every registered scenario implements."""

    def __call__(
        self,
        train: ArrayDataset,
        test: ArrayDataset,
        updates: int,
        seed: int,
        *,
        data_name: str = ...,
    ) -> Scenario: ...


SCENARIOS: Registry[ScenarioFn] = Registry("scenario")


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_args(updates: int, seed: int) -> None:
    """Reject parameters every scenario shares before any work is done."""
    if not _is_int(updates) or updates < 1:
        raise ConfigError(f"updates must be an integer >= 1, got {updates!r}")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def _take_classes(data: ArrayDataset, classes: list[int]) -> ArrayDataset:
    """Samples of ``data`` whose label is in ``classes``, in their original order."""
    keep = torch.isin(data.y, torch.as_tensor(classes, dtype=data.y.dtype, device=data.y.device))
    return data.subset(torch.nonzero(keep, as_tuple=True)[0])


@SCENARIOS.register("class-incremental")
def class_incremental(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
) -> Scenario:
    """Each update brings new classes: a seeded class order split into ``updates`` even groups."""
    _check_args(updates, seed)
    classes = train.classes()
    if updates > len(classes):
        raise ConfigError(
            f"class-incremental with {updates} updates needs at least {updates} classes; "
            f"{data_name} has {len(classes)}"
        )
    unknown = sorted(set(test.classes()) - set(classes))
    if unknown:
        raise DataError(
            f"the test set of {data_name} has classes {unknown} that its training set lacks; "
            "drop those test samples or add training samples for them"
        )
    order = [int(c) for c in np.random.default_rng(seed).permutation(np.array(classes))]
    groups = [[int(c) for c in g] for g in np.array_split(np.array(order), updates)]
    return Scenario(
        name="class-incremental",
        train=[_take_classes(train, g) for g in groups],
        test=[_take_classes(test, g) for g in groups],
        chunk_classes=groups,
        info={
            "scenario": "class-incremental",
            "updates": int(updates),
            "seed": int(seed),
            "class_order": order,
        },
    )


def make_scenario(
    name: str,
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
) -> Scenario:
    """Build the registered scenario ``name``; unknown names list the known ones."""
    return SCENARIOS.get(name)(train, test, updates=updates, seed=seed, data_name=data_name)
