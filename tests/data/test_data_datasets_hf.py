"""Hugging Face datasets: save_to_disk round trips, column choice, images, text refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo.data import load_builtin
from ricordo.data.hf import load_hf
from ricordo.errors import DataError


def test_missing_package_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(
        DataError, match=r"needs the 'datasets' package; pip install 'ricordo\[nlp\]'"
    ):
        load_hf(tmp_path)


@pytest.fixture(scope="module")
def hf():
    import datasets

    datasets.disable_progress_bars()
    return datasets


def test_numeric_round_trip(hf, tmp_path: Path) -> None:
    features = np.arange(12, dtype=np.float32).reshape(6, 2)
    ds = hf.Dataset.from_dict({"a": features[:, 0], "b": features[:, 1], "label": [0, 1] * 3})
    ds.save_to_disk(str(tmp_path / "saved"))
    data = load_hf(tmp_path / "saved")
    assert data.x.shape == (6, 2) and data.x.dtype == torch.float32
    assert torch.equal(data.x, torch.from_numpy(features))
    assert data.y.tolist() == [0, 1] * 3 and data.y.dtype == torch.int64
    only_b = load_hf(tmp_path / "saved", x_column="b")
    assert only_b.x.tolist() == features[:, 1].tolist()


def test_array_column_and_class_label_in_a_dataset_dict(hf, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(8, 3, 2)).astype(np.float32)
    part = {"vec": vectors.tolist(), "text": ["x"] * 8, "y": [0, 1, 2, 0, 1, 2, 0, 1]}
    ds = hf.Dataset.from_dict(part).cast_column("y", hf.ClassLabel(names=["p", "q", "r"]))
    hf.DatasetDict(train=ds, test=ds.select(range(3))).save_to_disk(str(tmp_path / "dd"))
    train, test = load_builtin("hf", root=tmp_path / "dd", x_column="vec")
    assert train.x.shape == (8, 3, 2) and test.x.shape == (3, 3, 2)
    assert torch.allclose(train.x, torch.from_numpy(vectors))
    assert train.y.tolist() == part["y"] and test.y.tolist() == [0, 1, 2]
    assert len(load_hf(tmp_path / "dd", split="test", x_column="vec")) == 3
    with pytest.raises(DataError, match="no split 'valid'; available splits: train, test"):
        load_hf(tmp_path / "dd", split="valid", x_column="vec")


def test_text_columns_need_a_feature_extractor(hf, tmp_path: Path) -> None:
    hf.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]}).save_to_disk(
        str(tmp_path / "t")
    )
    with pytest.raises(DataError, match="column 'text' holds text; text needs a feature extractor"):
        load_hf(tmp_path / "t")


def test_string_labels_and_missing_columns(hf, tmp_path: Path) -> None:
    hf.Dataset.from_dict({"f": [1.0, 2.0], "kind": ["u", "v"]}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(DataError, match="no label column named label"):
        load_hf(tmp_path / "s")
    with pytest.raises(DataError, match="not integer class ids"):
        load_hf(tmp_path / "s", y_column="kind")
    with pytest.raises(DataError, match=r"no column\(s\) \['g'\]"):
        load_hf(tmp_path / "s", x_column="g", y_column="kind")


def test_image_column_and_stratified_split(hf, tmp_path: Path) -> None:
    from PIL import Image

    images = [Image.new("L", (4, 3), 20 * i) for i in range(10)]
    ds = hf.Dataset.from_dict({"image": images, "label": [0, 1] * 5})
    ds.save_to_disk(str(tmp_path / "img"))
    data = load_hf(tmp_path / "img")
    assert data.x.shape == (10, 1, 3, 4)
    assert torch.allclose(data.x[:, 0, 0, 0], torch.arange(10) * 20 / 255)
    resized = load_hf(tmp_path / "img", size=(6, 6), mode="RGB")
    assert resized.x.shape == (10, 3, 6, 6)
    train, test = load_builtin("hf", root=tmp_path / "img", test_fraction=0.2)
    assert len(train) == 8 and torch.bincount(test.y).tolist() == [1, 1]


def test_missing_folder_and_bad_arguments(hf, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_builtin("hf", root=tmp_path / "nope")
    with pytest.raises(DataError, match="exactly one of root=FOLDER"):
        load_builtin("hf")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load Hugging Face dataset"):
        load_hf(tmp_path / "junk")
