"""The regression gate and the held-out rows it compares on (issue 13).

``Updater.update(chunk, gate=Gate(max_regression=0.02))`` compares the current model and the
candidate on the state's held-out rows of earlier updates (or on ``Gate.data``) and raises
``UpdateRejectedError`` (the candidate attached, the Updater left as before) when accuracy
drops by more than ``max_regression``; the verdict, with the negative-flip rate, goes into the
update's history record either way.
"""

from __future__ import annotations

from ricordo.gate.check import (
    DEFAULT_MAX_REGRESSION,
    Flips,
    Gate,
    GateResult,
    compare_predictions,
    judge,
)
from ricordo.gate.holdout import HOLDOUT_FILE, HeldOut, holdout_counts, split_holdout

__all__ = [
    "DEFAULT_MAX_REGRESSION",
    "HOLDOUT_FILE",
    "Flips",
    "Gate",
    "GateResult",
    "HeldOut",
    "compare_predictions",
    "holdout_counts",
    "judge",
    "split_holdout",
]
