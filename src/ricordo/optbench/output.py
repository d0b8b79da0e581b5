"""Where optbench writes: one JSON per run in DeepOBS's folder layout, a summary, and the marker
that says Ricordo created the folder.

Layout (DeepOBS's, without its timestamps, so a rerun replaces its own files)::

    DIR/.ricordo-optbench
    DIR/<problem>/<optimizer>/num_epochs__E__batch_size__B__lr__X/random_seed__S.json
    DIR/summary.json, DIR/table.tex, DIR/learning-curves.png, DIR/lr-sensitivity.png

optbench writes into a folder only if it is new, empty or holds the marker; it never deletes
anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ricordo.errors import ConfigError
from ricordo.optbench.protocol import OptbenchResult
from ricordo.optbench.training import RunRecord

MARKER = ".ricordo-optbench"


def prepare_output(directory: str | Path) -> Path:
    """Create ``directory`` (and its marker) or accept one optbench made; refuse a non-empty
    folder without the marker, and a file, in one line (nothing is written then)."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; name a folder for the benchmark results")
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise ConfigError(
            f"--output {out} is a non-empty folder that ricordo optbench did not create; "
            "name a new or empty folder (nothing in it is replaced or deleted)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("Results of `ricordo optbench`; it may write into this folder.\n")
    return out


def _number(value: float) -> str:
    return f"{value:.6g}"


def run_path(root: Path, record: RunRecord) -> Path:
    """The run's JSON file under ``root`` (DeepOBS's layout)."""
    setting = (
        f"num_epochs__{record.num_epochs}__batch_size__{record.batch_size}"
        f"__lr__{_number(record.lr)}"
    )
    return root / record.problem / record.optimizer / setting / f"random_seed__{record.seed}.json"


def _write(path: Path, data: Any) -> Path:
    from ricordo.bench.runner import write_json

    return write_json(path, data)


def write_run(root: Path, record: RunRecord) -> Path:
    """Write one run's JSON (DeepOBS's keys; see ``RunRecord.to_dict``)."""
    return _write(run_path(root, record), record.to_dict())


def summary_dict(result: OptbenchResult, command: str | None = None) -> dict[str, Any]:
    """The benchmark's measures as plain data (``summary.json``)."""
    import platform

    import torch

    from ricordo import __version__

    settings = []
    for s in result.settings:
        settings.append(
            {
                "problem": s.problem,
                "optimizer": s.optimizer,
                "metric": s.metric,
                "best_lr": s.best_lr,
                "seeds": [r.seed for r in s.runs],
                "final_performance": asdict(s.performance),
                "speed": asdict(s.speed) if s.speed is not None else None,
                "tuneability": asdict(s.tuneability),
                "diverged_grid_lrs": [r.lr for r in s.grid if r.diverged_at_epoch is not None],
                "epochs": s.runs[0].num_epochs,
                "steps_per_epoch": s.runs[0].steps_per_epoch,
            }
        )
    return {
        "budget": result.budget,
        "command": command,
        "thresholds": result.thresholds,
        "settings": settings,
        "versions": {
            "ricordo": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def write_summary(root: Path, result: OptbenchResult, command: str | None = None) -> Path:
    """Write ``summary.json``."""
    return _write(root / "summary.json", summary_dict(result, command))


def read_run(path: str | Path) -> RunRecord:
    """A run's JSON back as a record (plain JSON: nothing in it runs)."""
    return RunRecord.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
