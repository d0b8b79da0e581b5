"""Benchmarks: run scenarios end to end, sweep methods x seeds, and store their results."""

from ricordo.bench.chunks import load_chunks
from ricordo.bench.experiment import (
    Experiment,
    ScenarioSpec,
    load_experiment,
    save_experiment,
)
from ricordo.bench.runner import run_benchmark
from ricordo.bench.sweep import run_experiment, run_sweep

__all__ = [
    "Experiment",
    "ScenarioSpec",
    "load_chunks",
    "load_experiment",
    "run_benchmark",
    "run_experiment",
    "run_sweep",
    "save_experiment",
]
