"""The search space of a tuning job: which options vary, over what, and how Ray Tune samples them.

A space is a mapping (a YAML file or a Python dict) from an option to a domain or a fixed value::

    lr: {loguniform: [0.001, 0.3]}       # log-uniform between the bounds
    momentum: {uniform: [0.0, 0.95]}      # uniform between the bounds
    batch_size: {choice: [16, 32, 64]}    # one of the values
    params.memory_batch_size: {randint: [8, 65]}   # an integer in [8, 65) (high excluded)
    weight_decay: 0.0                     # a plain value: fixed for every trial

Options are the training fields of an update that may change from one update to the next
(:data:`SEARCHABLE`) and the method's parameters as ``params.NAME`` (or nested under ``params:``).
``epochs`` is the tuning resource (``--max-epochs``), never a searched value. Every bound and
choice is checked against the option's own validation before any trial runs.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError

DOMAINS = ("choice", "uniform", "loguniform", "randint")
# UpdateConfig fields a tuning job may vary: how an update trains, not what the lineage is.
SEARCHABLE = (
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "optimizer",
    "memory_insert",
    "mask_unseen",
    "augment",
)
PARAMS_PREFIX = "params."


@dataclass(frozen=True)
class Dimension:
    """One searched option: its domain kind and arguments (bounds or choices)."""

    name: str
    kind: str
    values: tuple[Any, ...]

    def to_ray(self, grid: bool) -> Any:
        """The Ray Tune domain (``tune.grid_search`` of the choices for grid search)."""
        from ray import tune

        if grid:
            if self.kind != "choice":
                raise ConfigError(
                    f"--scheduler grid needs a list of values for every searched option, but "
                    f"{self.name} is {self.kind} {list(self.values)}; write it as "
                    f"{{choice: [...]}} or use --scheduler random, asha or pasha"
                )
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        return tune.randint(*self.values)

    def describe(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class SearchSpace:
    """Searched dimensions and fixed values, validated for one method (see module docstring)."""

    dimensions: dict[str, Dimension]
    fixed: dict[str, Any]

    @property
    def names(self) -> list[str]:
        """The searched options, in the order given."""
        return list(self.dimensions)

    def to_ray(self, grid: bool = False) -> dict[str, Any]:
        """Ray Tune's ``param_space``: the searched options (flat names) as Ray domains."""
        return {name: dim.to_ray(grid) for name, dim in self.dimensions.items()}

    def grid_size(self) -> int:
        """How many configurations a grid search over the space has."""
        return math.prod(len(d.values) for d in self.dimensions.values())

    def overrides(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``Updater.update`` overrides of one trial: the fixed values and the sampled ones, the
        method parameters gathered under ``params``."""
        values = {**self.fixed, **{k: _plain(v) for k, v in sample.items() if k in self.dimensions}}
        options: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for name, value in values.items():
            if name.startswith(PARAMS_PREFIX):
                params[name.removeprefix(PARAMS_PREFIX)] = value
            else:
                options[name] = value
        if params:
            options["params"] = params
        return options

    def describe(self) -> dict[str, Any]:
        """JSON-able: the space as given (recorded in the state's history)."""
        return {**{k: d.describe() for k, d in self.dimensions.items()}, **self.fixed}


def load_space(
    source: Mapping[str, Any] | str | os.PathLike[str], *, method: str = "er"
) -> SearchSpace:
    """Parse and validate a space for ``method``: a dict, or a YAML/JSON file's path."""
    if isinstance(source, (str, os.PathLike)):
        source = _read_file(Path(source))
    if not isinstance(source, Mapping) or not source:
        raise ConfigError(
            "the search space must be a non-empty mapping of option -> domain, e.g. "
            "{lr: {loguniform: [0.001, 0.3]}}"
        )
    from ricordo.methods import METHODS

    method_cls = METHODS.get(method)
    base = UpdateConfig(method=method)
    dimensions: dict[str, Dimension] = {}
    fixed: dict[str, Any] = {}
    for name, spec in _flatten(source).items():
        check = _checker(name, method_cls, base)
        if isinstance(spec, Mapping):
            dimension = _dimension(name, spec)
            for value in _probe_values(dimension):
                check(value)
            dimensions[name] = dimension
        else:
            check(spec)
            fixed[name] = spec
    if not dimensions:
        raise ConfigError(
            "the search space fixes every option and searches none; give at least one a domain, "
            "e.g. lr: {loguniform: [0.001, 0.3]}"
        )
    return SearchSpace(dimensions, fixed)


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist; pass a YAML file")
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"search space file {path} is not valid YAML{where}") from None


def _flatten(source: Mapping[str, Any]) -> dict[str, Any]:
    """``params: {alpha: ...}`` becomes ``params.alpha``; names are strings, ``-`` as ``_``."""
    flat: dict[str, Any] = {}
    for key, value in source.items():
        name = str(key).replace("-", "_")
        if name == "params" and isinstance(value, Mapping):
            for inner, spec in value.items():
                flat[PARAMS_PREFIX + str(inner).replace("-", "_")] = spec
        else:
            flat[name] = value
    return flat


def _checker(name: str, method_cls: Any, base: UpdateConfig) -> Any:
    """A function that raises ConfigError for a value ``name`` cannot take."""
    from ricordo.methods import parse_params

    if name.startswith(PARAMS_PREFIX):
        param = name.removeprefix(PARAMS_PREFIX)

        def check_param(value: Any) -> None:
            try:
                parse_params(method_cls, {param: value})
            except ConfigError as error:
                raise ConfigError(f"search space: {name}: {error}") from None

        return check_param
    if name == "epochs":
        raise ConfigError(
            "search space: epochs is the tuning resource, set by --max-epochs (Python: "
            "max_epochs=); drop it from the space"
        )
    if name not in SEARCHABLE:
        params = ", ".join(PARAMS_PREFIX + p for p in _param_names(method_cls)) or "none"
        raise ConfigError(
            f"search space: {name!r} cannot be searched; searchable options: "
            f"{', '.join(SEARCHABLE)}; method {method_cls.name!r} parameters: {params}"
        )

    def check_option(value: Any) -> None:
        try:
            base.replace(**{name: value})
        except ConfigError as error:
            raise ConfigError(f"search space: {name}: {error}") from None

    return check_option


def _param_names(method_cls: Any) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(method_cls.Params)]


def _dimension(name: str, spec: Mapping[str, Any]) -> Dimension:
    if len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        raise ConfigError(
            f"search space: {name} must be a plain value or one of {{choice: [...]}}, "
            f"{{uniform: [low, high]}}, {{loguniform: [low, high]}}, {{randint: [low, high]}}; "
            f"got {dict(spec)!r}"
        )
    kind, args = next(iter(spec.items()))
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"search space: {name}: {kind} needs a list, got {args!r}")
    values = tuple(args)
    if kind == "choice":
        return Dimension(name, kind, values)
    if len(values) != 2:
        raise ConfigError(f"search space: {name}: {kind} needs [low, high], got {list(values)}")
    low, high = values
    if kind == "randint":
        if not all(_is_int(v) for v in values) or not low < high:
            raise ConfigError(
                f"search space: {name}: randint needs integers low < high (high excluded), "
                f"got {list(values)}"
            )
        return Dimension(name, kind, (int(low), int(high)))
    if not all(_is_real(v) for v in values) or not low < high:
        raise ConfigError(
            f"search space: {name}: {kind} needs finite numbers low < high, got {list(values)}"
        )
    if kind == "loguniform" and low <= 0:
        raise ConfigError(
            f"search space: {name}: loguniform needs low > 0, got {list(values)}; use uniform "
            "for a range that includes 0"
        )
    return Dimension(name, kind, (float(low), float(high)))


def _probe_values(dimension: Dimension) -> tuple[Any, ...]:
    """Values whose validity stands for the domain's: every choice, both bounds otherwise
    (randint's high is excluded, so its largest value is high - 1)."""
    if dimension.kind == "randint":
        low, high = dimension.values
        return (low, high - 1)
    return dimension.values


def _plain(value: Any) -> Any:
    """A numpy scalar from Ray's samplers as a Python number (JSON, UpdateConfig)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (list, dict)) else value


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
