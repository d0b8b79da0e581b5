"""export_scenario: npz chunks that load back bit for bit, and a scenario.json describing them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ricordo.data import ArrayDataset, Scenario, export_scenario, load_data, make_scenario


def _scenario(updates: int = 3) -> Scenario:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat(5)
    train = ArrayDataset(torch.rand(len(y), 1, 2, 2, generator=g), y)
    test = ArrayDataset(torch.rand(12, 1, 2, 2, generator=g), torch.arange(6).repeat(2))
    return make_scenario("class-incremental", train, test, updates, 1)


def test_round_trip_bit_for_bit(tmp_path: Path) -> None:
    sc = _scenario()
    out = tmp_path / "new" / "chunks"
    paths = export_scenario(sc, out)
    names = [p.name for p in paths]
    assert names == [
        "train-0.npz", "test-0.npz", "train-1.npz", "test-1.npz", "train-2.npz", "test-2.npz",
        "test-all.npz", "scenario.json",
    ]  # fmt: skip
    assert all(p.is_file() and p.parent == out for p in paths)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temp files left
    for k in range(len(sc)):
        for split, chunk in (("train", sc.train[k]), ("test", sc.test[k])):
            back = load_data(out / f"{split}-{k}.npz")
            assert back.x.dtype == torch.float32 and back.y.dtype == torch.int64
            assert torch.equal(back.x, chunk.x) and torch.equal(back.y, chunk.y)
    all_back = load_data(out / "test-all.npz")
    assert torch.equal(all_back.x, sc.test_all().x) and torch.equal(all_back.y, sc.test_all().y)
    with np.load(out / "train-0.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x", "y"]


def test_scenario_json(tmp_path: Path) -> None:
    sc = _scenario()
    export_scenario(sc, tmp_path)
    meta = json.loads((tmp_path / "scenario.json").read_text())
    assert meta["name"] == "class-incremental"
    assert meta["updates"] == 3
    assert meta["chunk_classes"] == sc.chunk_classes
    assert meta["info"] == sc.info and meta["info"]["seed"] == 1
    assert meta["feature_shape"] == [1, 2, 2]
    assert [c["train_size"] for c in meta["chunks"]] == [len(t) for t in sc.train] == [10, 10, 10]
    assert [c["test_size"] for c in meta["chunks"]] == [len(t) for t in sc.test] == [4, 4, 4]
    assert [c["train_file"] for c in meta["chunks"]] == [
        "train-0.npz",
        "train-1.npz",
        "train-2.npz",
    ]
    assert meta["test_all_size"] == 12


def test_reexport_with_overwrite_removes_stale_chunks(tmp_path: Path) -> None:
    export_scenario(_scenario(6), tmp_path)
    export_scenario(_scenario(2), tmp_path, overwrite=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        ["train-0.npz", "test-0.npz", "train-1.npz", "test-1.npz", "test-all.npz",
         "scenario.json"]
    )  # fmt: skip
    meta = json.loads((tmp_path / "scenario.json").read_text())
    assert sorted(meta["files"]) == [n for n in names if n != "scenario.json"]
