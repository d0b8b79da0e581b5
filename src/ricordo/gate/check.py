"""The regression gate: compare the current model and a candidate on the same labelled rows.

A candidate is refused when its accuracy is lower than the current model's by more than
``max_regression`` (absolute, e.g. 0.02 = two points). The negative-flip rate is reported
either way: the share of all rows the current model got right and the candidate gets wrong
(Yan et al., "Positive-Congruent Training", CVPR 2022); a candidate may keep its accuracy and
still break many predictions users relied on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from ricordo.errors import ConfigError

# The default: a drop of two accuracy points on earlier data refuses the update (issue 13's
# example). Set it from the noise of your held-out set: the standard error of an accuracy
# difference on n rows is about sqrt(2 p (1 - p) / n), 0.02 for p = 0.9 and n = 450.
DEFAULT_MAX_REGRESSION = 0.02


@dataclass(frozen=True)
class Gate:
    """What ``Updater.update(..., gate=Gate(...))`` checks before it accepts an update.

    ``data`` (and ``y``): labelled rows to compare on (anything ``load_data`` reads: a file, an
    ``ArrayDataset``, arrays); None compares on the state's held-out rows of earlier updates
    (kept with ``holdout`` > 0).
    """

    max_regression: float = DEFAULT_MAX_REGRESSION
    data: Any = None
    y: Any = None

    def __post_init__(self) -> None:
        value = self.max_regression
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0 <= value <= 1
        ):
            raise ConfigError(
                f"--max-regression {value!r} is invalid; expected an accuracy drop in [0, 1], "
                "such as 0.02"
            )


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one candidate, as stored in its history record."""

    passed: bool
    compared_on: str  # "held-out rows of updates 0..k-1", "gate data", or why nothing was
    samples: int
    old_accuracy: float | None
    new_accuracy: float | None
    regression: float | None  # old_accuracy - new_accuracy (negative: the candidate is better)
    max_regression: float
    negative_flip_rate: float | None
    positive_flip_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: the verdict, the two accuracies, the drop against the limit and the
        negative-flip rate."""
        return f"gate {'passed' if self.passed else 'refused'}: {self.details()}"

    def details(self) -> str:
        """The summary without the verdict."""
        if self.old_accuracy is None or self.new_accuracy is None:
            return f"compared on {self.compared_on}"
        assert self.regression is not None and self.negative_flip_rate is not None
        return (
            f"accuracy on {self.compared_on} ({self.samples} rows) {self.old_accuracy:.4f} -> "
            f"{self.new_accuracy:.4f} (drop {self.regression:+.4f}, limit "
            f"{self.max_regression:g}), negative flips {self.negative_flip_rate:.4f}"
        )


@dataclass(frozen=True)
class Flips:
    """How two models' predictions on the same labelled rows compare."""

    samples: int
    old_accuracy: float
    new_accuracy: float
    negative_flip_rate: float  # old right, new wrong, over all rows
    positive_flip_rate: float  # old wrong, new right, over all rows


def compare_predictions(old: Tensor, new: Tensor, labels: Tensor) -> Flips:
    """Accuracies and flip rates of predicted class ids ``old`` and ``new`` against ``labels``."""
    if not (old.shape == new.shape == labels.shape) or labels.ndim != 1 or len(labels) == 0:
        raise ConfigError(
            f"cannot compare predictions of shapes {tuple(old.shape)} and {tuple(new.shape)} "
            f"with labels {tuple(labels.shape)}; pass one class id per row for at least one row"
        )
    old_right, new_right = old == labels, new == labels
    n = len(labels)
    return Flips(
        samples=n,
        old_accuracy=float(old_right.double().mean()),
        new_accuracy=float(new_right.double().mean()),
        negative_flip_rate=float((old_right & ~new_right).sum()) / n,
        positive_flip_rate=float((~old_right & new_right).sum()) / n,
    )


def judge(flips: Flips, max_regression: float, compared_on: str) -> GateResult:
    """Pass when the candidate's accuracy fell by at most ``max_regression``."""
    drop = flips.old_accuracy - flips.new_accuracy
    # A tolerance of a few ulps: equal accuracies computed in another order still pass.
    passed = drop <= max_regression + 1e-12
    return GateResult(
        passed=passed,
        compared_on=compared_on,
        samples=flips.samples,
        old_accuracy=flips.old_accuracy,
        new_accuracy=flips.new_accuracy,
        regression=drop,
        max_regression=float(max_regression),
        negative_flip_rate=flips.negative_flip_rate,
        positive_flip_rate=flips.positive_flip_rate,
    )


def nothing_to_compare(max_regression: float, why: str) -> GateResult:
    """The verdict when there is no current model to regress from (a lineage's first update)."""
    return GateResult(
        passed=True,
        compared_on=why,
        samples=0,
        old_accuracy=None,
        new_accuracy=None,
        regression=None,
        max_regression=float(max_regression),
        negative_flip_rate=None,
        positive_flip_rate=None,
    )
