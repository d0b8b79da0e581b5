"""MNIST/Fashion-MNIST idx files and CIFAR binary files: parsing, locating, downloading.

Every file here is a tiny fake written by the test in the real on-disk format; downloads use
``file://`` URLs or an http.server on 127.0.0.1 (no network), with checksums passed in.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo.data import DATASETS, load_builtin
from ricordo.data.download import Resource, default_root, fetch, safe_extract_tar
from ricordo.data.vision import SOURCES, read_cifar_bin, read_idx
from ricordo.errors import ConfigError, DataError

MNIST_NAMES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


# ------------------------------------------------------------------------------ writers


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    dims = np.array(array.shape, dtype=">u4").tobytes()
    return header + dims + array.tobytes()


def fake_mnist(seed: int = 0, n_train: int = 7, n_test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_mnist(folder: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in MNIST_NAMES.items():
        data = idx_bytes(arrays[key])
        if compress:
            (folder / name).write_bytes(gzip.compress(data))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(data)


def cifar_records(labels: list[tuple[int, ...]], seed: int) -> tuple[bytes, np.ndarray]:
    """Records of label bytes + 3072 pixels; returns the bytes and the (N, 3, 32, 32) pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    raw = b"".join(bytes(lab) + pixels[i].tobytes() for i, lab in enumerate(labels))
    return raw, pixels


def write_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        labels = [(i,), ((i + 3) % 10,)]
        raw, pixels = cifar_records(labels, seed=i)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        xs.append(pixels)
        ys += [lab[0] for lab in labels]
    raw, test_pixels = cifar_records([(9,), (0,), (5,)], seed=99)
    (folder / "test_batch.bin").write_bytes(raw)
    return np.concatenate(xs), np.array(ys), test_pixels, np.array([9, 0, 5])


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (random port); yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ------------------------------------------------------------------------------ idx / MNIST


def test_read_idx_round_trips_each_type(tmp_path: Path) -> None:
    for array in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 7, 1 << 20], dtype=">i4"),
        np.array([[0.5, -1.25]], dtype=">f4"),
    ):
        path = tmp_path / "a.idx"
        path.write_bytes(idx_bytes(array))
        out = read_idx(path)
        assert out.shape == array.shape and np.array_equal(out, array)
        assert out.dtype.isnative


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\x00" * 8))
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(path)
    good = idx_bytes(np.zeros((4, 2, 2), dtype=np.uint8))
    path.write_bytes(good[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_loads_shapes_values_labels(tmp_path: Path, compress: bool) -> None:
    arrays = fake_mnist()
    write_mnist(tmp_path / "mnist", arrays, compress=compress)
    train, test = load_builtin("mnist", root=tmp_path)
    assert train.x.shape == (7, 1, 28, 28) and test.x.shape == (3, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert torch.equal(train.x[:, 0], torch.from_numpy(arrays["train_x"]).float() / 255)
    assert torch.equal(test.x[:, 0], torch.from_numpy(arrays["test_x"]).float() / 255)
    assert train.y.tolist() == arrays["train_y"].tolist()
    assert test.y.tolist() == arrays["test_y"].tolist()
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0


def test_fashion_mnist_reads_its_own_folder_or_the_root_itself(tmp_path: Path) -> None:
    arrays = fake_mnist(seed=3)
    write_mnist(tmp_path / "fashion-mnist", arrays)
    write_mnist(tmp_path / "flat", fake_mnist(seed=4))
    train, _ = load_builtin("fashion-mnist", root=tmp_path)
    assert train.y.tolist() == arrays["train_y"].tolist()
    # files placed directly in the folder passed as root are found as well
    flat, _ = load_builtin("fashion-mnist", root=tmp_path / "flat")
    assert flat.y.tolist() == fake_mnist(seed=4)["train_y"].tolist()


def test_default_root_honours_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RICORDO_DATA", str(tmp_path))
    assert default_root() == tmp_path
    write_mnist(tmp_path / "mnist", fake_mnist())
    train, _ = load_builtin("mnist")
    assert len(train) == 7
    monkeypatch.delenv("RICORDO_DATA")
    assert default_root() == Path.home() / ".cache" / "ricordo" / "datasets"


def test_missing_files_name_folder_files_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_builtin("mnist", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "mnist") in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "pass --download" in message and "place the files there" in message
    with pytest.raises(DataError, match="cifar-10-batches-bin.*data_batch_1.bin"):
        load_builtin("cifar10", root=tmp_path)


def test_mismatched_image_and_label_counts(tmp_path: Path) -> None:
    arrays = fake_mnist()
    arrays["train_y"] = arrays["train_y"][:5]
    write_mnist(tmp_path / "mnist", arrays)
    with pytest.raises(DataError, match=r"shape \(7, 28, 28\).*\(5,\)"):
        load_builtin("mnist", root=tmp_path)


# ------------------------------------------------------------------------------ CIFAR


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    x, y, test_x, test_y = write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-bin")
    train, test = load_builtin("cifar10", root=tmp_path)
    assert train.x.shape == (10, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    assert train.y.tolist() == y.tolist() and test.y.tolist() == test_y.tolist()
    assert torch.equal(train.x, torch.from_numpy(x).float() / 255)
    assert torch.equal(test.x, torch.from_numpy(test_x).float() / 255)
    # channel-major planes: byte 1 + 1024 of a record is the green value of pixel (0, 0)
    raw = (tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert test.x[0, 1, 0, 0] == raw[1 + 1024] / 255 and test.x[0, 0, 0, 1] == raw[2] / 255


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    raw, pixels = cifar_records([(3, 42), (19, 99), (0, 7)], seed=1)
    (folder / "train.bin").write_bytes(raw)
    (folder / "test.bin").write_bytes(cifar_records([(1, 11)], seed=2)[0])
    train, test = load_builtin("cifar100", root=tmp_path)
    assert train.y.tolist() == [42, 99, 7] and test.y.tolist() == [11]
    assert torch.equal(train.x, torch.from_numpy(pixels).float() / 255)
    coarse, _ = load_builtin("cifar100", root=tmp_path, labels="coarse")
    assert coarse.y.tolist() == [3, 19, 0]
    with pytest.raises(DataError, match="'fine' or 'coarse'"):
        load_builtin("cifar100", root=tmp_path, labels="middle")


def test_cifar_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "test_batch.bin"
    path.write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="3073-byte CIFAR record.*binary version"):
        read_cifar_bin(path, 1, 0)


# ------------------------------------------------------------------------------ registry


def test_registry_and_options() -> None:
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder", "hf"} <= set(
        DATASETS.names()
    )
    with pytest.raises(ConfigError, match=r"no option\(s\) \['colour'\]; its options: labels"):
        load_builtin("cifar100", colour=True)
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        load_builtin("svhn")


def test_official_sources_table() -> None:
    assert SOURCES["cifar10"][0].md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert SOURCES["cifar100"][0].md5 == "03b5dce01913d631647c71ecec9e9cb8"
    assert SOURCES["cifar10"][0].urls[0].endswith("cifar-10-binary.tar.gz")  # never pickles
    assert [r.filename for r in SOURCES["mnist"]] == list(MNIST_NAMES.values())
    assert SOURCES["mnist"][0].md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert SOURCES["fashion-mnist"][0].md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    with pytest.raises(DataError, match="no checksum"):
        Resource("a.bin", ("file:///a.bin",))


# ------------------------------------------------------------------------------ downloads


def test_download_cifar10_archive_from_a_file_url(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    x, y, _, test_y = write_cifar10(staging / "cifar-10-batches-bin")
    files = {
        f"cifar-10-batches-bin/{p.name}": p.read_bytes()
        for p in sorted((staging / "cifar-10-batches-bin").iterdir())
    }
    archive = tmp_path / "served" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(tar_gz(files))
    sources = [Resource(archive.name, (archive.as_uri(),), md5=md5(archive.read_bytes()))]
    root = tmp_path / "data"
    train, test = load_builtin("cifar10", root=root, download=True, sources=sources)
    assert train.y.tolist() == y.tolist() and test.y.tolist() == test_y.tolist()
    assert (root / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    assert not (root / "cifar10" / archive.name).exists()  # archive removed once extracted
    # a second call finds the files and downloads nothing (the source is gone now)
    archive.unlink()
    again, _ = load_builtin("cifar10", root=root, download=True, sources=sources)
    assert torch.equal(again.x, train.x)


def test_download_mnist_over_http_with_a_dead_mirror_first(tmp_path: Path) -> None:
    served = tmp_path / "served"
    arrays = fake_mnist(seed=5)
    write_mnist(served, arrays)
    with http_server(served) as base:
        sources = [
            Resource(
                name,
                ((tmp_path / "nowhere" / name).as_uri(), base + name),
                sha256=hashlib.sha256((served / name).read_bytes()).hexdigest(),
            )
            for name in MNIST_NAMES.values()
        ]
        train, test = load_builtin("mnist", root=tmp_path / "data", download=True, sources=sources)
    assert train.y.tolist() == arrays["train_y"].tolist() and len(test) == 3
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(
        MNIST_NAMES.values()
    )


def test_checksum_mismatch_deletes_the_download_and_says_so(tmp_path: Path) -> None:
    served = tmp_path / "served"
    write_mnist(served, fake_mnist())
    name = MNIST_NAMES["train_x"]
    with http_server(served) as base:
        resource = Resource(name, (base + name,), md5="0" * 32)
        with pytest.raises(DataError) as info:
            fetch(resource, tmp_path / "data", progress=False)
    message = str(info.value)
    assert "checksum mismatch" in message and name in message and "deleted" in message
    assert "expected md5 " + "0" * 32 in message
    assert list((tmp_path / "data").iterdir()) == []  # neither the file nor a .part is left
    sources = [Resource(n, ((served / n).as_uri(),), md5="f" * 32) for n in MNIST_NAMES.values()]
    with pytest.raises(DataError, match="checksum mismatch"):
        load_builtin("mnist", root=tmp_path / "data", download=True, sources=sources)
    assert not (tmp_path / "data" / "mnist" / name).exists()


def test_download_failure_names_url_and_fix(tmp_path: Path) -> None:
    url = (tmp_path / "missing.gz").as_uri()
    with pytest.raises(DataError, match="could not download missing.gz from file://.*place the"):
        fetch(Resource("missing.gz", (url,), md5="0" * 32), tmp_path / "data", progress=False)


def test_fetch_keeps_a_verified_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"hello")
    resource = Resource("a.bin", ((tmp_path / "gone").as_uri(),), md5=md5(b"hello"))
    assert fetch(resource, folder, progress=False).read_bytes() == b"hello"


# ------------------------------------------------------------------------------ tar safety


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/abs-evil.txt", "ok/../../evil.txt"])
def test_tar_path_traversal_is_rejected(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_gz({"fine.txt": b"ok", name: b"evil"}))
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="unsafe member path"):
        safe_extract_tar(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not (dest / "fine.txt").exists()


def test_tar_links_are_rejected(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("data/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    archive = tmp_path / "links.tar"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="link or special file"):
        safe_extract_tar(archive, tmp_path / "out")


def test_tar_extracts_regular_members(tmp_path: Path) -> None:
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(tar_gz({"a/b.txt": b"B", "c.txt": b"C"}))
    safe_extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"B"
    assert (tmp_path / "out" / "c.txt").read_bytes() == b"C"
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="not a readable tar archive"):
        safe_extract_tar(tmp_path / "junk.tar", tmp_path / "out2")
