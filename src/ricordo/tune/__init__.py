"""Hyperparameter tuning of update jobs on Ray Tune (the ``hpo`` extra): schedulers (random/grid,
ASHA, PASHA), the search space, the CL-correct objective and ``ricordo tune``.

``ricordo.tune.tune(data, space=..., state=..., next_state=...)`` is the Python equivalent of
``ricordo tune``; importing this package does not import Ray.
"""

from ricordo.tune.objective import METRIC, ValidationSplit, score, split_for_tuning
from ricordo.tune.runner import TrialRecord, TuneResult, tune, warm_start_points
from ricordo.tune.space import SEARCHABLE, SearchSpace, load_space

__all__ = [
    "METRIC",
    "SEARCHABLE",
    "SearchSpace",
    "TrialRecord",
    "TuneResult",
    "ValidationSplit",
    "load_space",
    "score",
    "split_for_tuning",
    "tune",
    "warm_start_points",
]
