"""--chunks: benchmark on a folder of pre-split chunks (the layout `ricordo data` writes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ricordo.bench import load_chunks, run_benchmark
from ricordo.config import UpdateConfig
from ricordo.data import export_scenario, load_builtin, make_scenario
from ricordo.errors import DataError


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    train, test = load_builtin("digits")
    scenario = make_scenario("task-incremental", train, test, updates=2, seed=4)
    folder = tmp_path_factory.mktemp("chunks")
    export_scenario(scenario, folder)
    return scenario, folder


def test_chunks_give_the_same_matrix_as_the_scenario_in_memory(
    exported, tmp_path: Path, cli, tiny: Callable[..., UpdateConfig]
) -> None:
    scenario, folder = exported
    loaded = load_chunks(folder)
    assert loaded.chunk_classes == scenario.chunk_classes
    assert loaded.task_incremental is True and loaded.name == "task-incremental"
    for a, b in zip(loaded.train + loaded.test, scenario.train + scenario.test, strict=True):
        assert np.array_equal(a.x.numpy(), b.x.numpy()) and np.array_equal(a.y, b.y)

    config = tiny("er", epochs=1, memory_size=30, hidden=(16,), seed=4)
    expected = run_benchmark(scenario, config)
    out = tmp_path / "out"
    options = ["--method", "er", "--epochs", "1", "--memory-size", "30", "--hidden", "16"]
    options += ["--lr", "0.1", "--threads", "1", "--seed", "4", "--no-progress"]
    result = cli("benchmark", "--chunks", folder, *options, "--output", out)
    assert result.code == 0, result.describe()
    results = json.loads((out / "results.json").read_text())
    assert results["accuracy_matrix"] == expected["accuracy_matrix"]
    assert results["task_il"]["accuracy_matrix"] == expected["task_il"]["accuracy_matrix"]
    assert results["config"] == expected["config"]
    assert results["experiment"]["chunks"] == str(folder.resolve())
    assert "dataset" not in results["experiment"]
    assert results["scenario"]["chunks"] == str(folder.resolve())


def test_without_scenario_json_classes_come_from_the_train_chunks(exported, tmp_path: Path) -> None:
    scenario, folder = exported
    plain = tmp_path / "plain"
    plain.mkdir()
    for k in range(2):
        for kind in ("train", "test"):
            (plain / f"{kind}-{k}.npz").write_bytes((folder / f"{kind}-{k}.npz").read_bytes())
    loaded = load_chunks(plain)
    assert loaded.chunk_classes == [sorted(c) for c in scenario.chunk_classes]
    assert loaded.task_incremental is False and loaded.name == "chunks"


def test_bad_chunk_folders_are_clear_errors(exported, tmp_path: Path, cli) -> None:
    _, folder = exported
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no train-0.npz"):
        load_chunks(empty)
    with pytest.raises(DataError, match="not a folder"):
        load_chunks(tmp_path / "missing")
    uneven = tmp_path / "uneven"
    uneven.mkdir()
    for name in ("train-0.npz", "train-1.npz", "test-0.npz"):
        (uneven / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(DataError, match="2 train chunks but 1 test chunks"):
        load_chunks(uneven)
    (uneven / "test-1.npz").write_bytes((folder / "test-1.npz").read_bytes())
    (uneven / "train-3.npz").write_bytes((folder / "train-0.npz").read_bytes())
    with pytest.raises(DataError, match="lacks train-2.npz"):
        load_chunks(uneven)

    result = cli("benchmark", "--chunks", empty, "--output", tmp_path / "o")
    assert result.code == 1 and "has no train-0.npz" in result.err, result.describe()
    result = cli("benchmark", "--chunks", folder, "--updates", "3", "--output", tmp_path / "o")
    assert result.code == 1 and "drop --updates" in result.err, result.describe()
    assert not (tmp_path / "o").exists()
