"""Benchmark presets: ``ricordo benchmark --preset seq-cifar10`` and the ``preset:`` key."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ricordo.bench import presets
from ricordo.bench.experiment import Experiment, merge, read_experiment_file
from ricordo.bench.presets import PRESETS, Preset
from ricordo.errors import ConfigError

CIFAR10_NORM = "0.4914,0.4822,0.4465,0.247,0.2435,0.2615"

# name: (dataset, updates, classes, model, epochs, batch size, lr, augment)
EXPECTED = {
    "seq-mnist": ("mnist", 5, 10, "mlp", 1, 10, 0.03, None),
    "seq-cifar10": ("cifar10", 5, 10, "resnet18", 50, 32, 0.1, "crop:4,flip"),
    "seq-cifar100": ("cifar100", 10, 100, "resnet18", 50, 32, 0.1, "crop:4,flip"),
    "seq-tinyimagenet": ("image-folder", 10, 200, "resnet18", 100, 32, 0.03, "crop:4,flip"),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_preset_resolves_to_its_protocol(name: str) -> None:
    dataset, updates, classes, model, epochs, batch_size, lr, augment = EXPECTED[name]
    experiment = Experiment.from_dict({"preset": name, "methods": "er", "memory_size": 200})
    spec, config = experiment.spec, experiment.configs()["er"]
    assert (spec.dataset, spec.scenario, spec.updates) == (dataset, "class-incremental", updates)
    assert spec.scenario_options == {"class_order": list(range(classes))}
    assert (config.model, config.epochs, config.batch_size, config.lr) == (
        model,
        epochs,
        batch_size,
        lr,
    )
    assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.0, 0.0)
    assert config.augment == augment
    if model == "mlp":
        assert tuple(config.hidden) == (100, 100)  # Mammoth's MNISTMLP
        assert config.model_options == {}
    else:
        assert config.model_options["width"] == 64
        assert len(config.model_options["normalize"].split(",")) == 6  # 3 means, 3 stds
    assert experiment.head == "fixed"  # all classes' columns from the start, as Mammoth
    assert PRESETS[name].sources  # every preset says where its numbers come from


def test_explicit_options_and_files_override_the_preset(tmp_path: Path) -> None:
    overrides = {
        "preset": "seq-cifar10",
        "methods": "er,der++",
        "memory_size": 500,
        "epochs": 1,
        "model_options": {"width": 8},
    }
    experiment = Experiment.from_dict(merge({}, overrides))
    config = experiment.configs()["der++"]
    assert experiment.methods == ("er", "der++")
    assert (config.epochs, config.memory_size, config.batch_size) == (1, 500, 32)
    # Dict-valued keys merge: the width changes, the preset's normalisation stays.
    assert config.model_options == {"width": 8, "normalize": CIFAR10_NORM}
    # The same through a YAML file's ``preset:`` key; its other keys win over the preset.
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"preset": "seq-mnist", "batch_size": 64, "method": "er"}))
    config = Experiment.from_dict(read_experiment_file(path)).configs()["er"]
    assert (config.batch_size, config.epochs, config.lr) == (64, 1, 0.03)
    # What a run records is the resolved experiment: it repeats without the preset.
    assert "preset" not in experiment.to_dict()
    assert experiment.to_dict()["epochs"] == 1


def test_unknown_preset_is_one_line_listing_the_known_ones(cli: Callable) -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'seq-cifar'; known presets: seq-mnist"):
        Experiment.from_dict({"preset": "seq-cifar"})
    result = cli("benchmark", "--preset", "seq-cifar")
    assert result.code == 1, result.describe()
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert lines == [
        "ricordo: error: unknown preset 'seq-cifar'; known presets: seq-mnist, seq-cifar10, "
        "seq-cifar100, seq-tinyimagenet (ricordo benchmark --preset list describes them)"
    ]


def test_preset_list_describes_every_preset_and_its_sources(cli: Callable) -> None:
    result = cli("benchmark", "--preset", "list")
    assert result.code == 0, result.describe()
    for name in PRESETS:
        assert f"\n{name}: " in "\n" + result.out
    assert "source of epochs, batch_size: mammoth datasets/seq_cifar10.py" in result.out
    assert "lr: 0.03" in result.out and "model: resnet18" in result.out


def test_preset_without_its_dataset_files_fails_in_one_line(cli: Callable, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli(
        "benchmark", "--preset", "seq-cifar10", "--methods", "er,der++", "--memory-size", "500",
        "--data-dir", tmp_path, "--output", out,
    )  # fmt: skip
    assert result.code == 1, result.describe()
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("ricordo: error: cifar10 files not found in ")
    assert "pass --download (download=True) or place the files there" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, no results folder
    # Tiny ImageNet has no downloader: the preset needs --data-dir.
    result = cli("benchmark", "--preset", "seq-tinyimagenet", "--output", out)
    assert result.code == 1, result.describe()
    assert "dataset 'image-folder' needs root=FOLDER (CLI: --data-dir FOLDER)" in result.err


def test_a_preset_runs_end_to_end_on_digits(
    cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real presets need CIFAR/MNIST files; a preset of the same shape on the bundled digits
    # (resnet18, augmentation, normalisation, natural class order) runs through the same path.
    tiny = Preset(
        "tiny-digits",
        "digits with the seq-cifar10 recipe, shrunk",
        {
            **presets.preset_settings("seq-cifar10"),
            "dataset": "digits",
            "model_options": {"width": 4, "normalize": "0.3,0.3"},
            "augment": "crop:1,flip",
            "epochs": 1,
            "batch_size": 16,
            "threads": 1,
            "progress": False,
        },
    )
    monkeypatch.setitem(PRESETS, "tiny-digits", tiny)
    out = tmp_path / "out"
    result = cli(
        "benchmark", "--preset", "tiny-digits", "--methods", "er,der++", "--memory-size", "50",
        "--workers", "1", "--output", out,
    )  # fmt: skip
    assert result.code == 0, result.describe()
    recorded = yaml.safe_load((out / "experiment.yaml").read_text())
    assert recorded["dataset"] == "digits" and recorded["model"] == "resnet18"
    assert recorded["model_options"] == {"width": 4, "normalize": "0.3,0.3"}
    assert (recorded["epochs"], recorded["batch_size"], recorded["memory_size"]) == (1, 16, 50)
    assert recorded["scenario_options"] == {"class_order": list(range(10))}
    summary = json.loads((out / "summary.json").read_text())
    assert [run["status"] for run in summary["runs"]] == ["ok", "ok"]


SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_seq_cifar10.sh"


def run_script(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RICORDO_DATA"}
    environ.update(PYTHON=sys.executable, OUT=str(tmp_path / "out"), **env)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=300
    )


def test_gpu_script_dry_run_resolves_each_run_with_mammoths_best_arguments(
    tmp_path: Path,
) -> None:
    result = run_script(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    assert len(commands) == 2  # memory 200 and 500, each one benchmark of er, der++, icarl
    for memory, command in zip((200, 500), commands, strict=True):
        assert f"benchmark -c {tmp_path}/out/m{memory}.yaml --preset seq-cifar10" in command
        assert f"--memory-size {memory} --seeds 0 --accelerator cuda" in command
    resolved = [line for line in lines if line.startswith("#   ") and ": cifar10 x5" in line]
    assert len(resolved) == 6
    assert "er: cifar10 x5 resnet18" in resolved[0] and "lr 0.1 " in resolved[0]
    assert "'memory_batch_size': 128" in resolved[0]
    assert "lr 0.03 " in resolved[1] and "'alpha': 0.1, 'beta': 0.5" in resolved[1]
    assert "lr 0.1 " in resolved[2] and "wd 2e-05" in resolved[2]  # iCaRL's wd_reg 1e-5
    assert "'alpha': 0.2, 'beta': 0.5" in resolved[4]
    assert all("epochs 50 batch 32 sgd" in line and "crop:4,flip" in line for line in resolved)


def test_gpu_script_refuses_without_a_gpu_or_the_cifar10_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = run_script(tmp_path, RICORDO_DATA=str(tmp_path / "data"))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gpu_seq_cifar10: ")
    assert "no CUDA GPU visible" in lines[0] or "CIFAR-10 binary files not found" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before running anything
    result = run_script(tmp_path, "--bogus")
    assert result.returncode == 2 and "the only option is --dry-run" in result.stderr
