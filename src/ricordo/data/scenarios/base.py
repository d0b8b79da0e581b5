"""The ``Scenario`` container, the scenario registry, ``make_scenario`` and shared helpers.

A scenario is one registered function ``(train, test, updates, seed, *, data_name, **options)``
that returns a ``Scenario``; its keyword-only parameters are its options, so
``make_scenario`` can check the options a user (or ``--scenario-option k=v``) passes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError, DataError
from ricordo.registry import Registry


@dataclass(frozen=True)
class Scenario:
    """Chunk k is ``train[k]`` (learned at update k) and ``test[k]`` (evaluated after every update).

    ``chunk_classes[k]`` lists the classes chunk k is about: the class group it introduces in
    class-based scenarios (also in ``blurry``, whose train chunks hold a few samples of other
    groups), else the classes present in ``train[k]``. ``task_incremental`` says the chunk index
    is known at test time, so test chunk j may be scored on ``chunk_classes[j]`` only (see
    ``task_mask``). ``info`` is JSON-able provenance (the name, updates, seed, every option with
    its value, and derived values such as the class order) so a run can be described and repeated.
    """

    name: str
    train: list[ArrayDataset]
    test: list[ArrayDataset]
    chunk_classes: list[list[int]]
    info: dict[str, Any] = field(default_factory=dict)
    task_incremental: bool = False

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError(f"scenario {self.name!r} has no chunks; it needs at least one")
        if not len(self.train) == len(self.test) == len(self.chunk_classes):
            raise DataError(
                f"scenario {self.name!r} has {len(self.train)} train chunks, {len(self.test)} "
                f"test chunks and {len(self.chunk_classes)} class lists; they must match"
            )

    def __len__(self) -> int:
        return len(self.train)

    @property
    def updates(self) -> int:
        """Number of chunks, i.e. model updates the scenario drives."""
        return len(self.train)

    def test_all(self) -> ArrayDataset:
        """All test chunks in one dataset, for a single overall accuracy."""
        return ArrayDataset.concat(self.test)


class ScenarioFn(Protocol):
    """The signature every registered scenario implements (plus its own keyword options)."""

    def __call__(
        self,
        train: ArrayDataset,
        test: ArrayDataset,
        updates: int,
        seed: int,
        *,
        data_name: str = ...,
        **options: Any,
    ) -> Scenario: ...


SCENARIOS: Registry[ScenarioFn] = Registry("scenario")


def scenario_options(name: str) -> dict[str, Any]:
    """The options of scenario ``name`` with their defaults, e.g. for help texts."""
    params = inspect.signature(SCENARIOS.get(name)).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "data_name"
    }


def make_scenario(
    name: str,
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    options: dict[str, Any] | None = None,
) -> Scenario:
    """Build the registered scenario ``name``; unknown names or options list the valid ones.

    Option keys may use ``-`` for ``_`` (as typed on the command line).
    """
    fn = SCENARIOS.get(name)
    given = {str(k).strip().replace("-", "_"): v for k, v in (options or {}).items()}
    valid = scenario_options(name)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(
            f"scenario {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(valid)) or '(none)'}"
        )
    return fn(train, test, updates, seed, data_name=data_name, **given)


def task_mask(scenario: Scenario, chunk: int, num_outputs: int) -> torch.Tensor:
    """Bool mask (num_outputs,): True on the output units of ``scenario.chunk_classes[chunk]``.

    Task-incremental evaluation of test chunk j sets the other logits to -inf (``mask_logits``)
    before the argmax. Classes the model has no output for yet are left out.
    """
    if not 0 <= chunk < len(scenario):
        raise ConfigError(f"chunk {chunk} is out of range; the scenario has {len(scenario)}")
    mask = torch.zeros(int(num_outputs), dtype=torch.bool)
    known = [c for c in scenario.chunk_classes[chunk] if 0 <= c < num_outputs]
    mask[known] = True
    return mask


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with the units outside ``mask`` set to -inf (a fully masked row stays wrong)."""
    return logits.masked_fill(~mask.to(logits.device), float("-inf"))


# ------------------------------------------------------------------------------ shared helpers


def is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_args(updates: int, seed: int) -> None:
    """Reject parameters every scenario shares before any work is done."""
    if not is_int(updates) or updates < 1:
        raise ConfigError(f"updates must be an integer >= 1, got {updates!r}")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"option {name} must be true or false, got {value!r}")
    return bool(value)


def check_fraction(name: str, value: Any, *, upper_open: bool = False) -> float:
    """A number in [0, 1] (or [0, 1) with ``upper_open``)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    if not (0.0 <= v < 1.0 if upper_open else 0.0 <= v <= 1.0):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ConfigError(f"option {name} must be a number in {bound}, got {value!r}")
    return v


def check_numbers(name: str, value: Any, updates: int) -> list[float] | None:
    """``None``, or one finite number per update."""
    if value is None:
        return None
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    nums = list(value) if ok else []
    ok = ok and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        for v in nums
    )
    if not ok or not all(np.isfinite(float(v)) for v in nums):
        raise ConfigError(f"option {name} must be a list of numbers, got {value!r}")
    if len(nums) != updates:
        raise ConfigError(
            f"option {name} has {len(nums)} values but there are {updates} updates; "
            "give one per update"
        )
    return [float(v) for v in nums]


def too_many_updates(scenario: str, updates: int, limit: int, what: str, data_name: str) -> None:
    if updates > limit:
        raise ConfigError(
            f"{scenario} with {updates} updates needs at least {updates} {what}; "
            f"{data_name} has {limit}"
        )


def check_test_classes(train: ArrayDataset, test: ArrayDataset, data_name: str) -> list[int]:
    """The training classes; refuse test classes the model can never learn."""
    classes = train.classes()
    unknown = sorted(set(test.classes()) - set(classes))
    if unknown:
        raise DataError(
            f"the test set of {data_name} has classes {unknown} that its training set lacks; "
            "drop those test samples or add training samples for them"
        )
    return classes


def take_classes(data: ArrayDataset, classes: list[int]) -> ArrayDataset:
    """Samples of ``data`` whose label is in ``classes``, in their original order."""
    keep = torch.isin(data.y, torch.as_tensor(classes, dtype=data.y.dtype, device=data.y.device))
    return data.subset(torch.nonzero(keep, as_tuple=True)[0])


def rng(seed: int, stream: int = 0) -> np.random.Generator:
    """Independent generator number ``stream`` of ``seed`` (e.g. one for train, one for test)."""
    return np.random.default_rng([int(seed), int(stream)])


def random_parts(n: int, parts: int, generator: np.random.Generator) -> list[torch.Tensor]:
    """``parts`` disjoint random index sets covering 0..n-1, sizes within one, each sorted."""
    order = generator.permutation(n)
    return [torch.from_numpy(np.sort(p)).long() for p in np.array_split(order, parts)]


def with_x(data: ArrayDataset, x: torch.Tensor) -> ArrayDataset:
    """``data`` with new features (same labels and groups)."""
    return ArrayDataset(x, data.y, data.group)


def info(name: str, updates: int, seed: int, options: dict[str, Any], **derived: Any) -> dict:
    """The JSON-able provenance every scenario records."""
    return {
        "scenario": name,
        "updates": int(updates),
        "seed": int(seed),
        "options": options,
        **derived,
    }
