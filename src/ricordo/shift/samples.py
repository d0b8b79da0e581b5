"""Checks shared by the two-sample tests: two finite 2-D samples of the same features."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ricordo.errors import ConfigError, DataError


def as_samples(reference: Any, data: Any, *, min_rows: int) -> tuple[Tensor, Tensor]:
    """``reference`` and ``data`` as floating tensors (N, D), each row flattened.

    Refused in one line: an empty or too small sample, different feature counts, NaN or
    infinite values. float64 inputs stay float64; everything else becomes float32.
    """
    ref = _matrix(reference, "reference")
    new = _matrix(data, "data")
    for name, x in (("reference", ref), ("data", new)):
        if x.shape[0] < min_rows:
            raise DataError(
                f"the {name} sample has {x.shape[0]} rows; the test needs at least {min_rows} "
                "per sample"
            )
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"the {name} sample contains NaN or infinite values; clean it first")
    if ref.shape[1] != new.shape[1]:
        raise DataError(
            f"the reference sample has {ref.shape[1]} features per row but the data sample has "
            f"{new.shape[1]}; compare samples of the same features"
        )
    dtype = torch.float64 if torch.float64 in (ref.dtype, new.dtype) else torch.float32
    return ref.to(dtype), new.to(dtype)


def _matrix(x: Any, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise DataError(
            f"the {name} sample is a {type(x).__name__}; pass a tensor or numpy array (N, D)"
        )
    if x.dim() == 0:
        raise DataError(f"the {name} sample is a scalar; pass rows of features (N, D)")
    if x.dim() == 1:
        x = x.unsqueeze(1)  # one feature per row
    x = x.flatten(1)
    return x if x.dtype == torch.float64 else x.float()


def check_alpha(alpha: float) -> float:
    """The significance level as a float in (0, 1), or a one-line ConfigError."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"alpha={alpha!r} must be a significance level in (0, 1), e.g. 0.05")
    return float(alpha)
