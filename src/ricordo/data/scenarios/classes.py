"""Class-based scenarios: each update brings a new group of classes (class-, task-IL, blurry)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.data.scenarios.base import (
    SCENARIOS,
    Scenario,
    check_args,
    check_fraction,
    check_test_classes,
    info,
    is_int,
    rng,
    take_classes,
    too_many_updates,
)
from ricordo.errors import ConfigError


def _class_groups(
    name: str,
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    class_order: list[int] | None,
    data_name: str,
) -> tuple[list[int], list[list[int]]]:
    """The class order (seeded, or given) and its split into ``updates`` even groups."""
    check_args(updates, seed)
    classes = check_test_classes(train, test, data_name)
    too_many_updates(name, updates, len(classes), "classes", data_name)
    if class_order is None:
        order = [int(c) for c in np.random.default_rng(seed).permutation(np.array(classes))]
    else:
        ok = isinstance(class_order, Sequence) and not isinstance(class_order, str)
        ok = ok and all(is_int(c) for c in class_order)
        order = [int(c) for c in class_order] if ok else []
        if sorted(order) != classes:
            raise ConfigError(
                f"option class_order must list each class of {data_name} once "
                f"({classes}), got {class_order!r}"
            )
    groups = [[int(c) for c in g] for g in np.array_split(np.array(order), updates)]
    return order, groups


@SCENARIOS.register("class-incremental")
def class_incremental(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    class_order: list[int] | None = None,
) -> Scenario:
    """Each update brings new classes: a seeded class order split into ``updates`` even groups.

    The split-MNIST/CIFAR protocol (van de Ven & Tolias 2019, "Three scenarios for continual
    learning"; Renate's ``ClassIncrementalScenario``). ``class_order`` fixes the order instead of
    drawing it from ``seed``; test chunk k holds the test samples of chunk k's classes.
    """
    order, groups = _class_groups(
        "class-incremental", train, test, updates, seed, class_order, data_name
    )
    return Scenario(
        name="class-incremental",
        train=[take_classes(train, g) for g in groups],
        test=[take_classes(test, g) for g in groups],
        chunk_classes=groups,
        info=info(
            "class-incremental", updates, seed, {"class_order": class_order}, class_order=order
        ),
    )


@SCENARIOS.register("task-incremental")
def task_incremental(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    class_order: list[int] | None = None,
) -> Scenario:
    """The class-incremental split with the task id (chunk index) known at test time.

    van de Ven & Tolias 2019 "Task-IL": evaluation of test chunk j may mask the logits to
    ``chunk_classes[j]`` (``task_mask``), as multi-head setups do.
    """
    order, groups = _class_groups(
        "task-incremental", train, test, updates, seed, class_order, data_name
    )
    return Scenario(
        name="task-incremental",
        train=[take_classes(train, g) for g in groups],
        test=[take_classes(test, g) for g in groups],
        chunk_classes=groups,
        info=info(
            "task-incremental",
            updates,
            seed,
            {"class_order": class_order},
            class_order=order,
            task_incremental=True,
        ),
        task_incremental=True,
    )


@SCENARIOS.register("blurry")
def blurry(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    blurry: float = 0.1,
    class_order: list[int] | None = None,
) -> Scenario:
    """Class-incremental with overlapping class boundaries (Blurry-M, M = 100 * ``blurry``).

    Bang et al. 2021 "Rainbow Memory" (CVPR) and Koh et al. 2022 "i-Blurry" (ICLR, its blurry
    part): after the class-incremental split, a seeded random fraction ``blurry`` of each train
    chunk is moved, spread evenly, to the other chunks, so about that fraction of every chunk
    belongs to other chunks' classes. Test chunks are those of class-incremental.
    """
    frac = check_fraction("blurry", blurry, upper_open=True)
    order, groups = _class_groups("blurry", train, test, updates, seed, class_order, data_name)
    owner = torch.full((len(train),), -1, dtype=torch.long)
    for k, g in enumerate(groups):
        owner[torch.isin(train.y, torch.as_tensor(g, dtype=train.y.dtype))] = k
    gen = rng(seed, 1)
    dest = owner.clone()
    moved = [[0] * updates for _ in range(updates)]  # moved[k][j]: samples chunk k gave chunk j
    for k in range(updates if updates > 1 else 0):
        mine = torch.nonzero(owner == k, as_tuple=True)[0].numpy()
        n_move = int(round(frac * len(mine)))
        picked = gen.permutation(mine)[:n_move]
        others = [j for j in range(updates) if j != k]
        shift = int(gen.integers(len(others)))  # so remainders do not always land on one chunk
        others = others[shift:] + others[:shift]
        for j, part in zip(others, np.array_split(picked, len(others)), strict=True):
            dest[torch.from_numpy(part).long()] = j
            moved[k][j] = len(part)
    chunks = [train.subset(torch.nonzero(dest == k, as_tuple=True)[0]) for k in range(updates)]
    options: dict[str, Any] = {"blurry": frac, "class_order": class_order}
    return Scenario(
        name="blurry",
        train=chunks,
        test=[take_classes(test, g) for g in groups],
        chunk_classes=groups,
        info=info("blurry", updates, seed, options, class_order=order, moved=moved),
    )
