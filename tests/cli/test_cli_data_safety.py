"""End-to-end (issue 8): `ricordo data` never destroys the user's files, tables are matched by
column name, bad options and a diverging loss are one line without a state, and evaluate says
how many rows had classes the model has never seen."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format

CliResult = Any  # conftest.CliResult
Cli = Callable[..., CliResult]
Digest = Callable[[Path], dict[str, str]]
TRAIN = ("--epochs", "2", "--hidden", "16", "--memory-size", "20", "--threads", "1")


def one_line_error(result: CliResult, *needles: str) -> str:
    """Exit 1, nothing on stdout, one stderr line ``ricordo: error: ...`` with the needles."""
    assert result.code == 1, result.describe()
    assert result.out == "", result.describe()
    assert len(result.err_lines) == 1 and "Traceback" not in result.err, result.describe()
    line = result.err_lines[0]
    assert line.startswith("ricordo: error: "), result.describe()
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def ok(result: CliResult) -> CliResult:
    assert result.code == 0, result.describe()
    return result


# ------------------------------------------------------------------------ ricordo data


def test_data_refuses_a_non_empty_folder_and_keeps_every_file(
    cli: Cli, tmp_path: Path, digest: Digest
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train-0.npz").write_bytes(b"my hand-made chunk")
    (out / "notes.md").write_text("weeks of work\n")
    before = digest(out)
    one_line_error(cli("data", "digits", "--out", out), "is not empty", "--overwrite")
    one_line_error(
        cli("data", "digits", "--out", out, "--overwrite"), "no scenario.json", "empty folder"
    )
    assert digest(out) == before


def test_data_overwrite_replaces_only_its_own_export(
    cli: Cli, tmp_path: Path, digest: Digest
) -> None:
    out = tmp_path / "chunks"
    ok(cli("data", "digits", "--out", out, "--updates", "5"))
    one_line_error(cli("data", "digits", "--out", out, "--updates", "2"), "is not empty")
    (out / "analysis.ipynb").write_text("{}")
    before = digest(out)
    one_line_error(
        cli("data", "digits", "--out", out, "--updates", "2", "--overwrite"),
        "holds 'analysis.ipynb', which no earlier export wrote",
    )
    assert digest(out) == before
    (out / "analysis.ipynb").unlink()
    ok(cli("data", "digits", "--out", out, "--updates", "2", "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == [
        "scenario.json", "test-0.npz", "test-1.npz", "test-all.npz", "train-0.npz",
        "train-1.npz",
    ]  # fmt: skip


# ---------------------------------------------------------------------- tables by name


def _csv(path: Path, x: np.ndarray, y: np.ndarray, order: list[int] | None = None) -> Path:
    """Features f0..fN and a label column; ``order`` permutes all columns (label = index N)."""
    names = [f"f{j}" for j in range(x.shape[1])] + ["label"]
    table = np.concatenate([x, y[:, None]], axis=1)
    order = order if order is not None else list(range(len(names)))
    lines = [",".join(names[j] for j in order)]
    lines += [",".join(f"{v:g}" for v in row[order]) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory, chunks: Path) -> Path:
    """train.csv (chunk 0), test.csv (test chunk 0), the same with the columns reversed, with an
    extra column, and without f3; train-1.csv (chunk 1) in both orders."""
    root = tmp_path_factory.mktemp("tables")
    for name, source in (("train", "train-0"), ("test", "test-0"), ("train-1", "train-1")):
        with np.load(chunks / f"{source}.npz") as npz:
            x, y = npz["x"].reshape(len(npz["y"]), -1), npz["y"]
        n = x.shape[1]
        _csv(root / f"{name}.csv", x, y)
        _csv(root / f"{name}-reversed.csv", x, y, list(range(n, -1, -1)))
        if name == "test":
            extra = np.concatenate([x, np.full((len(y), 1), 7.0)], axis=1)
            _csv(root / "test-extra.csv", extra, y)  # f64 is a column the model never saw
            _csv(root / "test-no-f3.csv", x, y, [j for j in range(n + 1) if j != 3])
    return root


def test_reordered_columns_give_the_same_predictions_and_metrics(
    cli: Cli, tmp_path: Path, tables: Path
) -> None:
    state = tmp_path / "v0"
    ok(
        cli(
            "update",
            "--data",
            tables / "train.csv",
            "--target",
            "label",
            "--next-state",
            state,
            *TRAIN,
        )
    )
    manifest = json.loads((state / "manifest.json").read_text())
    assert manifest["meta"]["model_spec"]["feature_names"] == [f"f{j}" for j in range(64)]
    outputs = {}
    for name in ("test", "test-reversed", "test-extra"):
        data = tables / f"{name}.csv"
        preds = tmp_path / f"{name}.npy"
        ok(cli("predict", "--state", state, "--data", data, "--target", "label", "--output", preds))
        result = ok(cli("evaluate", "--state", state, "--data", data, "--target", "label"))
        outputs[name] = (np.load(preds).tolist(), result.out)
    assert outputs["test-reversed"] == outputs["test"] == outputs["test-extra"]
    assert float(outputs["test"][1].split()[1]) >= 0.8  # learnt (two classes), not scrambled


def test_a_later_update_reads_a_reordered_table_by_name(
    cli: Cli, tmp_path: Path, tables: Path
) -> None:
    state = tmp_path / "v0"
    ok(
        cli(
            "update",
            "--data",
            tables / "train.csv",
            "--target",
            "label",
            "--next-state",
            state,
            *TRAIN,
        )
    )
    for name in ("train-1", "train-1-reversed"):
        data = tables / f"{name}.csv"
        ok(
            cli(
                "update",
                "--data",
                data,
                "--target",
                "label",
                "--state",
                state,
                "--next-state",
                tmp_path / name,
            )
        )
    preds = {}
    for name in ("train-1", "train-1-reversed"):
        out = tmp_path / f"{name}.npy"
        ok(
            cli(
                "predict",
                "--state",
                tmp_path / name,
                "--data",
                tables / "test.csv",
                "--target",
                "label",
                "--output",
                out,
            )
        )
        preds[name] = np.load(out).tolist()
    assert preds["train-1"] == preds["train-1-reversed"]


def test_a_missing_column_is_refused_by_every_command(
    cli: Cli, tmp_path: Path, tables: Path, digest: Digest
) -> None:
    state = tmp_path / "states" / "v0"
    ok(
        cli(
            "update",
            "--data",
            tables / "train.csv",
            "--target",
            "label",
            "--next-state",
            state,
            *TRAIN,
        )
    )
    before = digest(tmp_path)
    missing = tables / "test-no-f3.csv"
    needles = ("test-no-f3.csv lacks the feature column(s) 'f3'", "matched by name")
    one_line_error(
        cli("evaluate", "--state", state, "--data", missing, "--target", "label"), *needles
    )
    one_line_error(
        cli(
            "predict",
            "--state",
            state,
            "--data",
            missing,
            "--target",
            "label",
            "--output",
            tmp_path / "p.npy",
        ),
        *needles,
    )
    one_line_error(
        cli(
            "update",
            "--data",
            missing,
            "--target",
            "label",
            "--state",
            state,
            "--next-state",
            tmp_path / "states" / "v1",
        ),
        *needles,
    )
    assert digest(tmp_path) == before


# ------------------------------------------------------------------- evaluate counts


def test_evaluate_reports_rows_of_classes_never_seen(
    cli: Cli, tmp_path: Path, chunks: Path, read_json: Callable[[Path], Any]
) -> None:
    state = tmp_path / "v0"
    ok(cli("update", "--data", chunks / "train-0.npz", "--next-state", state, *TRAIN))
    with np.load(chunks / "test-all.npz") as npz:
        y = npz["y"]
    seen = np.isin(y, [4, 6])  # chunk 0's classes
    metrics = tmp_path / "m.json"
    result = ok(
        cli("evaluate", "--state", state, "--data", chunks / "test-all.npz", "--output", metrics)
    )
    data = read_json(metrics)
    assert data["samples"] == len(y)
    assert data["unseen_label_rows"] == int((~seen).sum())
    assert data["loss_samples"] == int(seen.sum())
    assert data["accuracy"] <= seen.mean() + 1e-9  # the unseen rows are wrong
    assert result.out.strip().endswith(
        f"({len(y)} samples, {int((~seen).sum())} of classes the model has never seen: counted "
        f"as wrong, left out of the loss over the other {int(seen.sum())})"
    )


# ----------------------------------------------------------- options and divergence


def _bomb(path: Path) -> Path:
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 256, 1000)}
    npy_format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", buffer.getvalue() + b"\0" * 300)
        archive.writestr("y.npy", buffer.getvalue())
    return path


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--momentum", "5"], ["--momentum 5.0 is invalid", "[0, 1)"]),
        (["--lr", "inf"], ["--lr inf is invalid", "finite"]),
        (["--seed", str(2**70)], [f"--seed {2**70} is invalid", "2**63 - 1"]),
        (["--hidden", "1000000000"], ["parameters, over the limit", "smaller layers"]),
        (["--model-option", "foo=1"], ["model 'mlp' has no option(s) ['foo']", "normalize"]),
        (["--memory-insert", "twice"], ["--memory-insert 'twice' is invalid", "once"]),
        (["--lr", "1000"], ["the loss diverged to", "lower --lr (now 1000.0)", "no state"]),
        (["--data", "{bomb}"], ["declares 95.4 GiB of array data but holds 300 bytes", "corrupt"]),
    ],
)
def test_bad_options_and_inputs_are_one_line_and_write_no_state(
    cli: Cli, tmp_path: Path, chunks: Path, digest: Digest, args: list[str], needles: list[str]
) -> None:
    bomb = _bomb(tmp_path / "bomb.npz")
    states = tmp_path / "states"
    states.mkdir()
    before = digest(tmp_path)
    args = [a.replace("{bomb}", str(bomb)) for a in args]
    data = [] if "--data" in args else ["--data", chunks / "train-0.npz"]
    result = cli("update", *data, "--next-state", states / "v0", *TRAIN, *args)
    one_line_error(result, *needles)
    assert digest(tmp_path) == before


def test_memory_insert_once_from_the_cli(cli: Cli, tmp_path: Path, chunks: Path) -> None:
    state = tmp_path / "v0"
    ok(
        cli(
            "update",
            "--data",
            chunks / "train-0.npz",
            "--next-state",
            state,
            "--memory-insert",
            "once",
            *TRAIN,
        )
    )
    manifest = json.loads((state / "manifest.json").read_text())
    assert manifest["meta"]["config"]["memory_insert"] == "once"
