"""Run a whole scenario in one process: update on chunk k, evaluate on every chunk's test set.

The results (``results.json``) hold the class-incremental accuracy matrix and its metrics, the
task-incremental view of the same run when it is meaningful (``task_il``), the size of every test
chunk, and per-update cost: seconds of training and evaluation, steps, trainable parameters,
peak memory.

``evaluated_on`` says what the "test" chunks were: ``"test"``, or ``"validation"`` when the
scenario came from ``ricordo benchmark --validation F`` (rows held out from the training chunks;
then every accuracy and ``test_sizes`` are about those rows and no test set was used).

The output layer: a benchmark knows its scenario's classes, so by default (``head="fixed"``) the
model has one column per class from the start, as in Mammoth (``num_classes`` in the recorded
config); ``head="growing"`` keeps the open-ended growing head instead. After an update the argmax
is taken among the classes learnt so far, as Mammoth's evaluation does (``outputs[:,
:n_seen_classes]``): an untrained column never decides a prediction, whatever the head's width.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ricordo import __version__
from ricordo.config import UpdateConfig
from ricordo.data.scenarios import Scenario
from ricordo.errors import ConfigError
from ricordo.metrics.continual import summarize
from ricordo.updater import Updater


def run_benchmark(
    scenario: Scenario,
    config: UpdateConfig,
    output: str | Path | None = None,
    *,
    task_il: bool | None = None,
    head: str = "fixed",
) -> dict[str, Any]:
    """Train ``config`` through ``scenario``; return (and write ``output/results.json``) results.

    ``head``: ``"fixed"`` (default) sizes the output layer to the scenario's classes
    (``config.num_classes``, or :func:`scenario_num_classes` when it is unset); ``"growing"``
    grows it with the labels seen (``config.num_classes`` must then be unset). The results record
    which (``head``) and the config used (``config.num_classes``).

    Row ``i`` of the accuracy matrix is measured after update ``i``; column ``j`` is chunk ``j``'s
    test set. Chunks not trained yet are measured too (forward transfer needs them).

    ``task_il``: also measure the task-incremental matrix, where test chunk ``j`` is scored among
    ``chunk_classes[j]`` only (task id known; the other logits are set to -inf). ``None`` (auto)
    does so when the scenario is task-incremental or its chunks have disjoint class sets (then
    the same run gives both the class-IL and the task-IL numbers); it is ``None`` in the results
    otherwise. Both matrices come from one forward pass per test chunk.
    """
    _warm_up()
    started = time.perf_counter()
    if task_il is None:
        task_il = task_il_applies(scenario)
    config = head_config(config, head, scenario)
    updater = Updater(config)
    updater.initialize(scenario.train[0])
    uses_cuda = _uses_cuda(config)
    eval_seconds = 0.0

    task_id_matrix: list[list[float | None]] = []

    def evaluate_all() -> tuple[list[float], list[float]]:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        class_row, task_row = [], []
        id_row: list[float | None] = []
        # Before the first update: the untrained model over all its outputs (the baseline of
        # forward transfer); after it, the argmax among the classes learnt so far.
        learnt = updater.seen_classes if updater.updates else None
        for j, test in enumerate(scenario.test):
            logits, routed = updater.predict_routed(test.x)
            class_row.append(_accuracy(logits, test.y, learnt=learnt))
            if task_il:
                task_row.append(_accuracy(logits, test.y, scenario.chunk_classes[j], learnt=learnt))
            # Methods that route rows to task experts: the share of chunk j's rows sent to
            # expert j (the update that trained on chunk j), for the chunks trained so far.
            if routed is not None and j < updater.updates:
                id_row.append(float((routed == j).double().mean()) if len(routed) else 0.0)
            else:
                id_row.append(None)
        if updater.updates and any(v is not None for v in id_row):
            task_id_matrix.append(id_row)
        eval_seconds += time.perf_counter() - t0
        return class_row, task_row

    initial, initial_task = evaluate_all()
    matrix: list[list[float]] = []
    task_matrix: list[list[float]] = []
    per_update: list[dict[str, Any]] = []
    train_seconds, steps = 0.0, 0
    for index, chunk in enumerate(scenario.train):
        if uses_cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        record = updater.update(chunk)
        t1 = time.perf_counter()
        row, task_row = evaluate_all()
        t2 = time.perf_counter()
        matrix.append(row)
        task_matrix.append(task_row)
        chunk_steps = int(record["train"]["steps"])
        train_seconds += t1 - t0
        steps += chunk_steps
        per_update.append(
            {
                "update": index,
                "train_seconds": round(t1 - t0, 4),
                "eval_seconds": round(t2 - t1, 4),
                "train_steps": chunk_steps,
                # Parameters the update trained (a routed method: its new expert and head).
                "trainable_parameters": record["train"].get("trainable_parameters"),
                # --selective-backprop: the new rows seen, forwarded only, back-propagated.
                "selective_backprop": record["train"].get("selective_backprop"),
                "peak_rss_mb": peak_rss_mb(),
                "peak_cuda_mb": _mb(torch.cuda.max_memory_allocated()) if uses_cuda else None,
                "state_mb": _mb(state_nbytes(updater)),
            }
        )
    test_sizes = [len(test) for test in scenario.test]
    results: dict[str, Any] = {
        "library_version": __version__,
        "config": config.to_dict(),
        "head": head,
        "scenario": {
            "name": scenario.name,
            "updates": len(scenario),
            "chunk_classes": scenario.chunk_classes,
            "task_incremental": bool(getattr(scenario, "task_incremental", False)),
            **scenario.info,
        },
        "evaluated_on": "validation" if "validation" in scenario.info else "test",
        "test_sizes": test_sizes,
        "accuracy_matrix": matrix,
        "initial_accuracy": initial,
        "metrics": summarize(matrix, initial, test_sizes),
        "task_il": {
            "accuracy_matrix": task_matrix,
            "initial_accuracy": initial_task,
            "metrics": summarize(task_matrix, initial_task, test_sizes),
        }
        if task_il
        else None,
        "timing": {
            "train_seconds": round(train_seconds, 4),
            "eval_seconds": round(eval_seconds, 4),
            "total_seconds": round(time.perf_counter() - started, 4),
            "train_steps": steps,
        },
        "per_update": per_update,
        "task_identification": _task_identification(task_id_matrix, test_sizes),
    }
    if output is not None:
        write_json(Path(output) / "results.json", results)
    return results


def _task_identification(
    matrix: list[list[float | None]], test_sizes: Sequence[int]
) -> dict[str, Any] | None:
    """Task-identification accuracy of a method that routes rows to task experts (None for
    others): ``accuracy_matrix[i][j]`` is the share of test chunk j's rows routed to expert j
    after update i (None for chunks not trained yet); ``final`` pools the chunks' rows after
    the last update, as ``micro_average_accuracy`` pools accuracy."""
    if not matrix:
        return None
    last = matrix[-1]
    pairs = [(v, n) for v, n in zip(last, test_sizes, strict=True) if v is not None]
    total = sum(n for _, n in pairs)
    final = sum(v * n for v, n in pairs) / total if total else None
    return {"accuracy_matrix": matrix, "final": final}


def _warm_up() -> None:
    """Pay torch's one-time lazy imports (the first optimizer imports torch._dynamo, seconds)
    before the clock starts, so update 0's train_seconds measures training only."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def task_il_applies(scenario: Scenario) -> bool:
    """Whether task-incremental scores make sense: task ids known, or disjoint chunk classes."""
    if getattr(scenario, "task_incremental", False):
        return True
    seen: set[int] = set()
    for classes in scenario.chunk_classes:
        if not classes or seen & set(classes):
            return False
        seen |= set(classes)
    return True


HEADS = ("fixed", "growing")


def scenario_num_classes(scenario: Scenario) -> int:
    """The classes a scenario's output layer needs: one past the largest class id among its
    chunks' classes (``chunk_classes``, a chunk folder's scenario.json) and its labels."""
    top = max((int(c) for classes in scenario.chunk_classes for c in classes), default=-1)
    for chunk in (*scenario.train, *scenario.test):
        if len(chunk):
            top = max(top, int(chunk.y.max()))
    return top + 1


def head_config(config: UpdateConfig, head: str, scenario: Scenario) -> UpdateConfig:
    """``config`` with the output layer ``head`` asks for on ``scenario`` (see run_benchmark)."""
    if head not in HEADS:
        raise ConfigError(f"head {head!r} is invalid; expected one of {HEADS}")
    if head == "growing":
        if config.num_classes is not None:
            raise ConfigError(
                f"head: growing (CLI: --growing-head) conflicts with num_classes="
                f"{config.num_classes}, which fixes the head; drop one of them"
            )
        return config
    needed = scenario_num_classes(scenario)
    if config.num_classes is None:
        return config.replace(num_classes=needed)
    if config.num_classes < needed:
        raise ConfigError(
            f"num_classes={config.num_classes} (CLI: --num-classes) is too small for the "
            f"scenario {scenario.name!r}, whose labels go up to {needed - 1}; pass at least "
            f"{needed} or leave it unset"
        )
    return config


def _accuracy(
    logits: Tensor,
    y: Tensor,
    classes: Sequence[int] | None = None,
    *,
    learnt: Sequence[int] | None = None,
) -> float:
    """Top-1 accuracy; with ``classes``, the argmax is taken among those classes only, and with
    ``learnt`` among the classes the model has been trained on (also in ``classes``, if given).

    Labels beyond the model's outputs, or outside ``classes``/``learnt``, count as errors.
    """
    if learnt is not None:
        trained = {int(c) for c in learnt}
        classes = [c for c in (learnt if classes is None else classes) if int(c) in trained]
    if classes is not None:
        allowed = torch.zeros(logits.shape[1], dtype=torch.bool)
        ids = [int(c) for c in classes if 0 <= int(c) < logits.shape[1]]
        if not ids:
            return 0.0
        allowed[ids] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
    correct = int((logits.argmax(1) == y.to(logits.device)).sum()) if len(y) else 0
    return correct / max(1, len(y))


def _uses_cuda(config: UpdateConfig) -> bool:
    return torch.cuda.is_available() and config.accelerator in ("auto", "cuda", "gpu")


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where unavailable).

    It never goes down within a process, so per update it is the peak up to that update.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 2**10, 2)


def state_nbytes(updater: Updater) -> int:
    """Bytes of the tensors a state holds: model weights, method tensors, rehearsal memory."""
    total = 0
    if updater.model is not None:
        from ricordo.models.backbone import saved_weights

        # As written by save(): a frozen pretrained encoder is referenced, not stored.
        weights = saved_weights(updater.model, updater.model.state_dict())
        total += sum(t.nbytes for t in weights.values())
    total += sum(t.nbytes for t in updater.method.state_tensors().values())
    if updater.memory is not None:
        total += int(updater.memory.nbytes)
    return total


def _mb(nbytes: int) -> float:
    return round(nbytes / 2**20, 3)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (temporary sibling, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path
