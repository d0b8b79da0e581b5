"""Validation splits of the training chunks: tune hyperparameters without touching a test set.

A value chosen by its test accuracy is fitted to the test set, and its test accuracy is then an
optimistic estimate. ``ricordo benchmark --validation F`` (experiment key ``validation: F``)
holds out, in every training chunk, the fraction F of the rows of each of the chunk's classes
(``chunk_classes[k]``, stratified by class, drawn from the scenario seed and the chunk index),
trains on the rest and evaluates on the held-out rows in place of the test sets. The accuracy
matrix, the metrics, the summary and the report are computed as usual, from those rows; the
test sets are never evaluated (a chunk folder's ``test-K.npz`` files are not even opened).

Rows of classes outside ``chunk_classes[k]`` (the few rows of other class groups in a
``blurry`` chunk) all stay in training: a test chunk holds only its own classes, and its
validation stand-in does the same. F is at most 0.5, so every class keeps at least one training
row in every chunk (each class sends ``round(n * F)`` of its ``n`` rows).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ricordo.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where a split is made: checking a fraction needs none
    from ricordo.data.dataset import ArrayDataset
    from ricordo.data.scenarios import Scenario

MAX_FRACTION = 0.5
# Mixed into every split seed, so a split never reuses the random stream of the training run
# that has the same seed (the updater seeds its per-update generators from seed and index too).
_STREAM = 0x76_61_6C  # "val"


def check_fraction(value: Any) -> float:
    """``value`` as a fraction in (0, MAX_FRACTION]; anything else fails in one line."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 < value <= MAX_FRACTION:
        raise ConfigError(
            f"validation={value!r} (CLI: --validation) must be a fraction in "
            f"(0, {MAX_FRACTION}]: the share of each training chunk held out for evaluation, "
            "e.g. 0.2"
        )
    return float(value)


def split_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``'s split in a scenario with seed ``seed`` (63-bit)."""
    import numpy as np

    state = np.random.SeedSequence([int(seed), int(chunk), _STREAM]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def split_chunk(
    chunk: ArrayDataset, classes: Sequence[int], fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """(rows to train on, held-out rows) of one chunk: ``fraction`` of each class in
    ``classes`` is held out (all classes of the chunk when ``classes`` names none of them)."""
    import torch

    from ricordo.data.split import stratified_split

    eligible = torch.isin(chunk.y, torch.as_tensor(list(classes), dtype=chunk.y.dtype))
    if not bool(eligible.any()):
        eligible = torch.ones_like(chunk.y, dtype=torch.bool)
    rows = torch.nonzero(eligible, as_tuple=True)[0]
    _, held = stratified_split(chunk.y[rows], fraction, seed)
    held_out = torch.zeros(len(chunk), dtype=torch.bool)
    held_out[rows[held]] = True
    train = torch.nonzero(~held_out, as_tuple=True)[0]
    return chunk.subset(train), chunk.subset(torch.nonzero(held_out, as_tuple=True)[0])


def split_chunks(
    train: Sequence[ArrayDataset],
    chunk_classes: Sequence[Sequence[int]],
    fraction: float,
    seed: int,
) -> tuple[list[ArrayDataset], list[ArrayDataset]]:
    """Every chunk split by :func:`split_chunk`; a chunk left without held-out rows fails."""
    fraction = check_fraction(fraction)
    kept: list[ArrayDataset] = []
    held: list[ArrayDataset] = []
    for k, (chunk, classes) in enumerate(zip(train, chunk_classes, strict=True)):
        fit, evaluate = split_chunk(chunk, classes, fraction, split_seed(seed, k))
        if len(evaluate) == 0:
            raise DataError(
                f"validation={fraction} holds out no row of training chunk {k} ({len(chunk)} "
                "rows, too few per class); raise --validation or use fewer, larger chunks"
            )
        kept.append(fit)
        held.append(evaluate)
    return kept, held


def evaluation_info(fraction: float, seed: int, train: Sequence[ArrayDataset]) -> dict[str, Any]:
    """What ``Scenario.info["validation"]`` records: the split and the rows trained on."""
    return {
        "fraction": float(fraction),
        "seed": int(seed),
        "train_sizes": [len(chunk) for chunk in train],
        "note": "evaluated on rows held out from each training chunk; no test set was used",
    }


def validation_scenario(scenario: Scenario, fraction: float, seed: int) -> Scenario:
    """``scenario`` with each training chunk split: train on the rest, evaluate on the held-out
    rows (they replace ``scenario.test``, which is dropped unread)."""
    train, held = split_chunks(scenario.train, scenario.chunk_classes, fraction, seed)
    info = {**scenario.info, "validation": evaluation_info(fraction, seed, train)}
    return dataclasses.replace(scenario, train=train, test=held, info=info)
