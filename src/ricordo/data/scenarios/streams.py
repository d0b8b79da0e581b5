"""Data-incremental scenarios: the stream itself is cut, i.i.d. at random or by a group value."""

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
    check_bool,
    info,
    random_parts,
    rng,
    too_many_updates,
)
from ricordo.errors import ConfigError, DataError


@SCENARIOS.register("iid")
def iid(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    split_test: bool = True,
) -> Scenario:
    """New data of the same distribution: disjoint random equal parts of the train set.

    Renate's ``IIDScenario`` (data-incremental). With ``split_test`` (default) the test set is cut
    the same way, so the accuracy matrix has one column per chunk and ``test_all()`` is the whole
    test set once; ``split_test=False`` gives every chunk the full test set (as Renate does).
    """
    check_args(updates, seed)
    split = check_bool("split_test", split_test)
    too_many_updates("iid", updates, len(train), "samples", data_name)
    chunks = [train.subset(i) for i in random_parts(len(train), updates, rng(seed, 0))]
    if split:
        tests = [test.subset(i) for i in random_parts(len(test), updates, rng(seed, 1))]
    else:
        tests = [test] * updates
    return Scenario(
        name="iid",
        train=chunks,
        test=tests,
        chunk_classes=[c.classes() for c in chunks],
        info=info("iid", updates, seed, {"split_test": split}),
    )


def _values(group: torch.Tensor) -> list[Any]:
    """Sorted distinct group values as Python numbers."""
    return list(torch.unique(group).tolist())


def _by_groups(
    name: str,
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    groupings: Sequence[Sequence[Any]] | None,
    data_name: str,
) -> Scenario:
    check_args(updates, seed)
    for what, data in ((data_name, train), (f"the test set of {data_name}", test)):
        if data.group is None:
            raise DataError(
                f"{name} needs a group value per sample but {what} has none; load it with "
                "load_data(..., group_column='year') for CSV/Parquet, an array 'group' in the "
                ".npz, or ArrayDataset(x, y, group=...)"
            )
    assert train.group is not None and test.group is not None
    present = _values(train.group)
    if groupings is None:
        too_many_updates(name, updates, len(present), "distinct groups", data_name)
        bins = [list(b) for b in np.array_split(np.array(present, dtype=object), updates)]
        unknown = sorted(set(_values(test.group)) - set(present))
        if unknown:
            raise DataError(
                f"the test set of {data_name} has groups {unknown[:10]} that its training set "
                "lacks; drop those test samples or pass groupings= to choose groups"
            )
    else:
        ok = isinstance(groupings, Sequence) and not isinstance(groupings, str)
        ok = ok and all(
            isinstance(b, Sequence) and not isinstance(b, str) and len(b) > 0 for b in groupings
        )
        if not ok:
            raise ConfigError(
                f"option groupings must be a list of non-empty lists of group values, got "
                f"{groupings!r}"
            )
        bins = [list(b) for b in groupings]
        flat = [v for b in bins for v in b]
        if len(bins) != updates:
            raise ConfigError(
                f"option groupings has {len(bins)} groupings but there are {updates} updates; "
                "give one per update"
            )
        missing = [v for v in flat if v not in set(present)]
        if missing or len(set(flat)) != len(flat):
            raise ConfigError(
                f"option groupings must name each group at most once and only groups of "
                f"{data_name} ({present[:20]}); got {groupings!r}"
            )

    def take(data: ArrayDataset, values: list[Any]) -> ArrayDataset:
        assert data.group is not None
        keep = torch.isin(data.group, torch.tensor(values, dtype=data.group.dtype))
        return data.subset(torch.nonzero(keep, as_tuple=True)[0])

    chunks = [take(train, b) for b in bins]
    options = {"groupings": None if groupings is None else [list(b) for b in groupings]}
    return Scenario(
        name=name,
        train=chunks,
        test=[take(test, b) for b in bins],
        chunk_classes=[c.classes() for c in chunks],
        info=info(name, updates, seed, options, chunk_groups=bins),
    )


@SCENARIOS.register("grouped")
def grouped(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    groupings: list[list[Any]] | None = None,
) -> Scenario:
    """Chunks by a per-sample group value (domain, site, year); Renate's DataIncrementalScenario.

    The sorted distinct values of ``train.group`` are cut into ``updates`` contiguous bins with as
    equal a number of values as possible (one value per chunk when ``updates`` equals their
    number; more updates than values is an error); ``groupings`` (a list of value lists, one per
    update) chooses them instead and drops unlisted groups. Test chunks use the same values.
    The seed is not used: the grouping is the data's own.
    """
    return _by_groups("grouped", train, test, updates, seed, groupings, data_name)


@SCENARIOS.register("time-incremental")
def time_incremental(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    groupings: list[list[Any]] | None = None,
) -> Scenario:
    """``grouped`` with the group as a time stamp (year, month): chunks in time order.

    Wild-Time (Yao et al. 2022), CLEAR (Lin et al. 2021) and Renate's former
    ``TimeIncrementalScenario``. Integer or ISO-date-string time values sort chronologically.
    """
    return _by_groups("time-incremental", train, test, updates, seed, groupings, data_name)
