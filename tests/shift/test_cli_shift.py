"""``ricordo shift`` and ``detect_shift``: exit status 0 / 4 / 1, the printed result, the JSON,
subsampling, the feature sources (model, encoder, raw) and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo.cli import SHIFT_DETECTED
from ricordo.shift import detect_shift
from ricordo.updater import Updater


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finetune state (mlp 16) trained on 300 rows of 6 Gaussian features, and chunks:
    ``ref`` (its training data), ``same`` (new draws of the same distribution), ``moved`` (mean
    +0.5 in every feature), ``wide`` (7 features)."""
    root = tmp_path_factory.mktemp("shift")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype("float32")
    np.savez(root / "ref.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    np.savez(root / "same.npz", x=rng.normal(size=(300, 6)).astype("float32"))
    np.savez(root / "moved.npz", x=(rng.normal(size=(300, 6)) + 0.5).astype("float32"))
    np.savez(root / "wide.npz", x=rng.normal(size=(300, 7)).astype("float32"))
    updater = Updater(method="finetune", hidden=(16,), epochs=2, progress=False, threads=1)
    updater.update(str(root / "ref.npz"))
    updater.save(str(root / "state"))
    return root


@pytest.mark.parametrize("detector", ["mmd", "ks"])
def test_exit_status_says_whether_the_data_shifted(cli, work: Path, detector: str) -> None:
    common = ["shift", "--state", work / "state", "--reference", work / "ref.npz"]
    common += ["--detector", detector, "--permutations", "200"]
    same = cli(*common, "--data", work / "same.npz")
    assert same.code == 0, same
    assert same.out.startswith(f"no shift detected: {detector} score "), same.out
    assert "(300 reference / 300 new samples)" in same.out
    moved = cli(*common, "--data", work / "moved.npz")
    assert moved.code == SHIFT_DETECTED == 4, moved
    assert moved.out.startswith(f"shift detected: {detector} score "), moved.out
    assert "<= alpha 0.05" in moved.out
    if detector == "ks":  # names the features that moved most
        assert moved.out.splitlines()[1].startswith("most shifted features: ")


def test_json_and_python_give_the_same_result(cli, work: Path) -> None:
    args = ["--reference", work / "ref.npz", "--data", work / "moved.npz"]
    run = cli("shift", "--state", work / "state", *args, "--permutations", "100", "--json")
    assert run.code == 4, run
    printed = json.loads(run.out)
    assert printed["shifted"] is True and printed["detector"] == "mmd"
    assert printed["details"]["feature_source"] == "model"
    assert printed["details"]["features"] == 16  # the mlp's hidden layer feeds its output layer
    expected = detect_shift(
        str(work / "state"), str(work / "ref.npz"), str(work / "moved.npz"), permutations=100
    )
    assert printed == json.loads(json.dumps(expected.to_dict()))
    assert expected.p_value == (1 + expected.details["exceedances"]) / 101


def test_raw_features_need_no_state_and_subsample(cli, work: Path) -> None:
    args = ["shift", "--features", "raw", "--reference", work / "ref.npz"]
    run = cli(*args, "--data", work / "moved.npz", "--max-samples", "50", "--json")
    assert run.code == 4, run
    printed = json.loads(run.out)
    assert (printed["n_reference"], printed["n_data"]) == (50, 50)
    assert (printed["details"]["reference_rows"], printed["details"]["data_rows"]) == (300, 300)
    assert printed["details"]["features"] == 6
    again = cli(*args, "--data", work / "moved.npz", "--max-samples", "50", "--json")
    assert json.loads(again.out) == printed  # seeded


def test_subsample_reads_the_same_rows_from_a_lazy_chunk(work: Path) -> None:
    from ricordo.data.lazy_sources import lazy_npz

    x = torch.from_numpy(np.load(work / "ref.npz")["x"])
    lazy = lazy_npz(work / "ref.npz")
    eager = detect_shift(None, x, x + 0.1, features="raw", max_samples=40, permutations=30)
    read = detect_shift(None, lazy, x + 0.1, features="raw", max_samples=40, permutations=30)
    assert read == eager


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "moved.npz"], "features='model' come from a model: pass a state"),
        (
            ["--state", "state", "--data", "moved.npz", "--features", "encoder"],
            "features='encoder' reads a pretrained --backbone, but this state's model has none",
        ),
        (["--state", "state", "--data", "wide.npz"], "inputs have feature shape (7,) but the"),
        (["--features", "raw", "--data", "wide.npz"], "the reference sample has 6 features"),
        (["--state", "state", "--data", "x.npz"], "x.npz"),
        (["--features", "pixels", "--data", "moved.npz"], "features='pixels' is not one of"),
        (["--detector", "t", "--data", "moved.npz"], "detector='t' is not one of mmd, ks"),
        (["--state", "state", "--data", "moved.npz", "--alpha", "2"], "alpha=2.0 must be"),
        (["--features", "raw", "--data", "moved.npz", "--max-samples", "-1"], "--max-samples"),
        (["--data", "moved.npz", "--backbone", "b"], "--config/--backbone/--accept-model-change"),
    ],
)
def test_errors_are_one_line(cli, work: Path, monkeypatch, args: list[str], message: str) -> None:
    monkeypatch.chdir(work)
    run = cli("shift", "--reference", "ref.npz", *args)
    assert run.code == 1, run
    assert run.out == ""
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ricordo: error: "), run.err
    assert message in lines[0], lines[0]


def test_help_documents_the_exit_status(cli) -> None:
    run = cli("shift", "--help")
    assert run.code == 0
    text = " ".join(run.out.split())
    assert "Exit status: 0 no shift, 4 shift detected (p <= alpha), 1 error, 2 usage error." in text
    assert "--dataset-option K=V" in text and "<bool>" not in text


def test_example_finds_the_shifted_batches(tmp_path: Path, capsys) -> None:
    """examples/shift_detection.py: fresh digits pass, darker digits and a batch of two classes
    are flagged, by every detector and feature source it uses."""
    import runpy

    example = Path(__file__).resolve().parents[2] / "examples" / "shift_detection.py"
    results = runpy.run_path(str(example))["main"](str(tmp_path / "example"))
    for name, by_detector in results.items():
        for how, result in by_detector.items():
            assert result.shifted == (name != "same kind"), (name, how, result)
    assert "darker          model mmd  shift detected: mmd score" in capsys.readouterr().out


def test_image_folders_are_read_sample_by_sample(cli, tmp_path: Path) -> None:
    """--dataset image-folder: a seeded subsample of each folder, brighter images flagged."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, mean in (("ref", 100), ("same", 100), ("bright", 160)):
        for label in ("a", "b"):
            folder = tmp_path / name / label
            folder.mkdir(parents=True)
            for i in range(15):
                pixels = np.clip(rng.normal(mean, 30, (8, 8)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    args = ["shift", "--features", "raw", "--dataset", "image-folder", "--reference"]
    args += [tmp_path / "ref", "--max-samples", "20", "--permutations", "100", "--data"]
    same = cli(*args, tmp_path / "same")
    assert same.code == 0 and "(20 reference / 20 new samples)" in same.out, same
    bright = cli(*args, tmp_path / "bright")
    assert bright.code == 4, bright
