"""The outcome of a two-sample covariate-shift test, shared by every detector."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ShiftResult:
    """One shift test of ``data`` against ``reference``.

    ``score`` is the detector's effect size, not ``1 - p`` as in Renate (whose scores saturate at
    1 for large samples): the unbiased MMD^2 estimate for ``mmd``, the largest per-feature KS
    statistic for ``ks``. ``p_value`` is the test's p-value; ``shifted`` is ``p_value <= alpha``.
    ``n_reference`` / ``n_data``: the rows the test used (after any subsampling). ``details``:
    detector-specific values (bandwidth, permutations, most shifted features, ...), JSON-able.
    """

    detector: str
    score: float
    p_value: float
    shifted: bool
    alpha: float
    n_reference: int
    n_data: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able values (``ricordo shift --json`` prints this)."""
        return asdict(self)

    def summary(self) -> str:
        """One line: verdict, score, p-value against alpha, and the sample sizes."""
        verdict = "shift detected" if self.shifted else "no shift detected"
        relation = "<=" if self.shifted else ">"
        return (
            f"{verdict}: {self.detector} score {self.score:.6g}, p-value {self.p_value:.4g} "
            f"{relation} alpha {self.alpha:g} ({self.n_reference} reference / {self.n_data} new "
            "samples)"
        )
