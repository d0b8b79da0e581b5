"""Training loggers of ``--logger``: CSV built in; TensorBoard, MLflow and W&B when installed.

Each logger gets the loss and learning rate of every step and a summary of every epoch (mean
loss, steps/s, validation accuracy with --val-fraction). The CSV logger writes with the
standard ``csv`` module; the others call the tools' own APIs (``SummaryWriter``, ``mlflow``,
``wandb``), so their files are what those tools read. None of those packages is a dependency:
a logger whose package is missing fails before training with a one-line ``pip install`` hint.

Files are written only where the user pointed (``csv:DIR``, ``tensorboard:DIR``, default
``./ricordo-logs/``), never inside a state: each update claims a new folder
``DIR/update-K`` (``update-K-2``, ... when that exists), so nothing is ever overwritten.

This module imports nothing heavy at the top: UpdateConfig validates specs with it.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ricordo.errors import ConfigError

DEFAULT_DIR = "ricordo-logs"
# kind -> what the text after "kind:" names.
KINDS = {"csv": "DIR", "tensorboard": "DIR", "mlflow": "EXPERIMENT", "wandb": "PROJECT"}
# kind -> (module imported, package to install).
_PACKAGES = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
_EXPECTED = ", ".join(f"{k}[:{v}]" for k, v in KINDS.items())


def logger_specs(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Normalise ``--logger`` values (repeated and/or comma-separated) to a tuple of specs.

    Raises ConfigError for an unknown kind; package availability is checked only when the
    loggers open (a state recorded on a machine with TensorBoard must load on one without).
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    specs: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"--logger {item!r} is invalid; expected {_EXPECTED}")
        for part in item.split(","):
            spec = part.strip()
            if not spec:
                continue
            kind, _, where = spec.partition(":")
            if kind.strip().lower() not in KINDS or (":" in spec and not where.strip()):
                raise ConfigError(
                    f"--logger {spec!r} is invalid; expected {_EXPECTED} (several: repeat "
                    "--logger or separate them with commas)"
                )
            kind = kind.strip().lower()
            specs.append(f"{kind}:{where.strip()}" if where.strip() else kind)
    return tuple(dict.fromkeys(specs))  # the same logger twice would log everything twice


def for_run(specs: Iterable[str], run: str) -> tuple[str, ...]:
    """The specs of one benchmark run: its folders go to ``DIR/<run>`` (absolute, so that spawned
    workers agree), so runs that all start at update 0 keep their logs apart."""
    result = []
    for spec in specs:
        kind, where = split_spec(spec)
        if kind in ("csv", "tensorboard"):
            folder = Path(where or DEFAULT_DIR).expanduser().absolute() / run
            spec = f"{kind}:{folder}"
        result.append(spec)
    return tuple(result)


def check_outside_states(specs: Iterable[str] | None, states: Mapping[str, str | None]) -> None:
    """Refuse a log folder inside a state (``states``: flag -> local path or URL, or None).

    A state holds only the files Ricordo wrote and lists in its manifest; a log folder in the
    --next-state path would also block the state's own write after the whole training.
    """
    for spec in logger_specs(specs):
        kind, where = split_spec(spec)
        if kind not in ("csv", "tensorboard"):
            continue
        folder = Path(where or DEFAULT_DIR).expanduser().absolute()
        for flag, url in states.items():
            if url is None or ("://" in url and not url.startswith("file://")):
                continue  # a remote state cannot contain a local folder
            root = Path(url.removeprefix("file://")).expanduser().absolute()
            if folder == root or root in folder.parents:
                raise ConfigError(
                    f"--logger {spec} would write inside the state {flag} {url}, which holds "
                    f"only Ricordo's own files; name a folder outside it, e.g. --logger "
                    f"{kind}:{DEFAULT_DIR}"
                )


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"csv:logs"`` -> ``("csv", "logs")``; ``"csv"`` -> ``("csv", None)``."""
    kind, _, where = spec.partition(":")
    return kind, (where or None)


class Logger:
    """One destination of the training metrics; the methods do nothing unless overridden."""

    def step(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        """After optimizer step ``step`` (1-based count in the update) of ``epoch`` (0-based)."""

    def epoch(self, epoch: int, summary: Mapping[str, float | int | None]) -> None:
        """After ``epoch`` (0-based) and its validation: mean loss, steps/s, val accuracy..."""

    def close(self, failed: bool) -> None:
        """End of the update (``failed``: it raised, no state will be written)."""


class CsvLogger(Logger):
    """``metrics.csv`` (one row per step) and ``epochs.csv`` (one row per epoch) in ``folder``.

    Rows are flushed at the end of every epoch, so ``tail -f`` follows a running job.
    """

    STEP_FIELDS = ("update", "epoch", "step", "loss", "lr", "seconds")
    EPOCH_FIELDS = (
        "update", "epoch", "steps", "loss", "steps_per_s", "seconds", "val_accuracy",
    )  # fmt: skip

    def __init__(self, folder: Path, update_index: int) -> None:
        self.update_index = update_index
        self._files: list[IO[str]] = []
        self._steps = self._writer(folder / "metrics.csv", self.STEP_FIELDS)
        self._epochs = self._writer(folder / "epochs.csv", self.EPOCH_FIELDS)

    def _writer(self, path: Path, fields: tuple[str, ...]) -> Any:
        handle = path.open("x", newline="", encoding="utf-8")  # "x": never replace a file
        self._files.append(handle)
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        return writer

    def step(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        self._steps.writerow(
            {
                "update": self.update_index,
                "epoch": epoch,
                "step": step,
                "loss": loss,
                "lr": lr,
                "seconds": round(seconds, 4),
            }
        )

    def epoch(self, epoch: int, summary: Mapping[str, float | int | None]) -> None:
        row = {"update": self.update_index, "epoch": epoch}
        row.update({k: ("" if v is None else v) for k, v in summary.items()})
        self._epochs.writerow({k: row.get(k, "") for k in self.EPOCH_FIELDS})
        for handle in self._files:
            handle.flush()

    def close(self, failed: bool) -> None:
        for handle in self._files:
            handle.close()


class TensorBoardLogger(Logger):
    """Event files of ``torch.utils.tensorboard.SummaryWriter`` in ``folder``."""

    def __init__(self, module: Any, folder: Path) -> None:
        self.writer = module.SummaryWriter(log_dir=str(folder))

    def step(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, epoch: int, summary: Mapping[str, float | int | None]) -> None:
        for key, value in _numbers(summary).items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


class MlflowLogger(Logger):
    """One MLflow run per update, in MLflow's own tracking store (MLFLOW_TRACKING_URI)."""

    def __init__(
        self, module: Any, experiment: str | None, name: str, params: Mapping[str, Any]
    ) -> None:
        self.mlflow = module
        if experiment:
            module.set_experiment(experiment)
        # Inside the caller's own MLflow run (Python API), the update's run nests in it.
        module.start_run(run_name=name, nested=module.active_run() is not None)
        module.log_params({k: str(v)[:250] for k, v in params.items()})  # MLflow's length cap

    def step(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        self.mlflow.log_metrics({"train_loss": loss, "lr": lr}, step=step)

    def epoch(self, epoch: int, summary: Mapping[str, float | int | None]) -> None:
        values = {f"epoch_{k}": v for k, v in _numbers(summary).items()}
        self.mlflow.log_metrics(values, step=int(summary.get("steps") or epoch))

    def close(self, failed: bool) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


class WandbLogger(Logger):
    """One W&B run per update (``wandb.init``; W&B's own settings decide where it goes)."""

    def __init__(
        self, module: Any, project: str | None, name: str, params: Mapping[str, Any]
    ) -> None:
        self.run = module.init(project=project or "ricordo", name=name, config=dict(params))

    def step(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        self.run.log({"train/loss": loss, "train/lr": lr, "epoch": epoch}, step=step)

    def epoch(self, epoch: int, summary: Mapping[str, float | int | None]) -> None:
        values = {f"epoch/{k}": v for k, v in _numbers(summary).items()}
        self.run.log(values, step=int(summary.get("steps") or 0))

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Loggers:
    """The loggers of one update, opened together before training and closed together."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def step(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        for logger in self.loggers:
            logger.step(step, epoch, loss, lr, seconds)

    def epoch(self, epoch: int, summary: Mapping[str, float | int | None]) -> None:
        for logger in self.loggers:
            logger.epoch(epoch, summary)

    def close(self, failed: bool) -> None:
        for logger in self.loggers:
            logger.close(failed)

    def __enter__(self) -> Loggers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)


def open_loggers(
    specs: Iterable[str], update_index: int, params: Mapping[str, Any] | None = None
) -> Loggers:
    """Open the loggers of ``specs`` for update ``update_index`` (``params``: its config).

    Every package is imported, and every folder claimed, before any logger opens, so a missing
    package or an unwritable folder fails before training with nothing half-created.
    """
    specs = tuple(specs)
    if not specs:
        return Loggers([])
    modules = {
        kind: _import(kind) for kind in {split_spec(s)[0] for s in specs} if kind in _PACKAGES
    }
    name = f"update-{update_index}"
    folders: dict[Path, Path] = {}  # one claimed folder per DIR, shared by csv and tensorboard
    opened: list[Logger] = []
    try:
        for spec in specs:
            kind, where = split_spec(spec)
            if kind in ("csv", "tensorboard"):
                root = Path(where or DEFAULT_DIR).expanduser()
                if root not in folders:
                    folders[root] = _claim(root, name, spec)
                if kind == "csv":
                    opened.append(CsvLogger(folders[root], update_index))
                else:
                    opened.append(TensorBoardLogger(modules[kind], folders[root]))
            elif kind == "mlflow":
                opened.append(MlflowLogger(modules[kind], where, name, params or {}))
            else:
                opened.append(WandbLogger(modules[kind], where, name, params or {}))
    except BaseException:
        Loggers(opened).close(failed=True)
        raise
    return Loggers(opened)


def _import(kind: str) -> Any:
    module, package = _PACKAGES[kind]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"--logger {kind} needs the {package} package, which is not installed; "
            f"pip install {package} (or drop --logger {kind})"
        ) from None


def _claim(root: Path, name: str, spec: str) -> Path:
    """Create and return a new folder ``root/name`` (``name-2``, ... if taken): never reuse one."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            folder = root / (name if n == 1 else f"{name}-{n}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
    except OSError as error:
        raise ConfigError(
            f"--logger {spec}: cannot create a log folder in {root} ({error.strerror or error}); "
            "name a writable folder, e.g. --logger csv:/tmp/ricordo-logs"
        ) from None
    raise ConfigError(f"--logger {spec}: {root} holds 10000 {name} folders; name another folder")


def _numbers(summary: Mapping[str, float | int | None]) -> dict[str, float]:
    return {k: float(v) for k, v in summary.items() if v is not None}
