"""Tuning without test sets: `ricordo benchmark --validation F` and parameter grids.

The validation mode holds out, in every training chunk, F of the rows of each of the chunk's
classes and evaluates on them instead of the test sets; a parameter with several values expands
into one run per value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ricordo.bench.experiment import Experiment, ScenarioSpec, load_experiment
from ricordo.bench.sweep import validate_configs
from ricordo.bench.validation import split_chunk, split_chunks, split_seed
from ricordo.data import ArrayDataset, export_scenario, load_builtin, make_scenario
from ricordo.errors import ConfigError, DataError

TINY_CLI = ("--epochs", "1", "--hidden", "16", "--lr", "0.1", "--threads", "1", "--no-progress")


def _rows(data: ArrayDataset) -> list[bytes]:
    """Each row (features and label) as bytes, to compare row sets across datasets."""
    x = data.x.reshape(len(data), -1).numpy()
    return [x[i].tobytes() + int(data.y[i]).to_bytes(8, "little") for i in range(len(data))]


def _indexed(counts: dict[int, int]) -> ArrayDataset:
    """A dataset whose single feature is the row index: ``counts[c]`` rows of class c,
    classes interleaved so that a split must find each class's rows."""
    labels = [c for c, n in counts.items() for _ in range(n)]
    y = torch.tensor(labels)[
        torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    ]
    return ArrayDataset(torch.arange(len(y), dtype=torch.float32).unsqueeze(1), y)


@pytest.fixture(scope="module")
def digits_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits, class-incremental, 2 updates, exported with scenario.json."""
    train, test = load_builtin("digits")
    folder = tmp_path_factory.mktemp("chunks")
    export_scenario(make_scenario("class-incremental", train, test, updates=2, seed=0), folder)
    return folder


# ------------------------------------------------------------------------------ the split itself


def test_split_is_stratified_disjoint_and_covers_the_chunk() -> None:
    # Classes 0-2 are the chunk's own; class 3 stands for a blurry chunk's rows of other groups.
    chunk = _indexed({0: 10, 1: 20, 2: 5, 3: 4})
    train, held = split_chunk(chunk, [0, 1, 2], 0.2, seed=7)
    train_ids = {int(v) for v in train.x[:, 0]}
    held_ids = {int(v) for v in held.x[:, 0]}
    assert not train_ids & held_ids
    assert train_ids | held_ids == set(range(len(chunk)))
    # round(n * 0.2) rows of each own class, none of class 3 (it all stays in training).
    held_counts = {c: int((held.y == c).sum()) for c in range(4)}
    assert held_counts == {0: 2, 1: 4, 2: 1, 3: 0}
    # Rows keep their order and labels: row i of each part is the original row with its label.
    for part in (train, held):
        ids = part.x[:, 0].long()
        assert torch.equal(part.y, chunk.y[ids]) and bool((ids.diff() > 0).all())


def test_split_is_deterministic_per_seed_and_chunk() -> None:
    chunk = _indexed({0: 50, 1: 50})

    def held(seed: int) -> list[int]:
        return sorted(int(v) for v in split_chunk(chunk, [0, 1], 0.2, seed)[1].x[:, 0])

    assert held(split_seed(0, 0)) == held(split_seed(0, 0))
    assert held(split_seed(0, 0)) != held(split_seed(1, 0))
    assert held(split_seed(0, 0)) != held(split_seed(0, 1))  # each chunk draws its own rows


def test_a_chunk_too_small_to_hold_out_a_row_fails_in_one_line() -> None:
    tiny = _indexed({0: 2, 1: 2})  # round(2 * 0.2) = 0 rows of each class
    with pytest.raises(DataError, match=r"holds out no row of training chunk 1 \(4 rows"):
        split_chunks([_indexed({0: 10}), tiny], [[0], [0, 1]], 0.2, seed=0)


@pytest.mark.parametrize("bad", [0, 0.0, 0.6, 1, -0.2, True, "0.2", float("nan")])
def test_the_fraction_must_be_in_zero_to_one_half(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"must be a fraction in \(0, 0.5\]"):
        ScenarioSpec(validation=bad)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- built-in datasets


def test_builtin_scenario_evaluates_on_rows_held_out_from_training() -> None:
    base = ScenarioSpec(updates=2).build(3)
    spec = ScenarioSpec(updates=2, validation=0.25)
    scenario = spec.build(3)
    assert scenario.chunk_classes == base.chunk_classes
    assert scenario.info["validation"]["fraction"] == 0.25
    assert scenario.info["validation"]["seed"] == 3
    test_rows = {row for chunk in base.test for row in _rows(chunk)}
    for k in range(2):
        trained, held, original = (
            _rows(scenario.train[k]),
            _rows(scenario.test[k]),
            _rows(base.train[k]),
        )
        # Train and held-out rows partition the original training chunk (as multisets).
        assert sorted(trained + held) == sorted(original)
        assert not set(held) & set(trained)
        assert not set(held) & test_rows  # nothing evaluated comes from a test set
        for c in base.chunk_classes[k]:
            n = int((base.train[k].y == c).sum())
            assert int((scenario.test[k].y == c).sum()) == round(n * 0.25)
    # Deterministic per seed; another run seed draws other rows (and another class order).
    again = spec.build(3)
    assert all(torch.equal(a.x, b.x) for a, b in zip(scenario.test, again.test, strict=True))
    fixed = ScenarioSpec(updates=2, validation=0.25, scenario_seed=3)
    assert torch.equal(fixed.build(0).test[0].x, scenario.test[0].x)  # the scenario seed rules
    assert not torch.equal(spec.build(4).test[0].x, scenario.test[0].x)


def test_cli_validation_run_records_held_out_sizes_never_test_numbers(tmp_path: Path, cli) -> None:
    out = tmp_path / "out"
    args = ("benchmark", "--method", "er", "--memory-size", "30", "--updates", "2")
    result = cli(*args, "--seed", "1", *TINY_CLI, "--validation", "0.2", "--output", out)
    assert result.code == 0, result.describe()
    assert "Validation split: evaluated on 20 % of each training chunk" in result.out
    results = json.loads((out / "results.json").read_text())
    scenario = ScenarioSpec(updates=2, validation=0.2).build(1)
    base = ScenarioSpec(updates=2).build(1)
    assert results["evaluated_on"] == "validation"
    assert results["test_sizes"] == [len(chunk) for chunk in scenario.test]
    assert results["test_sizes"] != [len(chunk) for chunk in base.test]
    assert results["scenario"]["validation"]["train_sizes"] == [len(c) for c in scenario.train]
    assert results["experiment"]["validation"] == 0.2
    # experiment.yaml repeats the validation run.
    assert load_experiment(out / "experiment.yaml").spec.validation == 0.2
    # Without --validation the same run is evaluated on the test sets.
    plain = tmp_path / "plain"
    assert cli(*args, "--seed", "1", *TINY_CLI, "--output", plain).code == 0
    assert json.loads((plain / "results.json").read_text())["evaluated_on"] == "test"


@pytest.mark.parametrize("value", ["0.7", "0"])
def test_cli_rejects_a_bad_fraction_in_one_line(tmp_path: Path, cli, value: str) -> None:
    out = tmp_path / "out"
    result = cli("benchmark", "--method", "er", "--validation", value, "--output", out)
    assert result.code == 1, result.describe()
    assert result.err.strip().splitlines() == [
        f"ricordo: error: validation={float(value)!r} (CLI: --validation) must be a fraction "
        "in (0, 0.5]: the share of each training chunk held out for evaluation, e.g. 0.2"
    ]
    assert not out.exists()


# ------------------------------------------------------------------------------ chunk folders


def test_chunk_folder_with_broken_or_missing_test_chunks_runs_in_validation_mode(
    digits_chunks: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_tests = tmp_path / "nan"
    no_tests = tmp_path / "none"
    for folder in (nan_tests, no_tests):
        folder.mkdir()
        for path in digits_chunks.iterdir():
            if path.name.startswith("train-") or path.name == "scenario.json":
                (folder / path.name).write_bytes(path.read_bytes())
    for k in range(2):  # test chunks full of NaN: reading them fails, evaluating them too
        with np.load(digits_chunks / f"test-{k}.npz") as data:
            x = np.full_like(data["x"], np.nan)
            np.savez(nan_tests / f"test-{k}.npz", x=x, y=data["y"])
    common = ("benchmark", "--method", "er", "--memory-size", "30", "--seed", "0", *TINY_CLI)
    # Without --validation both folders are refused: the test chunks are needed and broken.
    refused = cli(*common, "--chunks", nan_tests, "--output", tmp_path / "r1")
    assert refused.code == 1 and "NaN or infinite features" in refused.err
    refused = cli(*common, "--chunks", no_tests, "--output", tmp_path / "r2")
    assert refused.code == 1 and "every train-K.npz needs a test-K.npz" in refused.err

    import ricordo.bench.chunks as chunks_module

    opened: list[str] = []
    real_load = chunks_module.load_data

    def recording_load(path: Path, **kwargs: object) -> ArrayDataset:
        opened.append(Path(path).name)
        return real_load(path, **kwargs)

    monkeypatch.setattr(chunks_module, "load_data", recording_load)
    for folder in (nan_tests, no_tests):
        out = tmp_path / f"out-{folder.name}"
        result = cli(*common, "--chunks", folder, "--validation", "0.2", "--output", out)
        assert result.code == 0, result.describe()
        results = json.loads((out / "results.json").read_text())
        assert results["evaluated_on"] == "validation"
        matrix = np.array(results["accuracy_matrix"])
        assert matrix.shape == (2, 2) and matrix[-1, -1] > 0  # the new chunk was scored
        trains = [np.load(folder / f"train-{k}.npz")["y"] for k in range(2)]
        sizes = [sum(round(int((y == c).sum()) * 0.2) for c in np.unique(y)) for y in trains]
        assert results["test_sizes"] == sizes
    assert opened and all(name.startswith("train-") for name in opened)


# ------------------------------------------------------------------------------------- grids


def test_a_parameter_grid_expands_into_named_runs() -> None:
    experiment = Experiment.from_dict(
        {
            "methods": ["der", "er"],
            "params": {"memory_batch_size": "8,16"},  # shared grid: every method
            "method_options": {"der": {"params": {"alpha": [0.1, 1]}}},
        }
    )
    assert experiment.methods == (
        "der[memory_batch_size=8,alpha=0.1]",
        "der[memory_batch_size=8,alpha=1]",
        "der[memory_batch_size=16,alpha=0.1]",
        "der[memory_batch_size=16,alpha=1]",
        "er[memory_batch_size=8]",
        "er[memory_batch_size=16]",
    )
    configs = experiment.configs()
    assert configs["der[memory_batch_size=16,alpha=0.1]"].method == "der"
    assert configs["der[memory_batch_size=16,alpha=0.1]"].params == {
        "memory_batch_size": 16,
        "alpha": 0.1,
    }
    assert configs["er[memory_batch_size=8]"].params == {"memory_batch_size": 8}
    assert "params" not in experiment.options
    # A method's own scalar replaces a shared grid; the resolved form keeps the expanded runs.
    own = Experiment.from_dict(
        {
            "methods": ["der", "er"],
            "params": {"memory_batch_size": [8, 16]},
            "method_options": {"er": {"params": {"memory_batch_size": 4}}},
        }
    )
    assert own.methods == ("der[memory_batch_size=8]", "der[memory_batch_size=16]", "er")
    again = Experiment.from_dict(own.to_dict())
    assert again.methods == own.methods and again.configs() == own.configs()


def test_grid_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"lists der\[alpha=0.1\] more than once"):
        Experiment.from_dict({"methods": ["der"], "params": {"alpha": "0.1,0.1"}})
    with pytest.raises(ConfigError, match="has no value"):
        Experiment.from_dict({"methods": ["der"], "params": {"alpha": []}})
    # A grid of a parameter the method lacks fails before any run, as a single value does.
    experiment = Experiment.from_dict({"methods": ["er"], "params": {"alpha": [0.1, 1]}})
    with pytest.raises(ConfigError, match=r"method 'er' has no parameter\(s\) \['alpha'\]"):
        validate_configs(experiment.configs())


def test_cli_param_grid_runs_each_value_on_the_validation_split(tmp_path: Path, cli) -> None:
    out = tmp_path / "grid"
    result = cli(
        "benchmark", "--method", "der", "--param", "alpha=0.1,1", "--memory-size", "30",
        "--updates", "2", "--seed", "0", *TINY_CLI, "--validation", "0.2", "--output", out,
    )  # fmt: skip
    assert result.code == 0, result.describe()
    # The terminal table shows the names whole (brackets are not markup to strip).
    assert "│ der[alpha=0.1] " in result.out and "│ der[alpha=1] " in result.out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["der[alpha=0.1]", "der[alpha=1]"]
    assert summary["failed"] == []
    runs = {
        name: json.loads((out / name / "results.json").read_text())
        for name in ("der[alpha=0.1]", "der[alpha=1]")
    }
    assert runs["der[alpha=0.1]"]["config"]["params"]["alpha"] == 0.1
    assert runs["der[alpha=1]"]["config"]["params"]["alpha"] == 1
    assert all(r["evaluated_on"] == "validation" for r in runs.values())
    # Different alphas train differently (the grid is not the same run twice).
    assert runs["der[alpha=0.1]"]["accuracy_matrix"] != runs["der[alpha=1]"]["accuracy_matrix"]
    assert "Validation split" in (out / "summary.md").read_text()
    experiment = yaml.safe_load((out / "experiment.yaml").read_text())
    assert experiment["methods"] == ["der[alpha=0.1]", "der[alpha=1]"]
    assert experiment["validation"] == 0.2


def test_yaml_grid_and_validation_keys(tmp_path: Path) -> None:
    path = tmp_path / "tune.yaml"
    path.write_text(
        "methods: [der]\nvalidation: 0.3\nupdates: 2\n"
        "method_options: {der: {params: {alpha: [0.3, 1]}}}\n"
    )
    experiment = load_experiment(path)
    assert experiment.spec.validation == 0.3
    assert experiment.methods == ("der[alpha=0.3]", "der[alpha=1]")
    path.write_text("methods: [der]\nvalidation: 0.9\n")
    with pytest.raises(ConfigError, match=r"validation=0.9 \(CLI: --validation\)"):
        load_experiment(path)
