"""Covariate-shift detection: has new data moved away from the data a model knows?

Two-sample tests on features of the current model, a pretrained encoder or the raw inputs:
MMD with an RBF kernel and a permutation test (:func:`mmd_test`), or per-feature
Kolmogorov-Smirnov tests with a Bonferroni correction (:func:`ks_test`); :func:`detect_shift`
does it all from a state and two chunks (CLI: ``ricordo shift``).
"""

from ricordo.shift.detect import DETECTORS, MAX_SAMPLES, detect_shift
from ricordo.shift.features import FEATURE_SOURCES, shift_features
from ricordo.shift.ks import ks_test
from ricordo.shift.mmd import median_bandwidth, mmd_statistics, mmd_test
from ricordo.shift.result import ShiftResult

__all__ = [
    "DETECTORS",
    "FEATURE_SOURCES",
    "MAX_SAMPLES",
    "ShiftResult",
    "detect_shift",
    "ks_test",
    "median_bandwidth",
    "mmd_statistics",
    "mmd_test",
    "shift_features",
]
