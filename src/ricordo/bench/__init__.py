"""Benchmarks: run scenarios end to end and store their results."""

from ricordo.bench.runner import run_benchmark

__all__ = ["run_benchmark"]
