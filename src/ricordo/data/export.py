"""Write a scenario's chunks to plain ``.npz`` files so update jobs can consume them one by one."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.data.scenarios import Scenario
from ricordo.errors import DataError

_CHUNK_FILE = re.compile(r"^(train|test)-(\d+)\.npz$")


def _write_npz(data: ArrayDataset, path: Path) -> Path:
    """Save x (float32), y (int64) and the group if any, without pickles; write a temp file
    first, then rename."""
    arrays = {
        "x": data.x.detach().cpu().to(torch.float32).numpy(),
        "y": data.y.detach().cpu().to(torch.int64).numpy(),
    }
    if data.group is not None:
        arrays["group"] = data.group.detach().cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def export_scenario(scenario: Scenario, out_dir: str | Path) -> list[Path]:
    """Write train-K.npz, test-K.npz, test-all.npz and scenario.json; return the written paths.

    Chunk files of an earlier, longer export in ``out_dir`` are removed so the directory always
    describes exactly one scenario.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output directory {str(out)!r} is a file; pass a directory path")
    out.mkdir(parents=True, exist_ok=True)
    try:
        meta_json = json.dumps(
            {
                "name": scenario.name,
                "updates": len(scenario),
                "chunk_classes": scenario.chunk_classes,
                "task_incremental": scenario.task_incremental,
                "info": scenario.info,
                "feature_shape": list(scenario.train[0].feature_shape),
                "chunks": [
                    {
                        "index": k,
                        "classes": scenario.chunk_classes[k],
                        "train_file": f"train-{k}.npz",
                        "test_file": f"test-{k}.npz",
                        "train_size": len(scenario.train[k]),
                        "test_size": len(scenario.test[k]),
                    }
                    for k in range(len(scenario))
                ],
                "test_all_file": "test-all.npz",
                "test_all_size": sum(len(t) for t in scenario.test),
            },
            indent=2,
        )
    except TypeError as e:
        raise DataError(
            f"scenario {scenario.name!r} info is not JSON-serialisable ({e}); "
            "keep info to numbers, strings, lists and dicts"
        ) from None
    written: list[Path] = []
    for k in range(len(scenario)):
        written.append(_write_npz(scenario.train[k], out / f"train-{k}.npz"))
        written.append(_write_npz(scenario.test[k], out / f"test-{k}.npz"))
    written.append(_write_npz(scenario.test_all(), out / "test-all.npz"))
    for stale in out.iterdir():
        m = _CHUNK_FILE.match(stale.name)
        if m and int(m.group(2)) >= len(scenario):
            stale.unlink()
    meta = out / "scenario.json"
    tmp = out / ".scenario.json.tmp"
    tmp.write_text(meta_json + "\n", encoding="utf-8")
    os.replace(tmp, meta)
    written.append(meta)
    return written
