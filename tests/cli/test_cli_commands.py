"""End-to-end: every ``ricordo`` command does what its help says, on tiny digits data."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

import ricordo
from ricordo.config import UpdateConfig
from ricordo.methods import METHODS
from ricordo.updater import Updater

CliResult = Any  # conftest.CliResult: code, out, err, err_lines, describe()
Cli = Callable[..., CliResult]

COMMANDS = {
    "data": ["--out", "--scenario", "--updates", "--seed"],
    "update": ["--data", "--next-state", "--state", "--overwrite", "--method", "--param"],
    "evaluate": ["--state", "--data", "--output", "--target"],
    "predict": ["--state", "--data", "--output", "--probabilities"],
    "info": ["STATE", "--json"],
    "list": ["ROOT"],
    "methods": ["NAME"],
    "benchmark": ["--output", "--methods", "--method", "--epochs", "--memory-size"],
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _ok(result: CliResult) -> CliResult:
    assert result.code == 0, result.describe()
    return result


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return npz["x"], npz["y"]


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory, chunks: Path) -> Path:
    """A small er lineage written through the Python API: states/v0 (chunk 0), states/v1."""
    root = tmp_path_factory.mktemp("states")
    config = UpdateConfig(method="er", memory_size=50, hidden=(32,), epochs=3, progress=False)
    updater = Updater(config)
    updater.update(str(chunks / "train-0.npz"))
    updater.save(str(root / "v0"))
    updater = Updater.load(str(root / "v0"))
    updater.update(str(chunks / "train-1.npz"))
    updater.save(str(root / "v1"))
    return root


# ------------------------------------------------------------------------------------------------
# --version, --help


def test_version(cli: Cli, cli_proc: Cli) -> None:
    result = _ok(cli("--version"))
    assert result.out.strip() == f"ricordo {ricordo.__version__}"
    # `python -m ricordo.cli` is a working entry point (the subprocess tests rely on it).
    result = _ok(cli_proc("--version"))
    assert result.out.strip() == f"ricordo {ricordo.__version__}"


def test_help_of_every_command(cli: Cli) -> None:
    root = _ANSI.sub("", _ok(cli("--help")).out)
    for command in COMMANDS:
        assert re.search(rf"^\W*{command}\b", root, re.M), f"{command} missing in:\n{root}"
    for command, options in COMMANDS.items():
        text = _ANSI.sub("", _ok(cli(command, "--help")).out)
        assert f"Usage: ricordo {command}" in text, text
        for option in options:
            assert option in text, f"{option} missing in `ricordo {command} --help`:\n{text}"


# ------------------------------------------------------------------------------------------------
# methods


def test_methods_lists_and_describes_them(cli: Cli) -> None:
    listing = cli("methods")
    assert listing.code == 0, listing.describe()
    for name in METHODS.names():
        assert any(line.startswith(name + " ") for line in listing.out.splitlines()), name
    one = cli("methods", "gdumb")
    assert one.code == 0, one.describe()
    assert "fitting_epochs  int | None = 128" in one.out
    assert "defaults from: GDumb's official code for MNIST (memory 500, MLP)" in one.out
    assert "memory: --memory-size (class-balanced)" in one.out
    assert "Prabhu, Torr, Dokania 2020" in one.out
    bad = cli("methods", "nope")
    assert bad.code == 1 and bad.err_lines == [
        "ricordo: error: unknown method 'nope'; " + "choose one of: " + ", ".join(METHODS.names())
    ]


# ------------------------------------------------------------------------------------------------
# data


def test_data_writes_chunks_and_scenario(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "chunks"
    result = _ok(cli("data", "digits", "--out", out, "--updates", "3", "--seed", "1"))
    assert len(result.out.strip().splitlines()) == 3
    names = {"scenario.json", "test-all.npz"}
    names |= {f"{kind}-{k}.npz" for kind in ("train", "test") for k in range(3)}
    assert {p.name for p in out.iterdir()} == names
    scenario = json.loads((out / "scenario.json").read_text())
    assert scenario["updates"] == 3
    assert scenario["name"] == "class-incremental"
    classes = scenario["chunk_classes"]
    assert sorted(c for chunk in classes for c in chunk) == list(range(10))
    test_total = 0
    for k, chunk in enumerate(scenario["chunks"]):
        for kind in ("train", "test"):
            x, y = _npz(out / chunk[f"{kind}_file"])
            assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
            assert y.dtype == np.int64 and len(y) == len(x) == chunk[f"{kind}_size"]
            assert set(np.unique(y).tolist()) == set(classes[k])
            assert f"chunk {k}: classes {classes[k]}" in result.out
        test_total += chunk["test_size"]
    x_all, _ = _npz(out / "test-all.npz")
    assert len(x_all) == test_total == scenario["test_all_size"]


def test_data_from_own_csv_files_with_groups(cli: Cli, tmp_path: Path) -> None:
    """`ricordo data FILE --test-data FILE --group-column year` cuts chunks by group."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 60), ("test", 30)):
        years = np.repeat([2019, 2020, 2021], n // 3)
        labels = rng.integers(0, 3, n)
        rows = ["f1,f2,year,label"] + [
            f"{labels[i] + rng.random()},{rng.random()},{years[i]},{labels[i]}" for i in range(n)
        ]
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "chunks"
    _ok(
        cli(
            "data",
            tmp_path / "train.csv",
            "--test-data",
            tmp_path / "test.csv",
            "--target",
            "label",
            "--group-column",
            "year",
            "--scenario",
            "grouped",
            "--updates",
            "3",
            "--out",
            out,
        )
    )
    for k in range(3):
        with np.load(out / f"train-{k}.npz", allow_pickle=False) as npz:
            assert npz["x"].shape == (20, 2)  # the group column is not a feature
            assert set(npz["group"].tolist()) == {2019 + k}
    result = cli("data", tmp_path / "train.csv", "--target", "label", "--out", out)
    assert result.code == 1 and "--test-data" in result.err


# ------------------------------------------------------------------------------------------------
# update, evaluate, predict


def test_update_then_evaluate_writes_metrics(cli: Cli, chunks: Path, tmp_path: Path) -> None:
    state = tmp_path / "s" / "v0"
    result = _ok(
        cli(
            "update",
            "--data",
            chunks / "train-0.npz",
            "--next-state",
            state,
            "--method",
            "er",
            "--memory-size",
            "40",
            "--hidden",
            "32",
            "--epochs",
            "2",
        )
    )
    assert result.out.startswith("update 0 (er): 290 samples, classes [4, 6]")
    assert str(state) in result.out
    manifest = json.loads((state / "manifest.json").read_text())
    assert manifest["meta"]["memory"] == {"policy": "reservoir", "capacity": 40, "size": 40}
    assert manifest["meta"]["config"]["hidden"] == [32]

    metrics_file = tmp_path / "out" / "m.json"
    result = _ok(
        cli("evaluate", "--state", state, "--data", chunks / "test-0.npz", "--output", metrics_file)
    )
    metrics = json.loads(metrics_file.read_text())
    assert {"accuracy", "loss", "samples"} <= set(metrics)
    x, y = _npz(chunks / "test-0.npz")
    assert metrics["samples"] == len(y)
    assert 0.8 <= metrics["accuracy"] <= 1.0  # two classes, learnt
    assert math.isfinite(metrics["loss"]) and metrics["loss"] >= 0
    assert result.out.strip() == (
        f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  ({len(y)} samples)"
    )

    # The reported accuracy and loss agree with the predictions of the same state.
    proba_file = tmp_path / "p.npy"
    _ok(
        cli(
            "predict",
            "--state",
            state,
            "--data",
            chunks / "test-0.npz",
            "--output",
            proba_file,
            "--probabilities",
        )
    )
    proba = np.load(proba_file).astype(np.float64)
    assert metrics["accuracy"] == pytest.approx(float((proba.argmax(1) == y).mean()))
    nll = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-30, None)).mean()
    assert metrics["loss"] == pytest.approx(nll, rel=1e-3, abs=1e-4)


def test_predict_ids_probabilities_and_input_formats(
    cli: Cli, states: Path, chunks: Path, tmp_path: Path
) -> None:
    state = states / "v1"
    x, y = _npz(chunks / "test-all.npz")
    ids_file = tmp_path / "pred" / "ids.npy"
    result = _ok(
        cli("predict", "--state", state, "--data", chunks / "test-all.npz", "--output", ids_file)
    )
    assert f"wrote {(len(x),)} class ids -> {ids_file}" in result.out
    ids = np.load(ids_file, allow_pickle=False)
    assert ids.shape == (len(x),) and ids.dtype == np.int64
    assert set(np.unique(ids).tolist()) <= {2, 4, 6, 7}  # the classes of chunks 0 and 1
    seen = np.isin(y, [2, 4, 6, 7])
    assert (ids[seen] == y[seen]).mean() > 0.6

    proba_file = tmp_path / "proba.npy"
    _ok(
        cli(
            "predict",
            "--state",
            state,
            "--data",
            chunks / "test-all.npz",
            "--output",
            proba_file,
            "--probabilities",
        )
    )
    proba = np.load(proba_file, allow_pickle=False)
    assert proba.shape == (len(x), 8)  # the head grew to the largest label seen (7) + 1
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), ids)

    # Unlabelled inputs: an .npz holding only x, and a bare .npy.
    only_x = tmp_path / "only-x.npz"
    np.savez(only_x, x=x)
    bare = tmp_path / "x.npy"
    np.save(bare, x)
    for source in (only_x, bare):
        out = tmp_path / f"ids-{source.suffix[1:]}.npy"
        _ok(cli("predict", "--state", state, "--data", source, "--output", out))
        np.testing.assert_array_equal(np.load(out), ids)


# ------------------------------------------------------------------------------------------------
# info, list


def test_info_text_and_json(cli: Cli, states: Path) -> None:
    state = states / "v1"
    text = _ok(cli("info", state)).out
    fields = dict(line.split(None, 1) for line in text.strip().splitlines())
    assert fields["state"] == str(state)
    assert fields["parent"] == str(states / "v0")
    assert fields["method"].startswith("er")
    assert fields["model"].startswith("mlp, input (1, 8, 8), 8 outputs")
    assert fields["classes"] == "[2, 4, 6, 7]"
    assert fields["updates"] == "2"
    assert fields["memory"] == "50/50 (reservoir)"

    manifest = json.loads(_ok(cli("info", state, "--json")).out)
    assert manifest == json.loads((state / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["meta"]["method"] == "er"
    assert manifest["meta"]["updates"] == 2
    files = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    total = 0
    for rel, entry in manifest["files"].items():
        raw = (state / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}, rel
        total += len(raw)
    assert fields["files"] == f"{len(manifest['files'])}, {total} bytes"


def test_list_shows_states_oldest_first_and_skips_debris(
    cli: Cli, states: Path, tmp_path: Path
) -> None:
    lines = _ok(cli("list", states)).out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["v0", "v1"]
    assert lines[0].split()[-1] == "parent=-"
    assert lines[1].split()[-1] == f"parent={states / 'v0'}"
    assert "er" in lines[0].split() and "updates=1" in lines[0].split()
    assert "updates=2" in lines[1].split()

    # Writer debris, a lock and a folder that is not a state are not listed.
    root = tmp_path / "root"
    root.mkdir()
    (root / "v2.tmp-999999-abcd").mkdir()
    (root / "v2.lock").write_text("{}")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("hello")
    assert _ok(cli("list", root)).out.strip() == f"no states in {root}"


# ------------------------------------------------------------------------------------------------
# benchmark


def _expected_steps(chunks: Path, method: str, epochs: int) -> int:
    batch = UpdateConfig().batch_size
    sizes = [len(_npz(chunks / f"train-{k}.npz")[1]) for k in range(5)]
    if method == "joint":  # trains on everything seen so far
        sizes = list(np.cumsum(sizes))
    return sum(math.ceil(n / batch) for n in sizes) * epochs


def _check_results(results: dict[str, Any], chunks: Path, method: str) -> None:
    matrix = np.asarray(results["accuracy_matrix"])
    assert matrix.shape == (5, 5)
    assert ((matrix >= 0) & (matrix <= 1)).all()
    metrics = results["metrics"]
    assert {"average_accuracy", "forgetting", "backward_transfer", "forward_transfer"} <= set(
        metrics
    )
    assert metrics["average_accuracy"] == pytest.approx(matrix[-1].mean())
    forgetting = np.mean([matrix[j:4, j].max() - matrix[4, j] for j in range(4)])
    assert metrics["forgetting"] == pytest.approx(forgetting)
    backward = np.mean([matrix[4, j] - matrix[j, j] for j in range(4)])
    assert metrics["backward_transfer"] == pytest.approx(backward)
    initial = results["initial_accuracy"]
    forward = np.mean([matrix[j - 1, j] - initial[j] for j in range(1, 5)])
    assert metrics["forward_transfer"] == pytest.approx(forward)
    timing = results["timing"]
    assert {"train_seconds", "eval_seconds", "total_seconds", "train_steps"} <= set(timing)
    assert timing["train_steps"] == _expected_steps(chunks, method, epochs=2)
    assert 0 < timing["train_seconds"] <= timing["total_seconds"]
    assert timing["train_seconds"] + timing["eval_seconds"] <= timing["total_seconds"] + 1e-3
    assert results["config"]["method"] == method
    assert results["config"]["epochs"] == 2


def test_benchmark_compares_finetune_er_joint(cli: Cli, chunks: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # --workers 1: the runs share this process (worker processes would each import torch again).
    result = _ok(cli("benchmark", "--epochs", "2", "--workers", "1", "--output", out))
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["er", "finetune", "joint"]
    assert not (out / "results.json").exists()
    results = {}
    for method in ("finetune", "er", "joint"):
        results[method] = json.loads((out / method / "results.json").read_text())
        _check_results(results[method], chunks, method)
        assert re.search(rf"^\W*{method}\b", result.out, re.M), result.out
        assert f"{method}: done in" in result.err
    # Joint training keeps every class; finetune keeps about the last chunk's two.
    final = {m: r["metrics"]["average_accuracy"] for m, r in results.items()}
    assert final["joint"] > final["finetune"] + 0.3, final


def test_benchmark_single_method(cli: Cli, chunks: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    _ok(cli("benchmark", "--method", "er", "--epochs", "2", "--output", out))
    assert (out / "results.json").is_file()
    assert not [p.name for p in out.iterdir() if p.is_dir()]  # no per-method folders
    results = json.loads((out / "results.json").read_text())
    _check_results(results, chunks, "er")
    assert results["config"]["memory_size"] == UpdateConfig().memory_size


# ------------------------------------------------------------------------------------------------
# CSV data, a user model, validation and early stopping


def test_csv_chunk_with_target(cli: Cli, chunks: Path, tmp_path: Path) -> None:
    def to_csv(npz: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
        x, y = _npz(npz)
        flat = x.reshape(len(x), -1)
        header = ",".join([f"p{i}" for i in range(flat.shape[1])] + ["label"])
        rows = [
            ",".join([*(f"{v:.4f}" for v in row), str(int(c))])
            for row, c in zip(flat, y, strict=True)
        ]
        path.write_text(header + "\n" + "\n".join(rows) + "\n")
        return flat, y

    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    to_csv(chunks / "train-0.npz", train_csv)
    _, y_test = to_csv(chunks / "test-0.npz", test_csv)
    state = tmp_path / "s" / "csv"
    result = _ok(
        cli(
            "update",
            "--data",
            train_csv,
            "--target",
            "label",
            "--next-state",
            state,
            "--method",
            "finetune",
            "--epochs",
            "3",
            "--hidden",
            "32",
        )
    )
    assert "290 samples, classes [4, 6]" in result.out
    spec = json.loads((state / "manifest.json").read_text())["meta"]["model_spec"]
    assert spec["input_shape"] == [64]
    metrics_file = tmp_path / "m.json"
    _ok(
        cli(
            "evaluate",
            "--state",
            state,
            "--data",
            test_csv,
            "--target",
            "label",
            "--output",
            metrics_file,
        )
    )
    metrics = json.loads(metrics_file.read_text())
    assert metrics["samples"] == len(y_test)
    assert metrics["accuracy"] > 0.8
    ids_file = tmp_path / "ids.npy"
    _ok(
        cli(
            "predict",
            "--state",
            state,
            "--data",
            test_csv,
            "--target",
            "label",
            "--output",
            ids_file,
        )
    )
    ids = np.load(ids_file)
    assert len(ids) == len(y_test)
    assert (ids == y_test).mean() == pytest.approx(metrics["accuracy"])


USER_MODEL = """
from torch import nn


def model_fn(width=8, input_shape=(1, 8, 8), num_classes=2):
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, width), nn.Tanh(), nn.Linear(width, num_classes)
    )
"""


def test_user_model_from_config_file_continues_in_new_process(
    cli: Cli, cli_proc: Cli, chunks: Path, tmp_path: Path
) -> None:
    config = tmp_path / "cfg.py"
    config.write_text(USER_MODEL)
    states = tmp_path / "states"
    _ok(
        cli(
            "update",
            "--data",
            chunks / "train-0.npz",
            "--next-state",
            states / "v0",
            "--config",
            config,
            "--model-option",
            "width=16",
            "--method",
            "er",
            "--memory-size",
            "30",
            "--epochs",
            "2",
        )
    )
    weights = load_file(str(states / "v0" / "model.safetensors"))
    assert weights["1.weight"].shape == (16, 64)  # width=16 reached model_fn
    assert weights["3.weight"].shape == (7, 16)  # labels 4 and 6: outputs 0..6

    # A new process rebuilds the user's model from the code the user passes again (a state
    # never runs code it names) and continues the lineage.
    result = cli_proc(
        "update",
        "--data",
        chunks / "train-1.npz",
        "--state",
        states / "v0",
        "--next-state",
        states / "v1",
        "--config",
        config,
        "--epochs",
        "2",
    )
    assert result.code == 0, result.describe()
    assert result.out.startswith("update 1 (er): 285 samples, classes [2, 7]")
    weights = load_file(str(states / "v1" / "model.safetensors"))
    assert weights["1.weight"].shape == (16, 64)
    assert weights["3.weight"].shape == (8, 16)  # grew for label 7
    meta = json.loads((states / "v1" / "manifest.json").read_text())["meta"]
    assert meta["model_spec"]["kind"] == "code"
    assert meta["model_spec"]["options"] == {"width": 16}
    assert meta["model_spec"]["source"] == "cfg.py"  # portable: no path of this machine
    assert meta["seen_classes"] == [2, 4, 6, 7]
    metrics_file = tmp_path / "m.json"
    _ok(
        cli(
            "evaluate",
            "--state",
            states / "v1",
            "--data",
            chunks / "test-1.npz",
            "--output",
            metrics_file,
            "--config",
            config,
        )
    )
    assert json.loads(metrics_file.read_text())["accuracy"] > 0.5


def test_validation_split_and_early_stopping(cli: Cli, chunks: Path, tmp_path: Path) -> None:
    state = tmp_path / "v0"
    _ok(
        cli(
            "update",
            "--data",
            chunks / "train-0.npz",
            "--next-state",
            state,
            "--val-fraction",
            "0.2",
            "--patience",
            "2",
            "--epochs",
            "8",
            "--hidden",
            "32",
            "--method",
            "finetune",
        )
    )
    (record,) = json.loads((state / "history.json").read_text())
    assert record["config"]["val_fraction"] == 0.2
    assert record["config"]["patience"] == 2
    train = record["train"]
    val = train["val_accuracy"]
    assert 1 <= len(val) == train["epochs"] <= 8
    assert all(0.0 <= v <= 1.0 for v in val)
    assert train["best_epoch"] is not None and val[train["best_epoch"]] == max(val)
    if len(val) < 8:  # stopped early: the last `patience` epochs did not beat the best
        assert len(val) - 1 - train["best_epoch"] == 2
    # 20% of the 290 rows were held out: 232 train rows per epoch in batches of 32.
    assert train["steps"] == math.ceil(232 / 32) * train["epochs"]
    assert record["data"]["samples"] == 290


def test_later_update_may_repeat_every_lineage_option(
    cli: Cli, chunks: Path, tmp_path: Path
) -> None:
    """A weekly job passes the same flags every time: unchanged lineage options are accepted."""
    flags = ["--method", "er", "--memory-size", "30", "--memory-policy", "reservoir"]
    flags += ["--model", "mlp", "--hidden", "16", "--max-classes", "10"]
    flags += ["--param", "memory_batch_size=8", "--epochs", "1"]
    states = tmp_path / "states"
    _ok(cli("update", "--data", chunks / "train-0.npz", "--next-state", states / "v0", *flags))
    _ok(
        cli(
            "update",
            "--data",
            chunks / "train-1.npz",
            "--state",
            states / "v0",
            "--next-state",
            states / "v1",
            *flags,
        )
    )
    meta = json.loads((states / "v1" / "manifest.json").read_text())["meta"]
    assert meta["updates"] == 2
    assert meta["params"] == {"memory_batch_size": 8}
    assert meta["memory"]["capacity"] == 30


def test_same_config_file_named_from_another_directory(
    cli: Cli, chunks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cfg.py").write_text(USER_MODEL)
    job = tmp_path / "job"
    job.mkdir()
    options = ["--model-option", "width=4", "--method", "finetune", "--epochs", "1"]
    monkeypatch.chdir(tmp_path)
    first = ["--data", chunks / "train-0.npz", "--next-state", "s/v0", "--config", "cfg.py"]
    _ok(cli("update", *first, *options))
    monkeypatch.chdir(job)  # next week's job runs elsewhere, naming the same file
    result = cli(
        "update",
        "--data",
        chunks / "train-1.npz",
        "--state",
        tmp_path / "s" / "v0",
        "--next-state",
        tmp_path / "s" / "v1",
        "--config",
        tmp_path / "cfg.py",
        *options,
    )
    _ok(result)


def test_predict_on_unlabelled_csv(cli: Cli, chunks: Path, tmp_path: Path) -> None:
    x, y = _npz(chunks / "train-0.npz")
    flat = x.reshape(len(x), -1)
    updater = Updater(UpdateConfig(method="finetune", hidden=(16,), epochs=1, progress=False))
    updater.update(flat, y)
    updater.save(str(tmp_path / "v0"))
    header = ",".join(f"p{i}" for i in range(flat.shape[1]))
    rows = "\n".join(",".join(f"{v:.4f}" for v in row) for row in flat[:20])
    (tmp_path / "new.csv").write_text(header + "\n" + rows + "\n")
    out = tmp_path / "ids.npy"
    _ok(cli("predict", "--state", tmp_path / "v0", "--data", tmp_path / "new.csv", "--output", out))
    np.testing.assert_array_equal(np.load(out), updater.predict(np.round(flat[:20], 4)).numpy())


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_output_is_strict_json_when_loss_is_undefined(
    cli: Cli, states: Path, chunks: Path, tmp_path: Path
) -> None:
    x, y = _npz(chunks / "test-4.npz")
    eights = y == 8  # state v0 has outputs 0..6 only: no loss is defined for class 8
    np.savez(tmp_path / "eights.npz", x=x[eights], y=y[eights])
    out = tmp_path / "m.json"
    data = tmp_path / "eights.npz"
    _ok(cli("evaluate", "--state", states / "v0", "--data", data, "--output", out))
    metrics = _strict_json(out.read_text())
    assert metrics["accuracy"] == 0.0
    assert metrics["samples"] == int(eights.sum())


def test_predict_writes_exactly_the_output_path(
    cli: Cli, states: Path, chunks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.out"
    result = _ok(
        cli("predict", "--state", states / "v0", "--data", chunks / "test-0.npz", "--output", out)
    )
    assert result.out.strip().endswith(f"-> {out}")
    assert [p.name for p in tmp_path.iterdir()] == ["preds.out"]
    assert np.load(out).shape == (72,)
