"""The search space (parsing, validation, Ray domains) and the objective's split (no Ray run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ricordo.data import Scenario
from ricordo.errors import ConfigError, RicordoError
from ricordo.memory import TensorMemory
from ricordo.tune import load_space, score, split_for_tuning, warm_start_points
from ricordo.updater import Updater


def test_yaml_space_parses_every_domain(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr: {loguniform: [0.001, 0.3]}\n"
        "momentum: {uniform: [0.0, 0.95]}\n"
        "batch_size: {choice: [16, 32]}\n"
        "params:\n  memory_batch_size: {randint: [8, 65]}\n"
        "weight_decay: 0.0001\n"
    )
    space = load_space(path, method="er")
    assert space.names == ["lr", "momentum", "batch_size", "params.memory_batch_size"]
    assert space.fixed == {"weight_decay": 0.0001}
    domains = space.to_ray()
    assert domains["lr"].lower == 0.001 and domains["lr"].upper == 0.3
    assert domains["batch_size"].categories == [16, 32]
    assert (
        domains["params.memory_batch_size"].lower,
        domains["params.memory_batch_size"].upper,
    ) == (
        8,
        65,
    )
    sample = {"lr": 0.01, "momentum": 0.5, "batch_size": 16, "params.memory_batch_size": 9}
    assert space.overrides(sample) == {
        "weight_decay": 0.0001,
        "lr": 0.01,
        "momentum": 0.5,
        "batch_size": 16,
        "params": {"memory_batch_size": 9},
    }


def test_grid_needs_choices() -> None:
    space = load_space({"lr": {"choice": [0.01, 0.1]}, "momentum": {"choice": [0, 0.9]}})
    assert space.to_ray(grid=True)["lr"] == {"grid_search": [0.01, 0.1]}
    assert space.grid_size() == 4
    with pytest.raises(ConfigError, match="--scheduler grid needs a list of values .* lr is"):
        load_space({"lr": {"loguniform": [0.01, 0.1]}}).to_ray(grid=True)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"epochs": {"choice": [1, 2]}}, "epochs is the tuning resource"),
        ({"lrr": {"uniform": [0.1, 0.2]}}, r"'lrr' cannot be searched; searchable options: lr, "),
        ({"memory_size": {"choice": [10, 20]}}, "'memory_size' cannot be searched"),
        ({"params.nope": {"choice": [1]}}, "has no parameter\\(s\\) \\['nope'\\]; its parameters"),
        ({"lr": {"loguniform": [0.0, 0.1]}}, "loguniform needs low > 0"),
        ({"lr": {"uniform": [0.2, 0.1]}}, "uniform needs finite numbers low < high"),
        ({"momentum": {"uniform": [0.0, 1.5]}}, "momentum: --momentum 1.5 is invalid"),
        ({"batch_size": {"randint": [0, 4]}}, "batch_size: --batch-size 0 is invalid"),
        ({"batch_size": {"randint": [1.5, 4]}}, "randint needs integers low < high"),
        ({"lr": {"normal": [0, 1]}}, "must be a plain value or one of"),
        ({"lr": 0.1}, "fixes every option and searches none"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_spaces_are_refused_in_one_line(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_space(space, method="er")
    assert "\n" not in str(error.value)


def test_unknown_name_lists_the_method_parameters() -> None:
    with pytest.raises(ConfigError) as error:
        load_space({"alpha": {"uniform": [0.1, 1.0]}}, method="der")
    assert "params.alpha" in str(error.value)


def test_missing_space_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "none.yaml")


def test_memory_without_rows_is_a_smaller_reservoir() -> None:
    memory = TensorMemory(10, "reservoir", seed=1)
    memory.add({"x": torch.arange(30.0).reshape(30, 1), "y": torch.arange(30)})
    smaller = memory.without(torch.tensor([0, 5]))
    assert (smaller.capacity, len(smaller), smaller.seen) == (8, 8, 30)
    kept = memory.get()["y"].tolist()
    del kept[5], kept[0]
    assert smaller.get()["y"].tolist() == kept
    assert torch.equal(smaller.generator.get_state(), memory.generator.get_state())
    filling = TensorMemory(10, "reservoir", seed=1)
    filling.add({"x": torch.zeros(6, 1), "y": torch.arange(6)})
    part = filling.without(torch.tensor([1]))
    assert (part.capacity, len(part), part.seen) == (9, 5, 5)
    part.add({"x": torch.ones(4, 1), "y": torch.arange(4) + 10})  # fills slots 5..8
    assert part.get()["y"].tolist() == [0, 2, 3, 4, 5, 10, 11, 12, 13]


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r.flatten().tolist()) for r in x}


def test_split_holds_out_chunk_and_memory_rows(digits_scenario: Scenario) -> None:
    updater = Updater(method="er", memory_size=50, epochs=1, progress=False, threads=1)
    updater.update(digits_scenario.train[0])
    chunk = digits_scenario.train[1]
    split = split_for_tuning(chunk, updater.memory, holdout=0.2, seed=0)
    assert len(split.new) == round(0.2 * len(chunk)) and len(split.train) + len(split.new) == len(
        chunk
    )
    rows = _rows(split.train.x)
    assert not rows & _rows(split.new.x)
    assert split.memory is not None and split.trial_memory is not None
    assert len(split.memory) == 10 and len(split.trial_memory) == 40
    held = _rows(split.memory.x)
    assert held <= _rows(updater.memory.get()["x"])
    # The trial trains with the smaller memory: the held-out rows never enter it.
    updater.method.memory = split.trial_memory
    updater.update(split.train, epochs=2)
    assert not held & _rows(updater.memory.get()["x"])
    # Same seed, same split (every trial is scored on the same rows).
    again = split_for_tuning(chunk, None, seed=0)
    assert torch.equal(again.new.x, split.new.x)


def test_score_evaluates_only_the_held_out_rows(digits_scenario: Scenario) -> None:
    updater = Updater(method="er", memory_size=50, epochs=1, progress=False, threads=1)
    updater.update(digits_scenario.train[0])
    split = split_for_tuning(digits_scenario.train[1], updater.memory, seed=0)
    seen: list[object] = []

    def evaluate(data: object) -> dict[str, float]:
        seen.append(data)
        return {"accuracy": 1.0 if data is split.new else 0.5}

    metrics = score(evaluate, split)
    assert seen == [split.new, split.memory]  # nothing else: no test set, no training rows
    n_new, n_old = len(split.new), len(split.memory or [])
    assert metrics["accuracy"] == pytest.approx((n_new + 0.5 * n_old) / (n_new + n_old))
    assert (metrics["accuracy_new"], metrics["accuracy_memory"]) == (1.0, 0.5)


def test_warm_start_points_most_recent_first() -> None:
    space = load_space({"lr": {"uniform": [0.01, 0.2]}, "momentum": {"choice": [0.0, 0.9]}})
    history = [
        {"tune": {"best": {"config": {"lr": 0.05, "momentum": 0.0, "batch_size": 8}}}},
        {"update": 1},
        {"tune": {"best": {"config": {"lr": 0.1, "momentum": 0.9}}}},
        {"tune": {"best": {"config": {"lr": 0.05, "momentum": 0.0}}}},
    ]
    assert warm_start_points(history, space) == [
        {"lr": 0.05, "momentum": 0.0},
        {"lr": 0.1, "momentum": 0.9},
    ]


def test_missing_ray_is_one_line_with_the_extra(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from ricordo.tune import tune

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ConfigError, match=r'not installed; pip install "ricordo\[hpo\]"'):
        tune(digits_scenario.train[0], space={"lr": {"uniform": [0.01, 0.1]}}, trials=1)


def test_fixed_options_are_checked_before_any_trial(
    digits_scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before the search: with Ray hidden, reaching it would raise another error."""
    import sys

    from ricordo.tune import tune

    monkeypatch.setitem(sys.modules, "ray", None)
    updater = Updater(method="er", memory_size=20, epochs=1, progress=False, threads=1)
    updater.update(digits_scenario.train[0])
    updater.save(str(tmp_path / "v0"))
    space = {"lr": {"uniform": [0.01, 0.1]}}
    state = str(tmp_path / "v0")
    chunk = digits_scenario.train[1]
    with pytest.raises(ConfigError, match=r"\['memory_size'\] are fixed for this lineage"):
        tune(chunk, space=space, state=state, memory_size=10)
    with pytest.raises(ConfigError, match="--momentum 2 is invalid"):
        tune(chunk, space=space, state=state, momentum=2)
    with pytest.raises(ConfigError, match=r"has no parameter\(s\) \['alpha'\]"):
        tune(chunk, space=space, state=state, params={"alpha": 1})
    with pytest.raises(ConfigError, match="--scheduler 'hyperband' is unknown"):
        tune(chunk, space=space, state=state, scheduler="hyperband")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(RicordoError, match="taken"):
        tune(chunk, space=space, state=state, next_state=str(tmp_path / "taken"))
