"""Run a whole scenario in one process: update on chunk k, evaluate on every chunk's test set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ricordo import __version__
from ricordo.config import UpdateConfig
from ricordo.data.scenarios import Scenario
from ricordo.metrics.continual import summarize
from ricordo.updater import Updater


def run_benchmark(
    scenario: Scenario, config: UpdateConfig, output: str | Path | None = None
) -> dict[str, Any]:
    """Train ``config`` through ``scenario``; return (and write ``output/results.json``) results.

    Row ``i`` of the accuracy matrix is measured after update ``i``; column ``j`` is chunk ``j``'s
    test set. Chunks not trained yet are measured too (forward transfer needs them).
    """
    started = time.perf_counter()
    updater = Updater(config)
    updater.initialize(scenario.train[0])
    eval_seconds = 0.0

    def evaluate_all() -> list[float]:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        row = [updater.evaluate(test)["accuracy"] for test in scenario.test]
        eval_seconds += time.perf_counter() - t0
        return row

    initial = evaluate_all()
    matrix: list[list[float]] = []
    train_seconds, steps = 0.0, 0
    for chunk in scenario.train:
        t0 = time.perf_counter()
        record = updater.update(chunk)
        train_seconds += time.perf_counter() - t0
        steps += int(record["train"]["steps"])
        matrix.append(evaluate_all())
    results: dict[str, Any] = {
        "library_version": __version__,
        "config": config.to_dict(),
        "scenario": {
            "name": scenario.name,
            "updates": len(scenario),
            "chunk_classes": scenario.chunk_classes,
            **scenario.info,
        },
        "accuracy_matrix": matrix,
        "initial_accuracy": initial,
        "metrics": summarize(matrix, initial),
        "timing": {
            "train_seconds": round(train_seconds, 4),
            "eval_seconds": round(eval_seconds, 4),
            "total_seconds": round(time.perf_counter() - started, 4),
            "train_steps": steps,
        },
    }
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
