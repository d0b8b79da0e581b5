"""Mid-update checkpoints: resume an interrupted update from its last finished epoch, bit for bit.

A tuning trial that a scheduler pauses continues later from such a checkpoint instead of
training again from the start (``ricordo.tune``). A checkpoint is a folder of safetensors and
JSON only (loading one never runs code):

    checkpoint.json         format, update index, config, epochs done, the loop's bookkeeping
                            (steps, losses, early stopping, divergence guard), the optimizer's
                            param groups and non-tensor state, the method's ``state_json``
    tensors.safetensors     model weights, optimizer tensors (momentum...), the method's
                            ``state_tensors``, the update's generator and torch's global RNG
                            state, the early-stopping copy of the best weights
    memory/...              the rehearsal memory (``TensorMemory.to_files``)

Resuming means: rebuild the update exactly as it started (same state, chunk, config and seed),
run its set-up (validation split, ``begin_update``, optimizer), then replace everything the
epochs change with the checkpoint's and continue with the next epoch. A method whose training
changes attributes outside ``state_tensors``/``state_json`` and its memory would not resume
exactly; the methods here keep such state there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ricordo.errors import ConfigError, StateCorruptError
from ricordo.optim.eb import EBStopper

if TYPE_CHECKING:
    from ricordo.engine.loop import Chunk, DivergenceGuard, TrainReport
    from ricordo.methods.base import Method, UpdateContext

FORMAT = "ricordo-update-checkpoint"
VERSION = 1
JSON_FILE = "checkpoint.json"
TENSOR_FILE = "tensors.safetensors"
MEMORY_PREFIX = "memory/"


@dataclass
class EarlyStopping:
    """The loop's early-stopping bookkeeping (``--patience``), part of a checkpoint."""

    best_accuracy: float = -1.0
    bad_epochs: int = 0
    best_state: dict[str, Tensor] | None = None
    best_extra: list[Tensor] = field(default_factory=list)
    eb: EBStopper | None = None  # --early-stopping eb: the smoothed criterion so far


@dataclass
class EpochEnd:
    """What ``train_update``'s ``on_epoch_end`` callback receives after each epoch.

    ``epochs_done`` counts finished epochs (1 after the first); ``evaluate(data)`` scores the
    model as it is now, the way validation does (``accuracy``, ``loss``, row counts); ``save(dir)``
    writes a checkpoint from which ``train_update(resume=load_checkpoint(dir))`` continues.
    """

    epochs_done: int
    epochs: int
    mean_loss: float
    val_accuracy: float | None
    evaluate: Callable[[Chunk], dict[str, float]]
    save: Callable[[str | os.PathLike[str]], None]


@dataclass
class UpdateCheckpoint:
    """A checkpoint read back by :func:`load_checkpoint` (see the module docstring)."""

    meta: dict[str, Any]
    tensors: dict[str, Tensor]
    memory_files: dict[str, bytes]

    @property
    def epochs_done(self) -> int:
        return int(self.meta["epochs_done"])


def write_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: Method,
    ctx: UpdateContext,
    report: TrainReport,
    guard: DivergenceGuard,
    stopping: EarlyStopping,
) -> None:
    """Write everything an update's epochs have changed so far into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    # Clones: safetensors refuses tensors that share storage (tied weights).
    for name, value in model.state_dict().items():
        tensors[f"model/{name}"] = value.detach().cpu().clone().contiguous()
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entry in optimizer_state["state"].items():
        plain: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().clone().contiguous()
            else:
                plain[key] = value
        plain_state[str(index)] = plain
    for name, value in method.state_tensors().items():
        tensors[f"method/{name}"] = value.detach().cpu().clone().contiguous()
    tensors["rng/update"] = ctx.generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    if stopping.best_state is not None:
        for name, value in stopping.best_state.items():
            tensors[f"best/{name}"] = value.detach().cpu().clone().contiguous()
        for i, value in enumerate(stopping.best_extra):
            tensors[f"best_extra/{i}"] = value.detach().cpu().clone().contiguous()
    save_file(tensors, folder / TENSOR_FILE)
    if method.memory is not None:
        try:
            for name, content in method.memory.to_files(MEMORY_PREFIX).items():
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                data = content if isinstance(content, bytes) else Path(content).read_bytes()
                target.write_bytes(data)
        finally:
            method.memory.release_exports()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "update_index": ctx.update_index,
        "config": ctx.config.to_dict(),
        "epochs_done": report.epochs,
        "report": {
            "steps": report.steps,
            "epochs": report.epochs,
            "final_loss": _finite_or_none(report.final_loss),
            "best_epoch": report.best_epoch,
            "val_accuracy": report.val_accuracy,
            "batch_sizes": report.batch_sizes,
            "batch_schedule": report.batch_schedule,
            "selective_backprop": report.selective_backprop,
            "eb_values": report.eb_values,
        },
        "guard_first": guard.first,
        "early_stopping": {
            "best_accuracy": stopping.best_accuracy,
            "bad_epochs": stopping.bad_epochs,
            "has_best_state": stopping.best_state is not None,
            "best_extra": len(stopping.best_extra),
            "eb": None
            if stopping.eb is None
            else {"smoothed": stopping.eb.smoothed, "evaluations": stopping.eb.evaluations},
        },
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": plain_state},
        "method": method.state_json(),
        "memory": method.memory is not None,
    }
    (folder / JSON_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def load_checkpoint(directory: str | os.PathLike[str]) -> UpdateCheckpoint:
    """Read a checkpoint written by :func:`write_checkpoint` (safetensors and JSON only)."""
    folder = Path(directory)
    try:
        meta = json.loads((folder / JSON_FILE).read_text())
        tensors = load_file(folder / TENSOR_FILE)
    except FileNotFoundError as error:
        raise ConfigError(
            f"{folder} is not an update checkpoint (no {Path(error.filename or '').name}); "
            "pass the folder an on_epoch_end callback saved"
        ) from None
    except Exception as error:  # invalid JSON, a safetensors error
        raise StateCorruptError(
            f"update checkpoint {folder} cannot be read ({type(error).__name__}); "
            "delete it and train from the start"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StateCorruptError(f"{folder / JSON_FILE} is not a ricordo update checkpoint")
    memory_files: dict[str, bytes] = {}
    memory_dir = folder / MEMORY_PREFIX
    if memory_dir.is_dir():
        for path in sorted(memory_dir.rglob("*")):
            if path.is_file():
                memory_files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return UpdateCheckpoint(meta, tensors, memory_files)


def restore_checkpoint(
    checkpoint: UpdateCheckpoint,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: Method,
    ctx: UpdateContext,
    report: TrainReport,
    guard: DivergenceGuard,
    stopping: EarlyStopping,
) -> int:
    """Put a checkpoint's values into a freshly set-up update; returns the epochs already done."""
    meta, tensors = checkpoint.meta, checkpoint.tensors
    config = json.loads(json.dumps(ctx.config.to_dict()))  # tuples as lists, as saved
    if meta["update_index"] != ctx.update_index or meta["config"] != config:
        raise ConfigError(
            f"the update checkpoint is of update {meta['update_index']} with another "
            "configuration than this update's; resume with the state, chunk and options it was "
            "written with, or train from the start"
        )

    def part(prefix: str) -> dict[str, Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(part("model/"))
    saved = meta["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for index, plain in saved["state"].items():
        entry = dict(plain)
        entry.update(part(f"optimizer/{index}/"))
        state[int(index)] = entry
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    method.load_state(part("method/"), meta["method"])
    if meta["memory"]:
        from ricordo.memory import TensorMemory

        assert method.memory is not None
        method.memory = TensorMemory.from_files(
            checkpoint.memory_files,
            MEMORY_PREFIX,
            device=method.memory.device,
            storage=ctx.config.memory_storage,
            directory=ctx.config.memory_dir,
        )
    ctx.generator.set_state(tensors["rng/update"])
    torch.set_rng_state(tensors["rng/torch"])
    saved_report = meta["report"]
    report.steps = ctx.step = int(saved_report["steps"])
    report.epochs = int(saved_report["epochs"])
    loss = saved_report["final_loss"]
    report.final_loss = float("nan") if loss is None else float(loss)
    report.best_epoch = saved_report["best_epoch"]
    report.val_accuracy = list(saved_report["val_accuracy"])
    report.batch_sizes = [int(v) for v in saved_report.get("batch_sizes", [])]
    report.batch_schedule = saved_report.get("batch_schedule")
    report.selective_backprop = saved_report.get("selective_backprop")
    report.eb_values = [float(v) for v in saved_report.get("eb_values", [])]
    guard.first = [float(v) for v in meta["guard_first"]]
    early = meta["early_stopping"]
    stopping.best_accuracy = float(early["best_accuracy"])
    stopping.bad_epochs = int(early["bad_epochs"])
    stopping.best_state = part("best/") if early["has_best_state"] else None
    stopping.best_extra = [tensors[f"best_extra/{i}"] for i in range(int(early["best_extra"]))]
    eb = early.get("eb")
    if stopping.eb is not None and eb is not None:
        stopping.eb.smoothed = None if eb["smoothed"] is None else float(eb["smoothed"])
        stopping.eb.evaluations = int(eb["evaluations"])
    return report.epochs


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
