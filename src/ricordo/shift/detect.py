"""``detect_shift``: read two chunks, turn them into features, run one two-sample test."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ricordo.errors import ConfigError
from ricordo.shift.features import BATCH_SIZE, check_source, load_updater, shift_features
from ricordo.shift.inputs import read_inputs
from ricordo.shift.ks import ks_test
from ricordo.shift.mmd import BANDWIDTH_SAMPLES, DEFAULT_PERMUTATIONS, mmd_test
from ricordo.shift.result import ShiftResult

if TYPE_CHECKING:
    from ricordo.updater import Updater

DETECTORS = ("mmd", "ks")
# Rows per side by default: the MMD test's cost grows with the square of the rows (10,000 per
# side: about 15 s with 512 features and 200 permutations on 2 CPU cores, benchmarks/README.md).
MAX_SAMPLES = 10_000


def detect_shift(
    state: Updater | str | os.PathLike[str] | None,
    reference: Any,
    data: Any,
    *,
    detector: str = "mmd",
    features: str = "model",
    alpha: float = 0.05,
    permutations: int = DEFAULT_PERMUTATIONS,
    max_samples: int | None = MAX_SAMPLES,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    target: str | None = None,
    dataset: str | None = None,
    dataset_options: dict[str, Any] | None = None,
    backbone: str | None = None,
    model: Any = None,
    accept_model_change: bool = False,
) -> ShiftResult:
    """Whether ``data`` has shifted away from ``reference``, seen through ``state``'s features.

    ``state``: an Updater or a state's path/URL (``backbone``, ``model``,
    ``accept_model_change`` as in :meth:`Updater.load`); None only with ``features="raw"``.
    ``reference``, ``data``: chunks in any form :func:`ricordo.shift.inputs.read_inputs` takes
    (files, arrays, datasets; folders with ``dataset``), labels ignored. ``detector``: ``"mmd"``
    (:func:`mmd_test`, with ``permutations``) or ``"ks"`` (:func:`ks_test`). ``features``: see
    :func:`shift_features`. ``max_samples``: rows per side, a seeded random subsample of larger
    chunks (None: all). ``shifted`` when the p-value is at most ``alpha``.
    """
    if detector not in DETECTORS:
        raise ConfigError(f"detector={detector!r} is not one of {', '.join(DETECTORS)}")
    check_source(features, has_state=state is not None)  # before reading anything
    updater = load_updater(
        state, backbone=backbone, model=model, accept_model_change=accept_model_change
    )
    # One stream for everything random: the two subsamples, then the permutations' own seed.
    generator = torch.Generator().manual_seed(int(seed))
    samples, totals = [], []
    for name, source in (("reference", reference), ("data", data)):
        inputs, total = read_inputs(
            source,
            updater=updater,
            name=name if not isinstance(source, (str, os.PathLike)) else os.fspath(source),
            target=target,
            dataset=dataset,
            dataset_options=dataset_options,
            max_samples=max_samples,
            generator=generator,
        )
        samples.append(shift_features(features, updater, inputs, batch_size=batch_size))
        totals.append(total)
    if detector == "mmd":
        result = mmd_test(
            samples[0],
            samples[1],
            permutations=permutations,
            alpha=alpha,
            seed=seed,
            bandwidth_samples=BANDWIDTH_SAMPLES,
        )
    else:
        result = ks_test(
            samples[0], samples[1], alpha=alpha, feature_names=_names(features, updater)
        )
    details = {
        **result.details,
        "feature_source": features,
        "reference_rows": totals[0],
        "data_rows": totals[1],
        "max_samples": max_samples,
    }
    return ShiftResult(**{**result.to_dict(), "details": details})


def _names(features: str, updater: Updater | None) -> Sequence[str] | None:
    """A table's column names for raw features (KS names its most shifted columns)."""
    if features != "raw" or updater is None:
        return None
    return updater.feature_names
