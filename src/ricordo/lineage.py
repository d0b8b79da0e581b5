"""History and lineage of states: what led to a state, and how two states differ.

``state_history(url)`` reads only a state's manifest and ``history.json`` (verified against the
manifest), never its weights. ``diff_states(a, b)`` compares two manifests and histories;
``compare_on_data(a, b, data)`` loads both models and scores them on the same labelled rows,
with the flip rates between them.
"""

from __future__ import annotations

import json
from typing import Any

from ricordo.errors import StateCorruptError
from ricordo.state import read_manifest, read_state_file, resolve_alias

HISTORY_FILE = "history.json"
# Config fields that describe how a job ran, not what was trained: left out of a diff.
_PER_JOB = {"progress", "logger", "threads", "data_workers", "backend", "accelerator", "devices"}


def state_history(url: str) -> list[dict[str, Any]]:
    """Every update record that led to the state at ``url`` (an alias is followed), oldest
    first: data fingerprint and size, method, options, training report, held-out accuracy and
    gate verdict, time."""
    url = resolve_alias(url)
    raw = read_state_file(url, HISTORY_FILE)
    try:
        history = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        history = None
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise StateCorruptError(
            f"state at {url} has valid checksums but {HISTORY_FILE} is not a list of update "
            "records; restore it from a backup or re-run the update that wrote it"
        )
    return history


def history_row(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of one update record that ``ricordo history`` shows as a table row."""
    data = record.get("data") or {}
    config = record.get("config") or {}
    train = record.get("train") or {}
    gate = record.get("gate")
    verdict = "-"
    if isinstance(gate, dict):
        verdict = "passed" if gate.get("passed") else "refused"
        if gate.get("regression") is not None:
            verdict += f" (drop {gate['regression']:+.3f}, nfr {gate['negative_flip_rate']:.3f})"
    holdout = record.get("holdout") or {}
    return {
        "update": record.get("update"),
        "finished": record.get("finished"),
        "method": config.get("method"),
        "params": config.get("params") or {},
        "lr": config.get("lr"),
        "epochs": config.get("epochs"),
        "samples": data.get("samples"),
        "held_out": data.get("held_out", 0),
        "classes": data.get("classes"),
        "fingerprint": data.get("fingerprint"),
        "final_loss": train.get("final_loss"),
        "seconds": train.get("seconds"),
        "holdout_accuracy": holdout.get("accuracy"),
        "gate": verdict,
    }


def _relation(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """How the update histories of two states relate (shared updates are equal records)."""

    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        return (
            record.get("update"),
            (record.get("data") or {}).get("fingerprint"),
            record.get("finished"),
        )

    common = 0
    while common < min(len(a), len(b)) and key(a[common]) == key(b[common]):
        common += 1
    if common == len(a) == len(b):
        return "same update history"
    if common == len(a):
        return f"B descends from A (+{len(b) - common} update(s))"
    if common == len(b):
        return f"A descends from B (+{len(a) - common} update(s))"
    if common == 0:
        return "unrelated lineages (no update in common)"
    return f"diverged after update {common - 1} (A +{len(a) - common}, B +{len(b) - common})"


def _changes(a: dict[str, Any], b: dict[str, Any], skip: set[str] = frozenset()) -> dict:
    keys = sorted((set(a) | set(b)) - skip)
    return {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)}


def diff_states(a: str, b: str) -> dict[str, Any]:
    """What differs between the states at ``a`` and ``b`` (aliases followed): method, its
    parameters, options, model, classes, held-out rows, files, and how their histories relate.
    Each change is ``[value in A, value in B]``."""
    ua, ub = resolve_alias(a), resolve_alias(b)
    ma, mb = read_manifest(ua), read_manifest(ub)
    meta_a, meta_b = ma["meta"], mb["meta"]
    classes_a, classes_b = set(meta_a.get("seen_classes", [])), set(meta_b.get("seen_classes", []))
    files_a, files_b = ma["files"], mb["files"]
    return {
        "a": ua,
        "b": ub,
        "relation": _relation(state_history(ua), state_history(ub)),
        "updates": [meta_a.get("updates"), meta_b.get("updates")],
        "method": _changes({"method": meta_a.get("method")}, {"method": meta_b.get("method")}),
        "params": _changes(meta_a.get("params") or {}, meta_b.get("params") or {}),
        "config": _changes(
            meta_a.get("config") or {}, meta_b.get("config") or {}, _PER_JOB | {"params"}
        ),
        "model": _changes(meta_a.get("model_spec") or {}, meta_b.get("model_spec") or {}),
        "classes": {
            "only_a": sorted(classes_a - classes_b),
            "only_b": sorted(classes_b - classes_a),
        },
        "holdout_rows": [
            (meta_a.get("holdout") or {}).get("rows", 0),
            (meta_b.get("holdout") or {}).get("rows", 0),
        ],
        "files": _file_changes(files_a, files_b),
    }


def _file_changes(a: dict[str, dict], b: dict[str, dict]) -> dict[str, str]:
    """Files whose bytes differ (by sha256): "differ", "only in A" or "only in B"."""
    changes = {}
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            changes[rel] = "only in A"
        elif rel not in a:
            changes[rel] = "only in B"
        elif a[rel]["sha256"] != b[rel]["sha256"]:
            changes[rel] = "differ"
    return changes


def compare_on_data(
    a: str, b: str, data: Any, y: Any = None, *, target: str | None = None, **load: Any
) -> dict[str, Any]:
    """Accuracy of the states at ``a`` and ``b`` on the same labelled ``data`` (``target``:
    the label column of a CSV/Parquet file) and the flip rates from A to B (negative: A right,
    B wrong; positive: A wrong, B right). ``load`` goes to ``Updater.load`` (model code,
    backbone)."""
    from ricordo.data import load_data
    from ricordo.gate.check import compare_predictions
    from ricordo.updater import Updater

    predictions = []
    for url in (a, b):
        updater = Updater.load(url, **load)
        # Each model reads the rows its own way (table columns by name, its own tokenizer).
        rows = load_data(
            data, y, target=target, columns=updater.feature_names, tokenize=updater.tokenizer
        )
        rows = rows.validate(name="the --data rows")
        predictions.append(updater.predict(rows.x))
    flips = compare_predictions(predictions[0], predictions[1], rows.y)
    return {
        "samples": flips.samples,
        "accuracy": [flips.old_accuracy, flips.new_accuracy],
        "negative_flip_rate": flips.negative_flip_rate,
        "positive_flip_rate": flips.positive_flip_rate,
    }
