"""YAML experiment files: validation, CLI overrides, and exact repeats from experiment.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ricordo import __version__
from ricordo.bench import Experiment, ScenarioSpec, load_experiment, save_experiment
from ricordo.bench.experiment import merge, read_experiment_file
from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError

EXP = """\
dataset: digits
scenario: class-incremental
scenario-options: {class_order: [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]}
updates: 2
method: er
seed: 3
memory_size: 40
hidden: 16
epochs: 1
threads: 1
progress: false
"""


def test_yaml_round_trip_reproduces_the_numbers(tmp_path: Path, cli) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP)
    first = cli("benchmark", "-c", exp, "--output", tmp_path / "one")
    assert first.code == 0, first.describe()
    assert {p.name for p in (tmp_path / "one").iterdir()} == {"results.json", "experiment.yaml"}
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["library_version"] == __version__
    assert results["config"]["seed"] == 3 and results["config"]["memory_size"] == 40
    assert results["scenario"]["chunk_classes"] == [[9, 8, 7, 6, 5], [4, 3, 2, 1, 0]]
    recorded = results["experiment"]
    assert recorded["seeds"] == [3] and recorded["methods"] == ["er"]
    assert recorded["scenario_options"] == {"class_order": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]}
    assert results["run"] == {"run": "er", "name": "er", "method": "er", "seed": 3}

    again = cli(
        "benchmark", "-c", tmp_path / "one" / "experiment.yaml", "--output", tmp_path / "two"
    )
    assert again.code == 0, again.describe()
    repeat = json.loads((tmp_path / "two" / "results.json").read_text())
    assert repeat["accuracy_matrix"] == results["accuracy_matrix"]
    assert repeat["task_il"] == results["task_il"]
    assert repeat["config"] == results["config"]
    assert repeat["experiment"] == results["experiment"]
    assert (tmp_path / "two" / "experiment.yaml").read_text().split("\n", 1)[1] == (
        tmp_path / "one" / "experiment.yaml"
    ).read_text().split("\n", 1)[1]  # the same, but for the time stamp

    # An option given on the command line overrides the file.
    other = cli("benchmark", "-c", exp, "--memory-size", "10", "--output", tmp_path / "three")
    assert other.code == 0, other.describe()
    changed = json.loads((tmp_path / "three" / "results.json").read_text())
    assert changed["config"]["memory_size"] == 10 and changed["config"]["epochs"] == 1


def test_unknown_keys_are_one_line_errors(tmp_path: Path, cli) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("updates: 2\nepoch: 3\nmethods: [er]\nbogus_key: 1\n")
    result = cli("benchmark", "-c", exp, "--output", tmp_path / "out")
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ricordo: error:"), result.describe()
    assert "unknown key(s) bogus_key, epoch" in lines[0]
    assert not (tmp_path / "out").exists()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("updates: [2\n")
    result = cli("benchmark", "-c", bad_yaml)
    assert result.code == 1 and "not valid YAML" in result.err
    assert cli("benchmark", "-c", tmp_path / "none.yaml").code == 1
    exp.write_text("method: er\nmethods: [er]\n")
    with pytest.raises(ConfigError, match="sets methods twice"):
        load_experiment(exp)
    exp.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_experiment(exp)
    exp.write_text("method_options: {joint: {epochs: 2}}\nmethods: [er]\n")
    with pytest.raises(ConfigError, match="not among the methods"):
        load_experiment(exp)
    exp.write_text("methods: [er]\nmethod_options: {er: {lr: 0.1, color: red}}\n")
    with pytest.raises(ConfigError, match="unknown option"):
        load_experiment(exp)
    exp.write_text("chunks: somewhere\nupdates: 3\n")
    with pytest.raises(ConfigError, match="chunks and updates"):
        load_experiment(exp)
    exp.write_text("lr: -1\n")
    with pytest.raises(ConfigError, match="--lr -1"):
        load_experiment(exp)


def test_experiment_to_dict_and_back(tmp_path: Path) -> None:
    experiment = Experiment.from_dict(
        {
            "dataset": "digits",
            "updates": 3,
            "scenario_seed": 5,
            "methods": "finetune, er",
            "seeds": "0,1,2",
            "hidden": "32,16",
            "params": {},
            "method_options": {"er": {"memory_size": 100, "params": {"memory_batch_size": 8}}},
            "workers": 2,
        }
    )
    assert experiment.methods == ("finetune", "er") and experiment.seeds == (0, 1, 2)
    configs = experiment.configs()
    assert configs["er"].memory_size == 100 and configs["finetune"].memory_size == 500
    assert configs["er"].params == {"memory_batch_size": 8} and configs["er"].hidden == (32, 16)
    assert experiment.spec.seed_for(7) == 5
    path = save_experiment(experiment, tmp_path / "e.yaml")
    text = path.read_text()
    assert text.startswith("# Resolved Ricordo benchmark experiment")
    data = yaml.safe_load(text)
    assert data["library_version"] == __version__
    # Every UpdateConfig field is spelled out: shared ones at the top, the others per method.
    varying = {"memory_size", "params"}
    assert set(data["method_options"]["er"]) == set(data["method_options"]["finetune"]) == varying
    assert set(UpdateConfig().to_dict()) - {"method", "seed"} - varying <= set(data)
    again = load_experiment(path)
    assert again.configs() == configs
    assert again.spec == experiment.spec and again.seeds == experiment.seeds
    assert again.workers == 2


def test_merge_lets_explicit_options_win() -> None:
    base = {
        "dataset": "digits",
        "updates": 5,
        "params": {"a": 1, "b": 2},
        "method_options": {"er": {"lr": 0.1}},
    }
    merged = merge(
        base, {"updates": 2, "params": {"b": 3}, "method_options": {"er": {"epochs": 2}}}
    )
    assert merged["updates"] == 2 and merged["params"] == {"a": 1, "b": 3}
    assert merged["method_options"] == {"er": {"lr": 0.1, "epochs": 2}}
    assert "dataset" not in merge(base, {"chunks": "/data/chunks"})
    # Choosing other methods drops the per-method options of those no longer run.
    assert merge(base, {"methods": "finetune,joint"})["method_options"] == {}
    assert merge(base, {"methods": ["er"]})["method_options"] == {"er": {"lr": 0.1}}
    assert "chunks" not in merge({"chunks": "/x"}, {"dataset": "digits"})


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "exp.yaml").write_text("chunks: ../data/chunks\n")
    data = read_experiment_file(folder / "exp.yaml")
    assert Path(data["chunks"]) == tmp_path / "conf" / ".." / "data" / "chunks"
    spec = Experiment.from_dict(data).spec
    assert spec.chunks == str((tmp_path / "data" / "chunks").resolve())
    assert spec.to_dict() == {"chunks": spec.chunks}
    assert ScenarioSpec.from_dict(spec.to_dict()) == spec
