"""Benchmark experiments as data: a YAML file <-> ``Experiment`` <-> ``run_sweep``.

An experiment is the scenario (a dataset cut into chunks, or a folder of pre-split chunks), the
methods, the seeds, and the UpdateConfig options shared by the runs (``method_options`` overrides
them per method). It is plain JSON-able data, so a sweep can rebuild the scenario inside each
worker process from it, every run records it, and ``OUTPUT/experiment.yaml`` repeats a run::

    dataset: digits            # or  chunks: path/to/folder  (train-K.npz, test-K.npz)
    scenario: class-incremental
    scenario_options: {class_order: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
    updates: 5
    methods: [finetune, er]
    seeds: [0, 1, 2]
    epochs: 5                  # any UpdateConfig field
    method_options:            # per-method UpdateConfig overrides
      er: {memory_size: 200, params: {memory_batch_size: 32}}
    head: fixed                # output layer: one column per class of the scenario from the
                               # start (default), or growing (columns added as classes arrive)
    validation: 0.2            # optional: evaluate on 20 % of each training chunk, not the tests
    preset: seq-cifar10        # optional: a named protocol's keys (ricordo.bench.presets) under
                               # the others

A method parameter given several values is a grid: ``params: {alpha: [0.1, 0.3, 1]}`` (or
``--param alpha=0.1,0.3,1``) runs der[alpha=0.1], der[alpha=0.3] and der[alpha=1] (see
``expand_grids``); ``OUTPUT/experiment.yaml`` records the expanded runs.

Relative paths in a file are relative to the file. The scenario seed is each run's seed unless
``scenario_seed`` fixes it (then every seed sees the same class order).

``validation: F`` (``--validation F``) is the tuning mode: each training chunk keeps 1 - F of
its rows for training and the held-out rows replace the test sets (``ricordo.bench.validation``),
so hyperparameters can be chosen without looking at a test set; it also applies to ``chunks``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ricordo import __version__
from ricordo.config import UpdateConfig, field_names
from ricordo.errors import ConfigError

DEFAULT_METHODS = ("finetune", "er", "joint")
DEFAULT_OUTPUT = "results"

# Keys of the scenario part; ``chunks`` replaces all the others.
DATASET_KEYS = (
    "dataset",
    "data_dir",
    "download",
    "dataset_options",
    "scenario",
    "scenario_options",
    "scenario_seed",
    "updates",
)
# ``validation`` applies to a dataset and to a chunk folder alike.
SPEC_KEYS = (*DATASET_KEYS, "chunks", "validation")
RUN_KEYS = ("methods", "seeds", "method_options", "workers", "ray_address", "output", "head")
HEADS = ("fixed", "growing")  # ricordo.bench.runner.run_benchmark's ``head``
INFO_KEYS = ("library_version",)
# ``preset: seq-cifar10`` (CLI: --preset) fills in a named protocol's keys (ricordo.bench.presets)
# under everything else the file or the command line sets.
PRESET_KEY = "preset"
ALIASES = {"method": "methods", "seed": "seeds"}
# Dict-valued keys: a CLI override merges into the file's dict instead of replacing it.
DICT_KEYS = (
    "dataset_options",
    "scenario_options",
    "params",
    "model_options",
    "memory_options",
    "method_options",
)
_PATH_KEYS = ("data_dir", "chunks", "config", "output")


def config_keys() -> list[str]:
    """The UpdateConfig fields an experiment sets (method and seed come from methods/seeds)."""
    return [name for name in field_names() if name not in ("method", "seed")]


def valid_keys() -> list[str]:
    return [*SPEC_KEYS, *RUN_KEYS, *INFO_KEYS, PRESET_KEY, *ALIASES, *config_keys()]


# --------------------------------------------------------------------------------- scenario spec


@dataclass(frozen=True)
class ScenarioSpec:
    """What to load and how to cut it: small and JSON-able, rebuilt in every worker process."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    dataset_options: dict[str, Any] = field(default_factory=dict)
    scenario: str = "class-incremental"
    scenario_options: dict[str, Any] = field(default_factory=dict)
    scenario_seed: int | None = None
    updates: int = 5
    chunks: str | None = None
    validation: float | None = None  # held-out share of each training chunk, evaluated on

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(f"dataset {self.dataset!r} must be a dataset name such as digits")
        if not isinstance(self.scenario, str) or not self.scenario:
            raise ConfigError(
                f"scenario {self.scenario!r} must be a name such as class-incremental"
            )
        _check_int("updates", self.updates, minimum=1)
        if self.scenario_seed is not None:
            _check_int("scenario_seed", self.scenario_seed, minimum=0)
        if not isinstance(self.download, bool):
            raise ConfigError(f"download must be true or false, got {self.download!r}")
        for name in ("dataset_options", "scenario_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} must be a mapping of option: value, got {value!r}")
            object.__setattr__(self, name, {str(k): v for k, v in value.items()})
        for name in ("data_dir", "chunks"):
            object.__setattr__(self, name, _path(getattr(self, name)))
        if self.validation is not None:
            from ricordo.bench.validation import check_fraction

            object.__setattr__(self, "validation", check_fraction(self.validation))

    def seed_for(self, run_seed: int) -> int:
        """The scenario seed of a run: ``scenario_seed`` if fixed, else the run's seed."""
        return run_seed if self.scenario_seed is None else self.scenario_seed

    def check(self) -> None:
        """Cheap checks that need no data: the dataset, the scenario and its options exist."""
        if self.chunks is not None:
            return
        from ricordo.data import DATASETS
        from ricordo.data.builtin import dataset_options
        from ricordo.data.scenarios import scenario_options

        DATASETS.get(self.dataset)
        unknown = sorted(set(self.dataset_options) - set(dataset_options(self.dataset)))
        if unknown:
            raise ConfigError(
                f"dataset {self.dataset!r} has no option(s) {unknown}; its options: "
                f"{', '.join(dataset_options(self.dataset)) or 'none'}"
            )
        valid = scenario_options(self.scenario)  # unknown scenario names fail here
        unknown = sorted({k.replace("-", "_") for k in self.scenario_options} - set(valid))
        if unknown:
            raise ConfigError(
                f"scenario {self.scenario!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(sorted(valid)) or '(none)'}"
            )

    def build(self, run_seed: int, tokenize: Any = None) -> Any:
        """Load the data and cut it into the Scenario a run with ``run_seed`` trains on.

        With ``validation`` the test chunks are replaced by rows held out from the training
        chunks (split from the scenario seed), so a run never evaluates on a test set.
        ``tokenize``: the runs' backbone tokenizer, for chunk folders of text.
        """
        if self.chunks is not None:
            from ricordo.bench.chunks import load_chunks

            return load_chunks(
                self.chunks,
                validation=self.validation,
                seed=self.seed_for(run_seed),
                tokenize=tokenize,
            )
        from ricordo.data import load_builtin, make_scenario

        train, test = load_builtin(
            self.dataset, root=self.data_dir, download=self.download, **self.dataset_options
        )
        scenario = make_scenario(
            self.scenario,
            train,
            test,
            updates=self.updates,
            seed=self.seed_for(run_seed),
            data_name=self.dataset,
            options=self.scenario_options,
        )
        if self.validation is None:
            return scenario
        from ricordo.bench.validation import validation_scenario

        return validation_scenario(scenario, self.validation, self.seed_for(run_seed))

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form: only ``chunks`` for a chunk folder, else the dataset keys;
        ``validation`` too when set."""
        extra = {} if self.validation is None else {"validation": self.validation}
        if self.chunks is not None:
            return {"chunks": self.chunks, **extra}
        return {**{key: _plain(getattr(self, key)) for key in DATASET_KEYS}, **extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioSpec:
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown scenario key(s) {', '.join(unknown)}; valid: {', '.join(SPEC_KEYS)}"
            )
        _check_chunks_alone(data, "the scenario spec")
        return cls(**{k: v for k, v in data.items() if v is not None})  # None: the default


# ----------------------------------------------------------------------------------- experiment


@dataclass(frozen=True)
class Experiment:
    """A benchmark: one run per (method, seed) on the scenario ``spec``.

    ``options`` are UpdateConfig fields shared by every run; ``method_options[name]`` overrides
    them for one method (its ``method`` key, if any, makes ``name`` a label for that method, so
    one method can appear twice with different settings).
    """

    spec: ScenarioSpec = field(default_factory=ScenarioSpec)
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = (0,)
    options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: int | None = None
    ray_address: str | None = None
    output: str | None = None
    head: str = "fixed"  # the output layer: "fixed" to the scenario's classes, or "growing"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(
                f"head {self.head!r} is invalid; expected fixed (one output column per class "
                "of the scenario, the default) or growing (CLI: --growing-head)"
            )
        object.__setattr__(self, "methods", parse_names(self.methods))
        object.__setattr__(self, "seeds", parse_seeds(self.seeds))
        if self.workers is not None:
            _check_int("workers", self.workers, minimum=1)
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise ConfigError(
                f"ray_address must be a string such as local, got {self.ray_address!r}"
            )
        object.__setattr__(self, "output", _path(self.output))
        unknown = sorted(set(self.options) - set(config_keys()))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(config_keys())}"
            )
        object.__setattr__(self, "options", _config_options(self.options))
        if not isinstance(self.method_options, Mapping):
            raise ConfigError("method_options must map a method name to its options")
        per_method: dict[str, dict[str, Any]] = {}
        for name, extra in self.method_options.items():
            if name not in self.methods:
                raise ConfigError(
                    f"method_options names {name!r}, which is not among the methods "
                    f"{list(self.methods)}; add it to methods or drop it"
                )
            if not isinstance(extra, Mapping):
                raise ConfigError(f"method_options.{name} must be a mapping, got {extra!r}")
            extra = {_key(k): v for k, v in extra.items()}
            bad = sorted(set(extra) - {*config_keys(), "method"})
            if bad:
                raise ConfigError(
                    f"method_options.{name} has unknown option(s) {', '.join(bad)}; "
                    f"valid: method, {', '.join(config_keys())}"
                )
            per_method[str(name)] = _config_options(extra)
        methods, options, per_method = expand_grids(self.methods, self.options, per_method)
        object.__setattr__(self, "methods", parse_names(methods))
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "method_options", per_method)
        configs = self.configs()  # every value checked now, not when a worker gets to it
        fixing = [n for n, c in configs.items() if c.num_classes is not None]
        if self.head == "growing" and fixing:
            raise ConfigError(
                f"head: growing (CLI: --growing-head) conflicts with num_classes set for "
                f"{', '.join(fixing)}, which fixes the head; drop one of them"
            )

    def configs(self) -> dict[str, UpdateConfig]:
        """One UpdateConfig per method name (seed: the first seed; a sweep sets each seed)."""
        result = {}
        for name in self.methods:
            extra = dict(self.method_options.get(name, {}))
            method = extra.pop("method", name)
            fields = {**self.options, **extra}
            for key in ("params", "model_options", "memory_options"):
                if key in self.options and key in extra:
                    fields[key] = {**self.options[key], **extra[key]}
            try:
                result[name] = UpdateConfig(method=method, seed=self.seeds[0], **fields)
            except TypeError as error:
                raise ConfigError(f"invalid option value for {name}: {error}") from None
        return result

    @classmethod
    def from_configs(
        cls,
        spec: ScenarioSpec,
        configs: Mapping[str, UpdateConfig],
        seeds: Sequence[int],
        *,
        workers: int | None = None,
        ray_address: str | None = None,
        output: str | None = None,
        head: str = "fixed",
    ) -> Experiment:
        """The experiment running ``configs`` (name -> config) for every seed: values shared by
        all configs become ``options``, the others ``method_options``."""
        dicts = {name: cfg.to_dict() for name, cfg in configs.items()}
        if not dicts:
            raise ConfigError("an experiment needs at least one method")
        first = next(iter(dicts.values()))
        common = {
            k: first[k] for k in config_keys() if all(d[k] == first[k] for d in dicts.values())
        }
        method_options = {}
        for name, d in dicts.items():
            extra = {k: d[k] for k in config_keys() if k not in common}
            if d["method"] != name:
                extra["method"] = d["method"]
            if extra:
                method_options[name] = extra
        return cls(
            spec=spec,
            methods=tuple(dicts),
            seeds=tuple(seeds),
            options=common,
            method_options=method_options,
            workers=workers,
            ray_address=ray_address,
            output=output,
            head=head,
        )

    def resolved(self) -> Experiment:
        """The same experiment with every UpdateConfig field spelled out (defaults included)."""
        return Experiment.from_configs(
            self.spec,
            self.configs(),
            self.seeds,
            workers=self.workers,
            ray_address=self.ray_address,
            output=self.output,
            head=self.head,
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment as YAML/JSON data (``output`` left out: a re-run chooses)."""
        full = self.resolved()
        data: dict[str, Any] = {"library_version": __version__, **self.spec.to_dict()}
        data["methods"] = list(full.methods)
        data["seeds"] = list(full.seeds)
        data["workers"] = full.workers
        data["ray_address"] = full.ray_address
        data["head"] = full.head
        varying = {k for extra in full.method_options.values() for k in extra}
        data.update({k: _plain(full.options.get(k)) for k in config_keys() if k not in varying})
        data["method_options"] = _plain(full.method_options)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "the experiment") -> Experiment:
        """Build from YAML/JSON data; unknown keys fail in one line naming them."""
        data = normalize(data, source=source)
        if data.get(PRESET_KEY) is not None:
            from ricordo.bench.presets import preset_settings

            settings = normalize(preset_settings(str(data.pop(PRESET_KEY))))
            data = merge(settings, data)
        data.pop(PRESET_KEY, None)
        _check_chunks_alone(data, source)
        spec = ScenarioSpec.from_dict({k: data[k] for k in SPEC_KEYS if k in data})
        options = {k: data[k] for k in config_keys() if k in data}
        run = {k: data[k] for k in RUN_KEYS if data.get(k) is not None}
        return cls(spec=spec, options=options, **run)


# ---------------------------------------------------------------------------------- YAML files


def read_experiment_file(path: str | Path) -> dict[str, Any]:
    """The keys of a YAML experiment file, normalised, with paths made relative to the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"experiment file {str(path)!r} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read experiment file {str(path)!r}: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(
            f"experiment file {str(path)!r} is not valid YAML{line}: {problem}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"experiment file {str(path)!r} must hold a mapping of key: value, "
            f"got a {type(data).__name__}"
        )
    data = normalize(data, source=str(path))
    base = path.resolve().parent
    for key in _PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value and "://" not in value:
            candidate = Path(value).expanduser()
            data[key] = str(candidate if candidate.is_absolute() else base / candidate)
    return data


def load_experiment(path: str | Path) -> Experiment:
    """Read a YAML experiment file."""
    return Experiment.from_dict(read_experiment_file(path), source=str(path))


def save_experiment(experiment: Experiment, path: str | Path) -> Path:
    """Write the resolved experiment as YAML (atomically); ``load_experiment`` reads it back."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = (
        f"# Resolved Ricordo benchmark experiment, written {stamp}.\n"
        f"# Repeat it with: ricordo benchmark -c {path.name} --output NEW_FOLDER\n"
    )
    body = yaml.safe_dump(experiment.to_dict(), sort_keys=False, default_flow_style=None)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + body, encoding="utf-8")
    os.replace(tmp, path)
    return path


def normalize(data: Mapping[str, Any], *, source: str = "the experiment") -> dict[str, Any]:
    """Keys with ``-`` spelled ``_``, aliases (method, seed) mapped; unknown keys fail."""
    result: dict[str, Any] = {}
    for raw, value in data.items():
        key = _key(raw)
        canonical = ALIASES.get(key, key)
        if canonical in result:
            raise ConfigError(f"{source} sets {canonical} twice (as {raw!r} too); keep one")
        result[canonical] = value
    unknown = sorted(set(result) - set(valid_keys()))
    if unknown:
        raise ConfigError(
            f"{source} has unknown key(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(valid_keys())}"
        )
    return result


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a file) with ``overrides`` (explicit CLI options) on top.

    Dict-valued keys are merged key by key; ``chunks`` and the dataset keys replace each other;
    new ``methods`` drop the file's ``method_options`` of methods no longer run.
    """
    result = dict(base)
    if "methods" in overrides and isinstance(result.get("method_options"), Mapping):
        keep = set(parse_names(overrides["methods"]))
        result["method_options"] = {k: v for k, v in result["method_options"].items() if k in keep}
    if "chunks" in overrides:
        for key in DATASET_KEYS:
            result.pop(key, None)
    if any(key in overrides for key in DATASET_KEYS):
        result.pop("chunks", None)
    for key, value in overrides.items():
        old = result.get(key)
        if key in DICT_KEYS and isinstance(old, Mapping) and isinstance(value, Mapping):
            if key == "method_options":
                merged = {k: dict(v) for k, v in old.items()}
                for name, extra in value.items():
                    merged[name] = {**merged.get(name, {}), **extra}
                result[key] = merged
            else:
                result[key] = {**old, **value}
        else:
            result[key] = value
    return result


def expand_grids(
    methods: Sequence[str],
    options: Mapping[str, Any],
    method_options: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """Methods, shared options and per-method options with every parameter grid expanded.

    A method parameter given several values, as a list (``params: {alpha: [0.1, 1]}``) or
    comma-separated (``--param alpha=0.1,1``), is a grid: the method runs once per value, or
    per combination when several parameters have grids, under the name
    ``der[alpha=0.1]`` / ``der[alpha=0.1,beta=0.5]`` (a ``method_options`` entry with the
    ``method`` key and the scalar values). A grid in the shared ``params`` applies to every
    method; a method's own value for that parameter replaces it. Scalars pass through unchanged,
    so an experiment without grids is returned as is.
    """
    shared = dict(options.get("params") or {})
    shared_grids = {k for k, v in shared.items() if _grid_values(v) is not None}
    result_options = dict(options)
    if shared_grids:  # each method carries its own values from now on
        rest = {k: v for k, v in shared.items() if k not in shared_grids}
        if rest:
            result_options["params"] = rest
        else:
            del result_options["params"]
    names: list[str] = []
    per_method: dict[str, dict[str, Any]] = {}
    for name in methods:
        extra = dict(method_options.get(name, {}))
        own = dict(extra.get("params") or {})
        grids: dict[str, list[Any]] = {}
        for key, value in {**shared, **own}.items():
            values = _grid_values(value)
            if values is not None:
                grids[key] = values
        if not grids:
            names.append(name)
            if name in method_options:
                per_method[name] = extra
            continue
        for combo in itertools.product(*grids.values()):
            chosen = dict(zip(grids, combo, strict=True))
            label = f"{name}[{','.join(f'{k}={_show(v)}' for k, v in chosen.items())}]"
            scalars = {k: v for k, v in own.items() if k not in grids}
            names.append(label)
            per_method[label] = {
                **extra,
                "method": extra.get("method", name),
                "params": {**scalars, **chosen},
            }
    return names, result_options, per_method


def _grid_values(value: Any) -> list[Any] | None:
    """The values of a grid (a list, or a string with commas), or None for a single value."""
    if isinstance(value, str) and "," in value:
        items: Any = [_scalar(item.strip()) for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return None
    if not items:
        raise ConfigError(f"parameter grid {value!r} has no value; e.g. alpha=0.1,0.3,1")
    return items


def _scalar(text: str) -> Any:
    """A grid item typed on the command line: a JSON number or boolean, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _show(value: Any) -> str:
    """A grid value in a run name: text as is, other values as JSON (0.1, 1, true)."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_names(value: Any) -> tuple[str, ...]:
    """Method names from ``"a,b"`` or a list; at least one, no repeats."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"methods must be a list of names such as [finetune, er], got {value!r}")
    names = tuple(i.strip() for i in items if i.strip())
    if not names:
        raise ConfigError(f"methods {value!r} names no method; e.g. methods: [finetune, er]")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"methods lists {', '.join(repeated)} more than once; list each once")
    return names


def parse_seeds(value: Any) -> tuple[int, ...]:
    """Seeds from ``3``, ``"0,1,2"`` or a list; at least one, integers >= 0, no repeats."""
    if isinstance(value, str):
        items: Any = [s.strip() for s in value.split(",") if s.strip()]
        try:
            items = [int(s) for s in items]
        except ValueError:
            raise ConfigError(
                f"seeds {value!r} must be comma-separated integers, e.g. 0,1,2"
            ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        items = value
    ok = isinstance(items, (list, tuple)) and len(items) > 0
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in items)
    if not ok:
        raise ConfigError(f"seeds must be integers >= 0 such as [0, 1, 2], got {value!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"seeds {list(items)} repeat a seed; list each once")
    return tuple(int(s) for s in items)


# ------------------------------------------------------------------------------------- helpers


def _key(raw: Any) -> str:
    return str(raw).strip().replace("-", "_")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_chunks_alone(data: Mapping[str, Any], source: str) -> None:
    if data.get("chunks") is not None:
        clash = [k for k in DATASET_KEYS if data.get(k) is not None]
        if clash:
            raise ConfigError(
                f"{source} sets chunks and {', '.join(clash)}; a chunk folder replaces the "
                "dataset and scenario keys, so keep either chunks or those"
            )


def _path(value: Any) -> str | None:
    """An absolute local path (URLs kept), so workers with another cwd find the same files."""
    if value is None:
        return None
    text = str(value)
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def _config_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """UpdateConfig values from YAML/CLI forms: ``hidden`` "32,16", None meaning the default."""
    result: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:  # every field that may be None defaults to None
            continue
        if key == "hidden":
            value = _hidden(value)
        elif key == "config":
            value = _path(value)
        elif key in ("params", "model_options", "memory_options") and not isinstance(
            value, Mapping
        ):
            raise ConfigError(f"{key} must be a mapping of name: value, got {value!r}")
        result[key] = value
    return result


def _hidden(value: Any) -> tuple[int, ...]:
    try:
        if isinstance(value, str):
            return tuple(int(h) for h in value.split(",") if h.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        return tuple(int(h) for h in value)
    except (TypeError, ValueError):
        raise ConfigError(f"hidden {value!r} must be layer sizes such as [256, 128]") from None


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so YAML's safe dumper accepts the value."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return value
