"""Hyperparameter tuning of update jobs on Ray Tune (the ``hpo`` extra): schedulers (random/grid,
ASHA, PASHA), the search space, the CL-correct objective and ``ricordo tune``."""
