"""Read pre-split chunks from a folder (the layout ``ricordo data`` writes) as a Scenario.

The folder holds ``train-0.npz .. train-{T-1}.npz`` and ``test-0.npz .. test-{T-1}.npz`` (arrays
``x`` and ``y``, optionally ``group``); ``scenario.json`` is optional: when present its name,
``chunk_classes``, ``task_incremental`` and ``info`` are used, otherwise chunk k's classes are the
classes present in ``train-k.npz``. Users benchmark on their own data this way.

With ``validation`` (``ricordo benchmark --validation F``) the ``test-K.npz`` files are neither
needed nor opened: each chunk's evaluation rows are held out from ``train-K.npz`` instead (see
``ricordo.bench.validation``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ricordo.data.dataset import ArrayDataset
from ricordo.data.loaders import Tokenize, load_data
from ricordo.data.scenarios import Scenario
from ricordo.errors import DataError

_CHUNK = re.compile(r"^(train|test)-(\d+)\.npz$")


def load_chunks(
    directory: str | Path,
    *,
    validation: float | None = None,
    seed: int = 0,
    tokenize: Tokenize | None = None,
) -> Scenario:
    """The Scenario stored in ``directory`` (see the module docstring for the layout).

    ``validation``: evaluate on that fraction of each training chunk, held out with ``seed``,
    instead of the test chunks, which are then not read at all. ``tokenize``: the backbone's
    tokenizer, for text chunks (a string array ``text`` in place of ``x``).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(
            f"--chunks {str(root)!r} is not a folder; pass the folder `ricordo data` wrote "
            "(train-0.npz, test-0.npz, ...)"
        )
    found: dict[str, set[int]] = {"train": set(), "test": set()}
    for path in root.iterdir():
        match = _CHUNK.match(path.name)
        if match:
            found[match.group(1)].add(int(match.group(2)))
    if 0 not in found["train"]:
        raise DataError(
            f"--chunks {str(root)!r} has no train-0.npz; it needs train-K.npz and test-K.npz for "
            "K = 0, 1, ... (as written by `ricordo data DATASET --out DIR`)"
        )
    count = _contiguous(found["train"], root, "train")
    if validation is None:
        test_count = _contiguous(found["test"], root, "test") if found["test"] else 0
        if test_count != count:
            raise DataError(
                f"--chunks {str(root)!r} has {count} train chunks but {test_count} test chunks; "
                "every train-K.npz needs a test-K.npz"
            )
    train = [_load(root / f"train-{k}.npz", tokenize) for k in range(count)]
    meta = _read_meta(root)
    chunk_classes = meta.get("chunk_classes")
    if chunk_classes is None:
        chunk_classes = [chunk.classes() for chunk in train]
    elif len(chunk_classes) != count:
        raise DataError(
            f"{root / 'scenario.json'} lists classes for {len(chunk_classes)} chunks but the "
            f"folder has {count}; re-export the chunks or fix chunk_classes"
        )
    info = dict(meta.get("info") or {})
    info["chunks"] = str(root.resolve())
    chunk_classes = [[int(c) for c in classes] for classes in chunk_classes]
    if validation is None:
        test = [_load(root / f"test-{k}.npz", tokenize) for k in range(count)]
    else:
        from ricordo.bench.validation import evaluation_info, split_chunks

        train, test = split_chunks(train, chunk_classes, validation, seed)
        info["validation"] = evaluation_info(validation, seed, train)
    return Scenario(
        name=str(meta.get("name") or "chunks"),
        train=train,
        test=test,
        chunk_classes=chunk_classes,
        info=info,
        task_incremental=bool(meta.get("task_incremental", False)),
    )


def _contiguous(indices: set[int], root: Path, kind: str) -> int:
    count = max(indices) + 1
    missing = sorted(set(range(count)) - indices)
    if missing:
        raise DataError(
            f"--chunks {str(root)!r} lacks {', '.join(f'{kind}-{k}.npz' for k in missing)}; "
            f"chunk files must be numbered 0..{count - 1} without gaps"
        )
    return count


def _load(path: Path, tokenize: Tokenize | None = None) -> ArrayDataset:
    return load_data(path, name=str(path), tokenize=tokenize).validate(name=str(path))


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / "scenario.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); fix or delete it") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} must hold a JSON object; fix or delete it")
    return meta
