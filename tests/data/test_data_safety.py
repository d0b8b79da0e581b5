"""Data safety (issue 8): exports never touch the user's files, a .npz cannot make numpy
allocate what it does not hold, and table columns are matched by name."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format

from ricordo.data import ArrayDataset, Scenario, export_scenario, load_data, make_scenario
from ricordo.data.loaders import load_features
from ricordo.errors import DataError

# ------------------------------------------------------------------------------------ export


def _scenario(updates: int = 2) -> Scenario:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(5)
    train = ArrayDataset(torch.rand(len(y), 3, generator=g), y)
    test = ArrayDataset(torch.rand(8, 3, generator=g), torch.arange(4).repeat(2))
    return make_scenario("class-incremental", train, test, updates, 0)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_export_refuses_a_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "train-0.npz").write_bytes(b"my own chunk, not an export")
    (tmp_path / "thesis.txt").write_text("irreplaceable")
    before = _files(tmp_path)
    with pytest.raises(DataError, match="is not empty .*pass --overwrite"):
        export_scenario(_scenario(), tmp_path)
    assert _files(tmp_path) == before


def test_overwrite_refuses_a_folder_without_a_scenario_json(tmp_path: Path) -> None:
    (tmp_path / "train-0.npz").write_bytes(b"my own chunk, not an export")
    before = _files(tmp_path)
    with pytest.raises(DataError, match="no scenario.json of an earlier export"):
        export_scenario(_scenario(), tmp_path, overwrite=True)
    assert _files(tmp_path) == before


def test_overwrite_refuses_and_names_a_foreign_file_next_to_an_export(tmp_path: Path) -> None:
    export_scenario(_scenario(3), tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = _files(tmp_path)
    with pytest.raises(DataError, match="holds 'notes.txt', which no earlier export wrote"):
        export_scenario(_scenario(2), tmp_path, overwrite=True)
    assert _files(tmp_path) == before  # nothing replaced, nothing deleted


def test_overwrite_trusts_only_chunk_names_listed_in_scenario_json(tmp_path: Path) -> None:
    """An edited scenario.json cannot make an export replace another file."""
    export_scenario(_scenario(), tmp_path)
    meta = json.loads((tmp_path / "scenario.json").read_text())
    meta["files"].append("data.csv")
    meta["test_all_file"] = "data.csv"
    (tmp_path / "scenario.json").write_text(json.dumps(meta))
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="holds 'data.csv'"):
        export_scenario(_scenario(), tmp_path, overwrite=True)
    assert (tmp_path / "data.csv").read_text() == "a,b\n1,2\n"


def test_overwrite_replaces_an_export_written_before_files_were_listed(tmp_path: Path) -> None:
    """scenario.json of older versions has no "files": its chunk entries say what it wrote."""
    export_scenario(_scenario(3), tmp_path)
    meta = json.loads((tmp_path / "scenario.json").read_text())
    del meta["files"]
    (tmp_path / "scenario.json").write_text(json.dumps(meta))
    export_scenario(_scenario(2), tmp_path, overwrite=True)
    assert not (tmp_path / "train-2.npz").exists()
    assert json.loads((tmp_path / "scenario.json").read_text())["updates"] == 2


def test_an_empty_or_new_folder_needs_no_overwrite(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    export_scenario(_scenario(), tmp_path / "empty")
    export_scenario(_scenario(), tmp_path / "new" / "deeper")
    assert (tmp_path / "empty" / "scenario.json").is_file()
    assert (tmp_path / "new" / "deeper" / "scenario.json").is_file()


# ----------------------------------------------------------------------- declared sizes


def _npy_header(shape: tuple[int, ...], payload: bytes = b"\0" * 300) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def _bomb_npz(path: Path, member: str = "x.npy") -> Path:
    """A few hundred bytes whose x header claims (100000, 256, 1000) float32: 95.4 GiB."""
    labels = io.BytesIO()
    np.save(labels, np.zeros(3, dtype=np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, _npy_header((100_000, 256, 1000)))
        archive.writestr("y.npy", labels.getvalue())
    return path


def test_npz_whose_header_claims_more_than_it_holds_is_refused_before_allocating(
    tmp_path: Path,
) -> None:
    bomb = _bomb_npz(tmp_path / "bomb.npz")
    assert bomb.stat().st_size < 1000
    message = r"bomb.npz \(x.npy\) declares 95.4 GiB of array data but holds 300 bytes; the file"
    with pytest.raises(DataError, match=message):
        load_data(bomb)
    with pytest.raises(DataError, match=message):
        load_features(bomb)


def test_a_member_without_the_npy_suffix_is_checked_too(tmp_path: Path) -> None:
    """np.load reads any member that starts with the .npy magic, whatever its name."""
    bomb = _bomb_npz(tmp_path / "odd.npz", member="x")
    with pytest.raises(DataError, match="declares 95.4 GiB"):
        load_data(bomb)


def test_npy_whose_header_claims_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npy"
    path.write_bytes(_npy_header((100_000, 256, 1000)))
    with pytest.raises(DataError, match="bomb.npy declares 95.4 GiB of array data but holds 300"):
        load_features(path)


def test_arrays_larger_than_this_machines_memory_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip entry may truthfully hold (compressed) more than RAM: refused by declared size."""
    path = tmp_path / "big.npz"
    np.savez_compressed(path, x=np.zeros((2000, 8), np.float32), y=np.zeros(2000, np.int64))
    import ricordo.data.loaders as loaders

    real = loaders.os.sysconf
    pages = {"SC_PHYS_PAGES": 16, "SC_PAGE_SIZE": 4096}  # a 64 KiB machine
    monkeypatch.setattr(loaders.os, "sysconf", lambda name: pages.get(name) or real(name))
    with pytest.raises(DataError, match=r"holds 78.1 KiB of arrays, more than this machine's 64"):
        load_data(path)


def test_honest_npz_and_npy_files_still_load(tmp_path: Path) -> None:
    x, y = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 0, 1])
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "b.npz", x=x, y=y)
    np.save(tmp_path / "c.npy", x)
    for name in ("a.npz", "b.npz"):
        assert torch.equal(load_data(tmp_path / name).x, torch.from_numpy(x))
    assert torch.equal(load_features(tmp_path / "c.npy"), torch.from_numpy(x))


# -------------------------------------------------------------------------- feature names


def _table(path: Path, columns: list[str], rows: np.ndarray) -> Path:
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_table_records_its_feature_columns_and_selects_them_by_name(tmp_path: Path) -> None:
    rows = np.array([[1, 2, 3, 0], [4, 5, 6, 1]])
    data = load_data(_table(tmp_path / "a.csv", ["a", "b", "c", "label"], rows), target="label")
    assert data.feature_names == ("a", "b", "c")
    shuffled = _table(
        tmp_path / "b.csv", ["label", "c", "extra", "a", "b"], rows[:, [3, 2, 0, 0, 1]]
    )
    again = load_data(shuffled, target="label", columns=["a", "b", "c"])
    assert again.feature_names == ("a", "b", "c")
    assert torch.equal(again.x, data.x)  # the extra column is ignored, the order restored
    assert torch.equal(load_features(shuffled, columns=["a", "b", "c"]), data.x)
    with pytest.raises(DataError, match=r"b.csv lacks the feature column\(s\) 'd' the model"):
        load_data(shuffled, target="label", columns=["a", "b", "d"])
    with pytest.raises(DataError, match=r"lacks the feature column\(s\) 'd'"):
        load_features(shuffled, columns=["d", "a"])


def test_array_data_keeps_positions_and_subsets_keep_names() -> None:
    x, y = torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0])
    plain = load_data(x, y, columns=["a", "b"])  # no names: taken by position
    assert plain.feature_names is None and torch.equal(plain.x, x)
    named = ArrayDataset(x, y, feature_names=("a", "b"))
    assert named.subset(torch.tensor([0, 2])).feature_names == ("a", "b")
    assert torch.equal(named.select_features(["b", "a"]).x, x[:, [1, 0]])
    assert ArrayDataset.concat([named, named]).feature_names == ("a", "b")
    with pytest.raises(DataError, match="one name per column"):
        ArrayDataset(x, y, feature_names=("a",))
