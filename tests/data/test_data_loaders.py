"""load_data: every accepted source, the dtypes it returns, and every refusal message."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from ricordo.data import ArrayDataset, load_data
from ricordo.errors import DataError


def _xy(n: int = 6, shape: tuple[int, ...] = (3,)) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n * int(np.prod(shape)), dtype=np.float64).reshape(n, *shape) / 7.0
    y = np.arange(n) % 3
    return x, y


def _check(ds: ArrayDataset, x: np.ndarray, y: np.ndarray) -> None:
    assert isinstance(ds, ArrayDataset)
    assert ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    assert tuple(ds.x.shape) == x.shape
    assert tuple(ds.y.shape) == (len(y),)
    np.testing.assert_array_equal(ds.x.numpy(), x.astype(np.float32))
    np.testing.assert_array_equal(ds.y.numpy(), y.astype(np.int64))


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# ---------------------------------------------------------------------------- sources


def test_npz_keeps_feature_shape(tmp_path: Path) -> None:
    x, y = _xy(5, (1, 4, 4))
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.int32))
    _check(load_data(tmp_path / "d.npz"), x, y)
    _check(load_data(str(tmp_path / "d.npz")), x, y)


def test_npz_with_whole_float_labels(tmp_path: Path) -> None:
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.float32))
    _check(load_data(tmp_path / "d.npz"), x, y)


def test_csv_with_header(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", "a,label,b\n1.5,0,2\n-3,2,4e-1\n0,1,7\n")
    ds = load_data(path, target="label")
    _check(ds, np.array([[1.5, 2], [-3, 0.4], [0, 7]]), np.array([0, 2, 1]))


def test_csv_semicolon_and_quotes(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", 'a;"b";y\n1;2;0\n3; 4 ;1\n')
    _check(load_data(path, target="y"), np.array([[1, 2], [3, 4]]), np.array([0, 1]))


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", "a,b,y\n1,2,0\n3\n")
    assert "data row 2 has 1 fields but the header has 3" in _err(path, target="y")


def test_csv_empty_feature_becomes_nan(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", "a,b,y\n1,,0\n2,3,1\n")
    ds = load_data(path, target="y")
    assert torch.isnan(ds.x[0, 1])
    with pytest.raises(DataError, match="NaN or infinite"):
        ds.validate()


def test_parquet(tmp_path: Path) -> None:
    path = _write_parquet(
        tmp_path / "t.parquet",
        {"f1": [0.5, 1.5, 2.5], "f2": [1, 2, 3], "flag": [True, False, True], "y": [2, 0, 1]},
    )
    ds = load_data(path, target="y")
    _check(ds, np.array([[0.5, 1, 1], [1.5, 2, 0], [2.5, 3, 1]]), np.array([2, 0, 1]))


def test_numpy_features_with_labels() -> None:
    x, y = _xy(4, (2, 2))
    _check(load_data(x, y), x, y)
    _check(load_data(x.astype(np.uint8), list(y)), x.astype(np.uint8), y)


def test_tensors_keep_shape_and_cast() -> None:
    x = torch.arange(24, dtype=torch.float64).reshape(4, 1, 2, 3)
    y = torch.tensor([0, 1, 1, 0], dtype=torch.int32)
    _check(load_data(x, y), x.numpy(), y.numpy())
    _check(load_data(x.to(torch.int16), y.float()), x.numpy(), y.numpy())


def test_tuple_list_and_dict() -> None:
    x, y = _xy()
    _check(load_data((x, y)), x, y)
    _check(load_data([torch.from_numpy(x), torch.from_numpy(y)]), x, y)
    _check(load_data({"x": x, "y": y, "extra": 1}), x, y)
    _check(load_data(([[0, 1], [2, 3]], [1, 0])), np.array([[0, 1], [2, 3]]), np.array([1, 0]))


def test_array_dataset_returned_as_is() -> None:
    ds = ArrayDataset(torch.zeros(2, 3), torch.tensor([0, 1]))
    assert load_data(ds) is ds


def test_tensor_dataset() -> None:
    x, y = _xy(5, (1, 2, 2))
    ds = load_data(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
    _check(ds, x, y)


class _Pairs(Dataset):
    """Map-style dataset with mixed item types: numpy x, tensor x, python-list x; int / 0-d y."""

    def __init__(self) -> None:
        self.items = [
            (np.array([1.0, 2.0]), 1),
            (torch.tensor([3, 4]), torch.tensor(0)),
            ([5.0, 6.0], np.int64(2)),
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_custom_map_style_dataset() -> None:
    _check(load_data(_Pairs()), np.array([[1, 2], [3, 4], [5, 6]]), np.array([1, 0, 2]))


class _Scalars(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        return float(i) / 2, i % 2


def test_map_style_dataset_of_scalars() -> None:
    _check(load_data(_Scalars()), np.array([0.0, 0.5, 1.0]), np.array([0, 1, 0]))


def test_loaded_data_passes_validate(tmp_path: Path) -> None:
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert load_data(tmp_path / "d.npz").validate() is not None


# ----------------------------------------------------------------------------- errors


def _err(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_data(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_file_names_path(tmp_path: Path) -> None:
    msg = _err(tmp_path / "nope.npz")
    assert f"file '{tmp_path / 'nope.npz'}' not found" in msg
    assert _err(tmp_path / "nope.npz", name="chunk 3").startswith("chunk 3: file")
    assert "is a directory" in _err(tmp_path)


def test_unsupported_extension_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("1 2 3")
    msg = _err(tmp_path / "d.txt")
    assert "'.txt'" in msg and ".npz, .csv, .parquet" in msg


def test_npz_missing_keys_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", features=np.zeros((2, 2)), labels=np.zeros(2))
    msg = _err(tmp_path / "d.npz")
    assert "'x' and 'y'" in msg and "features, labels" in msg and "d.npz" in msg


def test_npz_pickled_objects_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    assert "pickled" in _err(tmp_path / "d.npz")


def test_npz_corrupt(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not a zip file")
    assert "not a .npz (zip) archive" in _err(tmp_path / "d.npz")
    (tmp_path / "e.npz").write_bytes(b"PK\x03\x04truncated")
    assert "not a readable .npz" in _err(tmp_path / "e.npz")


def test_table_needs_target(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", "a,b,y\n1,2,0\n")
    msg = _err(path)
    assert "--target COLUMN" in msg and "a, b, y" in msg


def test_table_target_not_found_lists_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", "a,b,y\n1,2,0\n")
    msg = _err(path, target="label")
    assert "'label'" in msg and "available columns: a, b, y" in msg


def test_parquet_target_not_found_lists_columns(tmp_path: Path) -> None:
    path = _write_parquet(tmp_path / "t.parquet", {"a": [1.0], "cls": [0]})
    assert "available columns: a, cls" in _err(path, target="y")


def test_non_numeric_feature_columns_named(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", "a,color,b,shape,y\n1,red,2,sq,0\n3,blue,4,ci,1\n")
    msg = _err(path, target="y")
    assert "non-numeric feature columns: color, shape" in msg


def test_parquet_non_numeric_feature_columns_named(tmp_path: Path) -> None:
    path = _write_parquet(tmp_path / "t.parquet", {"a": [1.0, 2.0], "s": ["u", "v"], "y": [0, 1]})
    assert "non-numeric feature columns: s" in _err(path, target="y")


def test_string_labels_in_csv(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "iris.csv", "w,species\n1,setosa\n2,virginica\n")
    msg = _err(path, target="species")
    assert "labels in column 'species' are strings; map them to integer class ids 0..K-1" in msg


def test_parquet_list_column(tmp_path: Path) -> None:
    path = _write_parquet(tmp_path / "t.parquet", {"a": [[1, 2], [3, 4]], "y": [0, 1]})
    assert "non-numeric feature columns: a" in _err(path, target="y")
    assert "labels in column 'a' are not numbers" in _err(path, target="a")


def test_string_labels_in_parquet(tmp_path: Path) -> None:
    path = _write_parquet(tmp_path / "t.parquet", {"w": [1.0, 2.0], "species": ["a", "b"]})
    assert "labels in column 'species' are strings" in _err(path, target="species")


def test_string_labels_in_arrays() -> None:
    assert "are strings; map them to integer class ids" in _err(np.zeros((2, 2)), ["a", "b"])
    assert "are strings" in _err(np.zeros((2, 2)), np.array(["a", 1], dtype=object))


def test_fractional_float_labels() -> None:
    msg = _err(np.zeros((3, 2)), np.array([0.0, 1.5, 2.0]))
    assert "not whole numbers" in msg and "1.5" in msg
    assert "not whole numbers" in _err(torch.zeros(2, 2), torch.tensor([0.25, 1.0]))


def test_missing_labels(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", "a,y\n1,0\n2,\n3,1\n")
    msg = _err(path, target="y")
    assert "missing" in msg and "1 row(s)" in msg


def test_label_length_mismatch() -> None:
    msg = _err(np.zeros((4, 2)), np.zeros(3, dtype=int))
    assert "4 feature rows but 3 labels" in msg


def test_labels_not_1d() -> None:
    msg = _err(np.zeros((4, 2)), np.eye(4, 3))
    assert "shape (4, 3)" in msg and "1-D" in msg and "argmax" in msg


def test_features_without_labels() -> None:
    assert "load_data(x, y)" in _err(np.zeros((3, 2)))


def test_non_numeric_feature_array() -> None:
    assert "not numbers" in _err(np.array([["a", "b"]]), [0])


def test_scalar_features() -> None:
    assert "single number" in _err(np.array(3.0), [0])


def test_dict_missing_keys() -> None:
    msg = _err({"data": np.zeros((2, 2)), "target": [0, 1]})
    assert "'x' and 'y'" in msg and "data, target" in msg


def test_tuple_wrong_length() -> None:
    assert "exactly two" in _err((np.zeros((2, 2)), [0, 1], [1, 1]))


def test_y_given_twice() -> None:
    x, y = _xy()
    assert "drop the separate y" in _err((x, y), y)


def test_target_for_non_table() -> None:
    x, y = _xy()
    assert "CSV/Parquet" in _err((x, y), target="y")


def test_unsupported_type() -> None:
    assert "cannot load" in _err(42)


def test_name_used_in_messages() -> None:
    assert _err(np.zeros((2, 2)), [0], name="chunk-7").startswith("chunk-7")


def test_dataset_bad_items() -> None:
    class Bad(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return {"x": 1}

    assert "not an (x, y) pair" in _err(Bad())


def test_dataset_ragged_items() -> None:
    class Ragged(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return torch.zeros(2 + i), 0

    assert "item 1" in _err(Ragged()) and "same shape" in _err(Ragged())


def test_iterable_dataset_refused() -> None:
    class It(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2), 0

    assert "map-style" in _err(It())


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    msg = _err(tmp_path / "t.parquet", target="y")
    assert msg == "reading Parquet needs pyarrow; pip install 'ricordo[tables]'"
