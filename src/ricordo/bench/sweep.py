"""Sweeps: every (method, seed) run of an experiment, in parallel processes or on a Ray cluster.

Each run rebuilds its scenario from the small JSON-able ``ScenarioSpec`` (no tensors are pickled)
and returns its results as plain data; the driver writes the files. A run that fails is recorded
with its error and the others go on. Output layout in ``OUTPUT``:

- one method, one seed:        ``results.json``
- several methods, one seed:   ``<method>/results.json`` for each method
- several seeds:               ``runs/<method>-seed<k>.json`` for each (method, seed)
- always:                      ``experiment.yaml`` (the resolved experiment: ``ricordo benchmark
                               -c OUTPUT/experiment.yaml`` repeats it)
- more than one run:           ``summary.json`` and ``summary.md`` (mean ± std over seeds)
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ricordo import __version__
from ricordo.bench.experiment import Experiment, ScenarioSpec, parse_seeds, save_experiment
from ricordo.bench.runner import HEADS, head_config, run_benchmark, write_json
from ricordo.config import UpdateConfig
from ricordo.engine.loggers import for_run
from ricordo.errors import ConfigError

RunCallback = Callable[[dict[str, Any]], None]

# Metrics shown in tables, in this order (all are fractions, shown in %).
TABLE_METRICS = (
    "average_accuracy",
    "average_incremental_accuracy",
    "micro_average_accuracy",
    "forgetting",
    "backward_transfer",
    "forward_transfer",
)
TIMING_KEYS = ("train_seconds", "eval_seconds", "total_seconds", "train_steps")
# Headers of the terminal table when the full ones do not fit (a legend names them in full).
SHORT_HEADERS = {
    "average accuracy": "avg acc",
    "average incremental accuracy": "avg inc",
    "micro average accuracy": "micro",
    "forgetting": "forget",
    "backward transfer": "BWT",
    "forward transfer": "FWT",
    "task-IL average accuracy": "task-IL",
    "task-ID accuracy": "task-ID",
}


def run_sweep(
    scenario_spec: ScenarioSpec | Mapping[str, Any],
    configs: Sequence[UpdateConfig] | Mapping[str, UpdateConfig],
    seeds: Sequence[int],
    output: str | Path,
    workers: int | None = None,
    ray_address: str | None = None,
    *,
    on_done: RunCallback | None = None,
    head: str = "fixed",
) -> dict[str, Any]:
    """Run every config with every seed on the scenario ``scenario_spec``; return the summary.

    ``configs``: UpdateConfigs (named by their method) or a mapping name -> config; each run uses
    the config with ``seed`` replaced by one of ``seeds``. ``workers``: parallel runs (default
    ``min(runs, usable CPUs)``; 1 runs in this process); each worker process uses
    ``max(1, cores // workers)`` torch threads unless the config sets ``threads``.
    ``ray_address``: run on a Ray cluster instead (``"local"`` starts one on this machine; Ray is
    the ``hpo`` extra). ``on_done`` is called with each run's record as it finishes. ``head``:
    the output layer of every run, ``"fixed"`` to the scenario's classes or ``"growing"`` (see
    :func:`ricordo.bench.runner.run_benchmark`).

    Every method name and its ``params``, and the scenario (built once here for the first seed,
    except on a remote Ray cluster, whose nodes may hold data this machine lacks), are checked
    before any run starts and before anything is written. A failing run is recorded
    (``summary["failed"]``) without stopping the others, except a lone run in this process,
    whose error is raised as is.
    """
    spec = (
        scenario_spec
        if isinstance(scenario_spec, ScenarioSpec)
        else ScenarioSpec.from_dict(scenario_spec)
    )
    named = _named(configs)
    seeds = parse_seeds(list(seeds))
    validate_configs(named)
    if ray_address is not None:
        _import_ray()
    runs = len(named) * len(seeds)
    if workers is None:
        workers = min(runs, _cores())
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"--workers {workers!r} is invalid; expected an integer >= 1")
    workers = min(workers, runs)
    spec.check()
    if head not in HEADS:
        raise ConfigError(f"head {head!r} is invalid; expected one of {HEADS}")
    if ray_address is None or ray_address == "local":
        _SCENARIO_CACHE.clear()
        one = next(iter(named.values()))
        first = spec.build(seeds[0], _tokenizer(one))
        _SCENARIO_CACHE[_cache_key(spec.to_dict(), spec, seeds[0], one)] = first
        for config in named.values():  # a head that cannot fit fails before any run
            head_config(config, head, first)
    experiment = Experiment.from_configs(
        spec, named, seeds, workers=workers, ray_address=ray_address, head=head
    )
    described = experiment.to_dict()
    layout = "single" if runs == 1 else ("methods" if len(seeds) == 1 else "runs")
    out = Path(output)
    tasks = []
    for name, config in named.items():
        for seed in seeds:
            run = name if len(seeds) == 1 else f"{name}-seed{seed}"
            # --logger csv:DIR: each run logs to DIR/<run>/update-K (all runs start at update 0).
            logger = for_run(config.logger, run)
            tasks.append(
                {
                    "run": run,
                    "name": name,
                    "method": config.method,
                    "seed": seed,
                    "file": _run_file(layout, name, seed),
                    "spec": spec.to_dict(),
                    "config": config.replace(seed=seed, logger=logger).to_dict(),
                    "experiment": described,
                    "head": head,
                    "threads": None,
                }
            )
    records: list[dict[str, Any]] = []

    def finish(record: dict[str, Any]) -> None:
        results = record.pop("results", None)
        if results is not None:
            write_json(out / record["file"], results)
            record["metrics"] = results["metrics"]
            record["task_il"] = (results.get("task_il") or {}).get("metrics")
            # Methods that route rows to task experts (s-prompts, s-lora, color); else None.
            record["task_id_accuracy"] = (results.get("task_identification") or {}).get("final")
            record["timing"] = results["timing"]
            record["peak_rss_mb"] = max(
                (u["peak_rss_mb"] or 0 for u in results["per_update"]), default=None
            )
        else:
            record["file"] = None
        records.append(record)
        if on_done is not None:
            on_done(record)

    started = time.perf_counter()
    if ray_address is not None:
        _SCENARIO_CACHE.clear()  # the Ray workers build their own
        _run_on_ray(tasks, ray_address, workers, finish)
    elif workers == 1:
        try:
            for task in tasks:
                finish(execute_run(task, isolate=runs > 1))
        finally:
            _SCENARIO_CACHE.clear()
    else:
        _SCENARIO_CACHE.clear()  # the workers build their own
        _run_in_processes(tasks, workers, finish)
    order = {task["run"]: i for i, task in enumerate(tasks)}
    records.sort(key=lambda r: order[r["run"]])
    summary = summarize_runs(records, described, layout)
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)
    save_experiment(experiment, out / "experiment.yaml")
    if runs > 1:
        write_json(out / "summary.json", summary)
        (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return summary


def run_experiment(
    experiment: Experiment, output: str | Path | None = None, *, on_done: RunCallback | None = None
) -> dict[str, Any]:
    """Run an Experiment (e.g. from a YAML file) with :func:`run_sweep`; return the summary."""
    return run_sweep(
        experiment.spec,
        experiment.configs(),
        experiment.seeds,
        output or experiment.output or "results",
        workers=experiment.workers,
        ray_address=experiment.ray_address,
        on_done=on_done,
        head=experiment.head,
    )


def validate_configs(configs: Mapping[str, UpdateConfig]) -> None:
    """Fail now, before any run, on an unknown method or a parameter a method does not have."""
    from ricordo.methods import METHODS, parse_params

    for config in configs.values():
        parse_params(METHODS.get(config.method), config.params)


# ------------------------------------------------------------------------------ running a run

_SCENARIO_CACHE: dict[str, Any] = {}


def execute_run(task: dict[str, Any], isolate: bool = True) -> dict[str, Any]:
    """Run one task (a JSON-able dict) in this process; return its record with ``results``.

    With ``isolate`` an error becomes a ``failed`` record instead of an exception.
    """
    started = time.perf_counter()
    record = {k: task[k] for k in ("run", "name", "method", "seed", "file")}
    try:
        if task.get("threads"):
            import torch

            torch.set_num_threads(int(task["threads"]))
        spec = ScenarioSpec.from_dict(task["spec"])
        config = UpdateConfig.from_dict(task["config"])
        key = _cache_key(task["spec"], spec, task["seed"], config)
        if key not in _SCENARIO_CACHE:  # the methods of one seed share it within a worker
            _SCENARIO_CACHE.clear()
            _SCENARIO_CACHE[key] = spec.build(task["seed"], _tokenizer(config))
        results = run_benchmark(_SCENARIO_CACHE[key], config, head=task.get("head", "fixed"))
    except Exception as error:
        if not isolate:
            raise
        return {
            **record,
            "status": "failed",
            "error": _one_line(error),
            "traceback": traceback.format_exc(),
            "seconds": round(time.perf_counter() - started, 3),
        }
    results["run"] = {k: task[k] for k in ("run", "name", "method", "seed")}
    results["experiment"] = task["experiment"]
    results["library_version"] = __version__
    return {
        **record,
        "status": "ok",
        "results": results,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _cache_key(
    described: dict[str, Any], spec: ScenarioSpec, seed: int, config: UpdateConfig
) -> str:
    # Text chunks are tokenized by the run's backbone: runs on other backbones rebuild them.
    text = [config.backbone, config.max_length] if config.backbone else None
    return json.dumps([described, spec.seed_for(seed), text], sort_keys=True)


def _tokenizer(config: UpdateConfig) -> Any:
    """The backbone tokenizer that turns a chunk folder's texts into a run's inputs."""
    from ricordo.models.backbone import text_tokenizer

    return text_tokenizer(config.backbone, config.max_length)


def _init_worker(threads: int) -> None:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


def _run_in_processes(
    tasks: list[dict[str, Any]], workers: int, finish: Callable[[dict[str, Any]], None]
) -> None:
    """Run the tasks in ``workers`` spawned processes.

    A worker that dies (killed, out of memory, a crash in native code) breaks the whole pool
    and every run not finished yet with it; those runs are then repeated, each in a process of
    its own (still ``workers`` at a time), so only the run that kills its process fails.
    """
    threads = max(1, _cores() // workers)
    for task in tasks:
        task["threads"] = task["config"]["threads"] or threads
        task["config"]["progress"] = False  # bars of parallel runs would overwrite each other
    context = multiprocessing.get_context("spawn")
    broken: list[dict[str, Any]] = []
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(execute_run, task): task for task in tasks}
        try:
            for future in as_completed(futures):
                try:
                    record = future.result()
                except BrokenProcessPool:
                    broken.append(futures[future])
                    continue
                except Exception as error:  # e.g. a result that cannot be sent back
                    record = _failed(futures[future], error)
                finish(record)
        except BaseException:  # Ctrl-C or a failed write: do not start the queued runs
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if broken:
        order = {id(task): i for i, task in enumerate(tasks)}
        broken.sort(key=lambda task: order[id(task)])

        def alone(task: dict[str, Any]) -> dict[str, Any]:
            with ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_init_worker, initargs=(threads,)
            ) as single:
                try:
                    return single.submit(execute_run, task).result()
                except BrokenProcessPool as error:
                    return _failed(task, error, died=True)
                except Exception as error:
                    return _failed(task, error)

        with ThreadPoolExecutor(max_workers=workers) as threads_pool:
            for record in threads_pool.map(alone, broken):
                finish(record)


def _run_on_ray(
    tasks: list[dict[str, Any]],
    address: str,
    workers: int | None,
    finish: Callable[[dict[str, Any]], None],
) -> None:
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
        if address == "local":
            # "local" starts a new single-machine cluster; without it Ray would join whatever
            # cluster this machine already runs (RAY_ADDRESS or the last `ray start`).
            ray.init(address="local", num_cpus=workers or None, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    try:
        local = address == "local"
        per_run = max(1, _cores() // (workers or 1)) if local else 1
        remote = ray.remote(_execute_on_node)
        queue = list(tasks)
        pending: dict[Any, dict[str, Any]] = {}
        while queue or pending:
            while queue and (workers is None or len(pending) < workers):
                task = queue.pop(0)
                task["threads"] = task["config"]["threads"] or per_run
                task["config"]["progress"] = False
                ref = remote.options(num_cpus=task["threads"] if not local else 1).remote(task)
                pending[ref] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as error:  # the task's worker died
                    record = _failed(task, error, died=True)
                finish(record)
    finally:
        if started_here:
            ray.shutdown()


def _execute_on_node(task: dict[str, Any]) -> dict[str, Any]:
    """:func:`execute_run` as a Ray task; the record names the Ray node that ran it."""
    import ray

    record = execute_run(task)
    record["node"] = ray.get_runtime_context().get_node_id()
    return record


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray-address needs Ray, which is not installed; pip install 'ricordo[hpo]'"
        ) from None
    return ray


def _failed(task: dict[str, Any], error: BaseException, died: bool = False) -> dict[str, Any]:
    message = _one_line(error)
    if died:
        message = f"its worker process died (killed, out of memory or a crash): {message}"
    return {
        **{k: task[k] for k in ("run", "name", "method", "seed", "file")},
        "status": "failed",
        "error": message,
        "traceback": "".join(traceback.format_exception(error)),
        "seconds": None,
    }


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _named(configs: Sequence[UpdateConfig] | Mapping[str, UpdateConfig]) -> dict[str, UpdateConfig]:
    if isinstance(configs, Mapping):
        named = {str(k): v for k, v in configs.items()}
    else:
        named = {}
        for config in configs:
            if config.method in named:
                raise ConfigError(
                    f"method {config.method!r} appears twice; pass a mapping name -> config "
                    "to run one method with different settings"
                )
            named[config.method] = config
    if not named:
        raise ConfigError("a sweep needs at least one config")
    bad = [k for k in named if not k or "/" in k or k.startswith(".")]
    if bad:
        raise ConfigError(f"run names {bad} cannot be file names; use letters, digits, - or _")
    return named


def _run_file(layout: str, name: str, seed: int) -> str:
    if layout == "single":
        return "results.json"
    if layout == "methods":
        return f"{name}/results.json"
    return f"runs/{name}-seed{seed}.json"


# ------------------------------------------------------------------------------------ summary


def stats(values: Sequence[float | int | None]) -> dict[str, Any] | None:
    """Mean and sample standard deviation (ddof=1; None for one value) of the non-None values."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    return {
        "mean": statistics.fmean(kept),
        "std": statistics.stdev(kept) if len(kept) > 1 else None,
        "n": len(kept),
        "values": kept,
    }


def summarize_runs(
    records: Sequence[dict[str, Any]], experiment: dict[str, Any], layout: str
) -> dict[str, Any]:
    """The combined view of a sweep: per method, mean ± std over its successful seeds."""
    methods: dict[str, Any] = {}
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        keys = list(dict.fromkeys(k for r in ok for k in r["metrics"]))
        task_il = [r["task_il"] for r in ok if r.get("task_il")]
        methods[name] = {
            "method": mine[0]["method"],
            "runs": len(mine),
            "ok": len(ok),
            "failed": len(mine) - len(ok),
            "seeds": [r["seed"] for r in ok],
            "metrics": {k: stats([r["metrics"].get(k) for r in ok]) for k in keys},
            "task_il": {k: stats([m.get(k) for m in task_il]) for k in keys}
            if task_il and len(task_il) == len(ok)
            else None,
            "task_id_accuracy": stats([r.get("task_id_accuracy") for r in ok]),
            "timing": {k: stats([r["timing"][k] for r in ok]) for k in TIMING_KEYS} if ok else {},
            "peak_rss_mb": max((r["peak_rss_mb"] or 0 for r in ok), default=None),
        }
    runs = [
        {k: r.get(k) for k in ("run", "name", "method", "seed", "status", "file", "seconds")}
        | ({"error": r["error"]} if r["status"] != "ok" else {})
        | ({"node": r["node"]} if "node" in r else {})  # the Ray node (runs on Ray only)
        for r in records
    ]
    return {
        "library_version": __version__,
        "layout": layout,
        "experiment": experiment,
        "std": "sample standard deviation over seeds (ddof=1); null for a single seed",
        "methods": methods,
        "runs": runs,
        "failed": [{"run": r["run"], "error": r["error"]} for r in records if r["status"] != "ok"],
    }


def _fmt(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if stat is None or stat["mean"] is None or math.isnan(stat["mean"]):
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {scale * stat['std']:.{digits}f}"
    return text


def summary_table(
    summary: dict[str, Any], short: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the combined table (accuracies in %, mean ± std over seeds).

    ``short``: for a narrow terminal, headers from :data:`SHORT_HEADERS` and each std on a line
    of its own under its mean.
    """
    if short:
        headers, rows = summary_table(summary)
        headers = [SHORT_HEADERS.get(h, h) for h in headers]
        return headers, [[cell.replace(" ± ", "\n±") for cell in row] for row in rows]
    headers = ["method", "runs", *(m.replace("_", " ") for m in TABLE_METRICS)]
    with_task = any(v["task_il"] for v in summary["methods"].values())
    if with_task:
        headers.append("task-IL average accuracy")
    # Share of test rows routed to their own task's expert, for methods that route.
    with_routing = any(v.get("task_id_accuracy") for v in summary["methods"].values())
    if with_routing:
        headers.append("task-ID accuracy")
    headers.append("train s")
    rows = []
    for name, entry in summary["methods"].items():
        row = [name, f"{entry['ok']}/{entry['runs']}"]
        row += [_fmt(entry["metrics"].get(m)) for m in TABLE_METRICS]
        if with_task:
            row.append(_fmt((entry["task_il"] or {}).get("average_accuracy")))
        if with_routing:
            row.append(_fmt(entry.get("task_id_accuracy")))
        row.append(_fmt(entry["timing"].get("train_seconds"), scale=1.0))
        rows.append(row)
    return headers, rows


def summary_markdown(summary: dict[str, Any]) -> str:
    """summary.md: the combined table, the task-IL table and the failed runs."""
    exp = summary["experiment"]
    where = (
        f"chunks {exp['chunks']}"
        if exp.get("chunks")
        else f"{exp['dataset']} / {exp['scenario']}, {exp['updates']} updates"
    )
    lines = [
        "# Benchmark summary",
        "",
        f"ricordo {summary['library_version']} · {where} · seeds "
        f"{', '.join(map(str, exp['seeds']))} · "
        + (f"{exp['head']} output layer · " if exp.get("head") else "")
        + "accuracies in %, mean ± std over seeds",
        "",
    ]
    if exp.get("validation"):
        lines += [f"**{evaluation_note(exp['validation'])}**", ""]
    headers, rows = summary_table(summary)
    lines += _markdown_table(headers, rows)
    task_rows = [
        [name, *(_fmt(entry["task_il"].get(m)) for m in TABLE_METRICS)]
        for name, entry in summary["methods"].items()
        if entry["task_il"]
    ]
    if task_rows:
        lines += ["", "## Task-incremental (logits masked to each chunk's classes)", ""]
        lines += _markdown_table(
            ["method", *(m.replace("_", " ") for m in TABLE_METRICS)], task_rows
        )
    if summary["failed"]:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{f['run']}`: {f['error']}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def evaluation_note(fraction: float) -> str:
    """The line every table of a validation-mode benchmark carries, so that its numbers are
    never taken for test accuracies."""
    return (
        f"Validation split: evaluated on {100 * fraction:g} % of each training chunk, held out "
        "from training; no test set was used."
    )


def _markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
