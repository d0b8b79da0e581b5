"""Run a tuning job: trials on Ray Tune, then the best configuration's update as the next state.

``tune(...)`` (and ``ricordo tune``) splits off the validation rows (``tune.objective``), puts
the best configurations of earlier tuning jobs in the state's history first (warm start), runs
the trials under the chosen scheduler on an embedded Ray (local cores) or ``ray_address``, then
re-runs the best trial's configuration *deterministically from the loaded state on the whole
chunk with the whole memory* for the epochs that trial trained: the next state therefore uses
every row, and its history record carries a ``tune`` entry with every trial (configuration,
epochs trained, metric, status) and the best one.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ricordo.data.lazy import LazyDataset
from ricordo.data.loaders import load_data
from ricordo.errors import ConfigError, RicordoError
from ricordo.tune.objective import DEFAULT_HOLDOUT, METRIC, MODE
from ricordo.tune.space import SearchSpace, load_space
from ricordo.tune.storage import other_machines, trial_storage
from ricordo.tune.trainable import TrialJob, run_trial

SCHEDULER_NAMES = ("random", "grid", "asha", "pasha")


@dataclass
class TrialRecord:
    """One trial's outcome, as the state's history records it."""

    trial: str
    config: dict[str, Any]
    epochs: int
    metric: float | None
    accuracy_new: float | None = None
    accuracy_memory: float | None = None
    status: str = "done"
    warm_start: bool = False
    error: str | None = None  # the last line of a failed trial's error
    node: str | None = None  # the Ray node that ran the trial's last epoch


@dataclass(frozen=True)
class SearchPlan:
    """How the trials are searched and scheduled (the arguments of :func:`tune`)."""

    scheduler: str
    trials: int
    max_epochs: int
    max_time: float | None
    ray_address: str | None
    trials_dir: str | None  # a folder or any fsspec URL (``tune.storage``); None: a temporary one
    seed: int
    # The best configurations of earlier jobs, tried first (at most ``trials`` of them).
    warm: tuple[dict[str, Any], ...] = ()

    @property
    def grid(self) -> bool:
        return self.scheduler == "grid"


@dataclass
class TuneResult:
    """What :func:`tune` returns: the updated Updater (the best configuration's update, also
    saved to ``next_state`` when given), every trial, the best one and the history entry."""

    updater: Any
    trials: list[TrialRecord]
    best: TrialRecord
    record: dict[str, Any] = field(default_factory=dict)


def tune(
    data: Any,
    *,
    space: SearchSpace | dict[str, Any] | str | os.PathLike[str],
    state: str | None = None,
    next_state: str | None = None,
    scheduler: str = "asha",
    trials: int = 8,
    max_epochs: int = 10,
    max_time: float | None = None,
    ray_address: str | None = None,
    tune_holdout: float = DEFAULT_HOLDOUT,
    threads_per_trial: int = 1,
    trials_dir: str | None = None,
    overwrite: bool = False,
    model_code: str | None = None,
    backbone: str | None = None,
    accept_model_change: bool = False,
    on_trial: Callable[[TrialRecord], None] | None = None,
    **options: Any,
) -> TuneResult:
    """Tune the update of ``state`` (or a new lineage) on ``data`` and keep the best.

    ``space``: the search space (``tune.space``). ``scheduler``: random, grid (every combination
    of the choices once; ``trials`` is then ignored), asha or pasha; ``trials`` configurations,
    each trained for at most ``max_epochs`` epochs (the resource); ``max_time`` seconds for all
    of them (Ray's time budget). ``options`` are the fixed ``UpdateConfig`` options, as for
    ``Updater.update``. ``tune_holdout``: the fraction of the chunk and of the memory set aside for
    the objective. ``on_trial`` is called with each finished trial. ``model_code``: your model
    code (a .py file or module:function; the CLI's ``--config``), for a new lineage or the code
    a ``state`` was trained with.

    ``ray_address``: a Ray cluster to run the trials on (default: an embedded Ray on this
    machine's cores). ``trials_dir`` (the CLI's ``--trials-dir``/``--storage``): where the trials
    keep their checkpoints and results, a folder or any fsspec URL (``tune.storage``); kept
    afterwards. Without it a temporary folder is used and removed, which a cluster with nodes on
    other machines cannot share: that is refused. The chunk travels to the trials with the job;
    ``state``, ``model_code`` and ``backbone`` are read by every trial from where they are, so on
    such a cluster they must be URLs or paths mounted on every node.
    """
    _check_arguments(scheduler, trials, max_epochs, max_time, threads_per_trial)
    from ricordo.updater import Updater

    if next_state is not None:  # fail now, not after the search, if it cannot be written
        from ricordo.state import check_writable

        check_writable(next_state, overwrite=overwrite)

    code = model_code
    if state is None:
        starting = Updater(config=code, **options) if code else Updater(**options)
    else:
        starting = Updater.load(
            state, model=code, backbone=backbone, accept_model_change=accept_model_change
        )
    if state is not None:
        _check_fixed_options(starting, options)
    if isinstance(data, LazyDataset):
        raise ConfigError("tuning reads the chunk into memory; load it without --lazy")
    chunk = load_data(data, columns=starting.feature_names, tokenize=starting.tokenizer)
    chunk = chunk.validate(name="the chunk")
    method = starting.config.method
    space = space if isinstance(space, SearchSpace) else load_space(space, method=method)
    seed = options.get("seed", starting.config.seed)
    # Trials run in other processes (and folders, or machines): local paths go absolute.
    state, code, backbone = (_absolute(p) for p in (state, code, backbone))
    job = TrialJob(
        chunk=chunk,
        space=space,
        max_epochs=max_epochs,
        state=state,
        options=dict(options) if state is not None else _fresh_options(starting, code),
        holdout=tune_holdout,
        seed=seed,
        threads=threads_per_trial,
        model_code=code,
        backbone=backbone,
        accept_model_change=accept_model_change,
    )
    warm = [] if scheduler == "grid" else warm_start_points(starting.history, space)[:trials]
    plan = SearchPlan(
        scheduler=scheduler,
        trials=trials,
        max_epochs=max_epochs,
        max_time=max_time,
        ray_address=ray_address,
        trials_dir=trials_dir,
        # Another seed per update: the same --seed must not replay the previous job's samples
        # (its best configuration is already among the warm-start points).
        seed=(seed * 1_000_003 + len(starting.history)) % 2**32,
        warm=tuple(warm),
    )
    trial_records = _run_trials(job, plan, on_trial)
    finished = [t for t in trial_records if t.metric is not None]
    if not finished:
        errors = [t.error for t in trial_records if t.error]
        raise RicordoError(
            f"none of the {len(trial_records)} trials reported a metric; "
            + (f"the first failed with: {errors[0]}" if errors else "no trial finished an epoch")
            + "; --next-state was not written"
        )
    # Best last-reported metric; a tie goes to the trial that trained more, then the earlier.
    best = max(finished, key=lambda t: (t.metric, t.epochs))
    final_options = job.overrides(best.config)
    final_options.update(epochs=best.epochs)
    for key in ("threads", "progress", "logger"):
        final_options.pop(key)
        if key in options:
            final_options[key] = options[key]
    updater = _final_start(job)
    updater.update(chunk, **final_options)
    record = {
        "scheduler": scheduler,
        "metric": METRIC,
        "mode": MODE,
        "max_epochs": max_epochs,
        "max_time": max_time,
        "tune_holdout": tune_holdout,
        "validation": _validation_summary(job),
        "space": space.describe(),
        "warm_start": warm,
        "final": "the best configuration re-run from the loaded state on the whole chunk and "
        "memory for the epochs its trial trained",
        "trials": [asdict(t) for t in trial_records],
        "best": asdict(best),
    }
    updater.history[-1]["tune"] = record
    if next_state is not None:
        updater.save(next_state, overwrite=overwrite)
    return TuneResult(updater, trial_records, best, record)


def warm_start_points(history: list[dict[str, Any]], space: SearchSpace) -> list[dict[str, Any]]:
    """The best configurations of earlier tuning jobs in ``history``, most recent first, as
    first points of the search (only the options this space searches; duplicates once)."""
    points: list[dict[str, Any]] = []
    for entry in reversed(history):
        best = (entry.get("tune") or {}).get("best") or {}
        config = best.get("config")
        if not isinstance(config, dict):
            continue
        point = {k: v for k, v in config.items() if k in space.dimensions}
        if point and point not in points:
            points.append(point)
    return points


def _check_fixed_options(starting: Any, options: dict[str, Any]) -> None:
    """Refuse now what every trial's update would refuse: a change of a lineage field, a bad
    value, an unknown method parameter."""
    from ricordo.config import LINEAGE_FIELDS
    from ricordo.methods import METHODS, parse_params

    changed = sorted(
        k for k in options if k in LINEAGE_FIELDS and options[k] != getattr(starting.config, k)
    )
    if changed:
        raise ConfigError(
            f"option(s) {changed} are fixed for this lineage (stored in the state); tune a new "
            "lineage (without --state) to change them"
        )
    config = starting.config.replace(**{k: v for k, v in options.items() if k != "params"})
    parse_params(METHODS.get(config.method), {**config.params, **options.get("params", {})})


def _absolute(path: str | None) -> str | None:
    """A local file or folder as an absolute path; URLs, module:function and names as given."""
    if path is None or "://" in path or not os.path.exists(path):
        return path
    return os.path.abspath(path)


def _fresh_options(starting: Any, code: str | None) -> dict[str, Any]:
    """A new lineage's options: its whole config, its model code where the trials find it."""
    options = starting.config.to_dict()
    if code is not None:
        options["config"] = code
    options["hidden"] = tuple(options["hidden"])
    options["logger"] = ()
    return options


def _final_start(job: TrialJob) -> Any:
    """The Updater the final update starts from: the loaded state (whole memory) or new."""
    from ricordo.updater import Updater

    if job.state is None:
        return Updater(**job.options)
    return Updater.load(
        job.state,
        model=job.model_code,
        backbone=job.backbone,
        accept_model_change=job.accept_model_change,
    )


def _validation_summary(job: TrialJob) -> dict[str, Any]:
    _, split = job.start()
    return split.describe()


def _check_arguments(
    scheduler: str, trials: int, max_epochs: int, max_time: float | None, threads: int
) -> None:
    if scheduler not in SCHEDULER_NAMES:
        raise ConfigError(
            f"--scheduler {scheduler!r} is unknown; choose one of {', '.join(SCHEDULER_NAMES)}"
        )
    for name, value in (("trials", trials), ("max-epochs", max_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} {value!r} is invalid; expected an integer >= 1")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads-per-trial {threads!r} is invalid; expected an integer >= 1")
    if max_time is not None and not (isinstance(max_time, (int, float)) and max_time > 0):
        raise ConfigError(f"--max-time {max_time!r} is invalid; expected seconds > 0")


def _import_ray() -> Any:
    try:
        import ray
        from ray import tune as ray_tune  # noqa: F401
    except ImportError:
        raise ConfigError(
            "ricordo tune runs its trials on Ray Tune, which is not installed; "
            'pip install "ricordo[hpo]"'
        ) from None
    return ray


def _start_ray(address: str | None) -> bool:
    """Connect to ``address`` or start an embedded Ray; True if this call started it."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    ray.init(
        # No --ray-address: a new embedded cluster ("local"); None would make Ray join whatever
        # cluster this machine already runs (RAY_ADDRESS or the last `ray start`).
        address=address or "local",
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    return True


def _check_storage_reachable(ray: Any, plan: SearchPlan) -> None:
    """Refuse the temporary local trial folder when the cluster has nodes on other machines:
    their trials' checkpoints would land on disks the driver never sees."""
    if plan.trials_dir is not None or plan.ray_address in (None, "local"):
        return
    remote = other_machines(ray)
    if remote:
        raise ConfigError(
            f"the Ray cluster at {plan.ray_address} has nodes on other machines "
            f"({', '.join(remote)}); give --storage (--trials-dir) as storage every node "
            "reaches: an fsspec URL such as s3://bucket/tune, or a folder mounted on every node"
        )


def _run_trials(
    job: TrialJob, plan: SearchPlan, on_trial: Callable[[TrialRecord], None] | None
) -> list[TrialRecord]:
    """Run the trials on Ray Tune; their records in the order Ray created them."""
    ray = _import_ray()
    from ray import tune as ray_tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ricordo.tune.schedulers import make_scheduler

    # Ray's own banners and per-trial tables stay quiet (verbose=0 of the classic output, no
    # auto loggers): ricordo prints one line per finished trial instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray starts every PENDING trial as soon as a CPU frees, and by default queues up to 200 new
    # ones: a trial PASHA promotes would wait behind all of them. One queued new trial at a time
    # keeps ASHA's order (a free worker resumes a promotable paused trial first).
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1")
    grid, space = plan.grid, job.space
    param_space = space.to_ray(grid=grid)  # before Ray starts: a bad grid fails at once
    scheduler = make_scheduler(
        plan.scheduler, metric=METRIC, mode=MODE, max_epochs=plan.max_epochs, seed=plan.seed
    )
    temporary = None if plan.trials_dir else tempfile.mkdtemp(prefix="ricordo-tune-")
    storage = trial_storage(plan.trials_dir or temporary)  # a bad URL fails before Ray starts
    # Warm-start points come first (Ray counts them in num_samples); then random samples.
    search = BasicVariantGenerator(
        points_to_evaluate=[dict(p) for p in plan.warm] or None,
        random_state=plan.seed,
        constant_grid_search=grid,
    )
    callback = _trial_lines(space, on_trial)
    # Ray logs every failed trial's traceback; ricordo prints one line per trial instead.
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    started = False
    try:
        started = _start_ray(plan.ray_address)
        _check_storage_reachable(ray, plan)
        tuner = ray_tune.Tuner(
            ray_tune.with_resources(
                ray_tune.with_parameters(run_trial, job=job), {"cpu": job.threads}
            ),
            param_space=param_space,
            tune_config=ray_tune.TuneConfig(
                # ASHA and PASHA carry the metric themselves; Ray refuses it twice.
                metric=METRIC if plan.scheduler in ("random", "grid") else None,
                mode=MODE if plan.scheduler in ("random", "grid") else None,
                search_alg=search,
                scheduler=scheduler,
                num_samples=1 if grid else plan.trials,
                time_budget_s=plan.max_time,
                # A trial's process is reused by the next trial (imports torch once per worker).
                reuse_actors=True,
            ),
            run_config=ray_tune.RunConfig(
                name="trials",
                storage_path=storage.path,
                storage_filesystem=storage.filesystem,
                verbose=0,
                # Kept trial folders get each trial's results too (result.json: one line per
                # epoch); Ray's automatic loggers stay off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS).
                callbacks=[callback, *([JsonLoggerCallback()] if temporary is None else [])],
                checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=2),
                log_to_file=True,
            ),
        )
        tune_logger.setLevel(logging.CRITICAL)
        records = [callback.record_of(result) for result in tuner.fit()]
    finally:
        tune_logger.setLevel(level)
        if started:
            ray.shutdown()
        if temporary is not None:  # the temporary trial folders (checkpoints) go
            shutil.rmtree(temporary, ignore_errors=True)
    records.sort(key=lambda r: r.trial)  # Ray numbers trials in the order it created them
    for index, record in enumerate(records):  # the search proposes the warm points first
        record.warm_start = index < len(plan.warm)
    return records


def _trial_lines(
    space: SearchSpace,
    on_trial: Callable[[TrialRecord], None] | None,
) -> Any:
    """A Ray Tune callback: one line per finished trial on stderr (and ``on_trial``); it also
    turns Ray's results into :class:`TrialRecord` (``record_of``)."""
    from ray.tune import Callback

    class TrialLines(Callback):  # type: ignore[misc, valid-type]
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._emit(trial, "done")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._emit(trial, "error", _error_line(getattr(trial, "error_file", None)))

        def _emit(self, trial: Any, status: str, error: str | None = None) -> None:
            record = self.record(trial.trial_id, trial.config, trial.last_result, status)
            record.error = error
            shown = ", ".join(f"{k}={_short(v)}" for k, v in record.config.items())
            metric = "-" if record.metric is None else f"{record.metric:.4f}"
            print(
                f"trial {record.trial} {status}: {shown}; {record.epochs} epoch(s), "
                f"{METRIC} {metric}" + (f" ({error})" if error else ""),
                file=sys.stderr,
                flush=True,
            )
            if on_trial is not None:
                on_trial(record)

        def record(
            self, trial_id: str, config: dict[str, Any], last: dict[str, Any] | None, status: str
        ) -> TrialRecord:
            last = last or {}
            sample = {k: _plain(config[k]) for k in space.dimensions if k in config}
            metric = last.get(METRIC)
            return TrialRecord(
                trial=trial_id,
                config=sample,
                epochs=int(last.get("epochs", last.get("training_iteration", 0)) or 0),
                metric=None if metric is None else float(metric),
                accuracy_new=_float(last.get("accuracy_new")),
                accuracy_memory=_float(last.get("accuracy_memory")),
                status=status,
                node=last.get("node"),
            )

        def record_of(self, result: Any) -> TrialRecord:
            metrics = result.metrics or {}
            trial_id = metrics.get("trial_id") or os.path.basename(str(result.path))
            status = "error" if result.error is not None else "done"
            record = self.record(str(trial_id), result.config, metrics, status)
            if result.error is not None:
                record.error = _last_line(str(result.error))
            return record

    return TrialLines()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _error_line(path: str | None) -> str | None:
    """The last line of a failed trial's error file (Ray writes the traceback there)."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, errors="replace") as file:
        return _last_line(file.read()) or None


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
