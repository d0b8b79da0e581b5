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

_CHUNK_FILE = re.compile(r"^(?:(?:train|test)-\d+|test-all)\.npz$")
_META = "scenario.json"


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


def check_export_target(out_dir: str | Path, *, overwrite: bool = False) -> list[str]:
    """Check that an export may write into ``out_dir``; return the files of an earlier export
    there that it may replace (empty for a new or empty folder).

    A folder that holds anything is refused unless ``overwrite``; even then, only an earlier
    export's own files (those its ``scenario.json`` lists, the file itself, and their temporary
    siblings) may be replaced: anything else in the folder is the user's, so the export refuses
    and names it instead of mixing chunks with it or deleting it.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output directory {str(out)!r} is a file; pass a directory path")
    if not out.exists():
        return []
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return []
    if not overwrite:
        raise DataError(
            f"output directory {str(out)!r} is not empty (it holds {entries[0]!r}"
            f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}); pick an empty "
            "folder, or pass --overwrite (overwrite=True in Python) to replace an earlier export"
        )
    listed = _listed_files(out)
    if listed is None:
        raise DataError(
            f"output directory {str(out)!r} holds {entries[0]!r} and no scenario.json of an "
            "earlier export, so none of it can be replaced; pick an empty folder"
        )
    ours = {*listed, _META}
    ours |= {f".{name}.tmp" for name in ours}
    for name in entries:
        path = out / name
        if name not in ours or path.is_symlink() or not path.is_file():
            raise DataError(
                f"output directory {str(out)!r} holds {name!r}, which no earlier export wrote; "
                "move it away or pick another folder (--overwrite replaces only the files "
                "listed in scenario.json)"
            )
    return listed


def _listed_files(out: Path) -> list[str] | None:
    """The chunk files an earlier export's scenario.json lists (None: no readable one).

    Only names an export can write count, so an edited scenario.json cannot make an export
    replace other files.
    """
    try:
        meta = json.loads((out / _META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    names: list[object] = []
    if isinstance(meta.get("files"), list):
        names += meta["files"]
    for chunk in meta.get("chunks") or []:  # exports written before "files" existed
        if isinstance(chunk, dict):
            names += [chunk.get("train_file"), chunk.get("test_file")]
    names.append(meta.get("test_all_file"))
    return sorted({n for n in names if isinstance(n, str) and _CHUNK_FILE.match(n)})


def export_scenario(
    scenario: Scenario, out_dir: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Write train-K.npz, test-K.npz, test-all.npz and scenario.json; return the written paths.

    ``out_dir`` must be new or empty; ``overwrite=True`` replaces an earlier export there (see
    :func:`check_export_target`) and removes its chunk files this export does not write, so the
    folder always describes exactly one scenario. Nothing else in the folder is touched.
    """
    out = Path(out_dir)
    previous = check_export_target(out, overwrite=overwrite)
    names = [f"{split}-{k}.npz" for k in range(len(scenario)) for split in ("train", "test")]
    names.append("test-all.npz")
    try:
        meta = {
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
            # Every file this export wrote: a later --overwrite replaces these and nothing else.
            "files": names,
        }
        json.dumps(meta)
    except TypeError as e:
        raise DataError(
            f"scenario {scenario.name!r} info is not JSON-serialisable ({e}); "
            "keep info to numbers, strings, lists and dicts"
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    if previous:
        # Until the final scenario.json, list the old files and the new ones, so an export that
        # stops half-way leaves a folder whose every file a later --overwrite still recognises.
        _write_meta(out, {**meta, "files": sorted({*previous, *names})})
    written: list[Path] = []
    for k in range(len(scenario)):
        written.append(_write_npz(scenario.train[k], out / f"train-{k}.npz"))
        written.append(_write_npz(scenario.test[k], out / f"test-{k}.npz"))
    written.append(_write_npz(scenario.test_all(), out / "test-all.npz"))
    for stale in sorted(set(previous) - set(names)):
        (out / stale).unlink(missing_ok=True)
    written.append(_write_meta(out, meta))
    return written


def _write_meta(out: Path, meta: dict[str, object]) -> Path:
    path = out / _META
    tmp = out / f".{_META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
