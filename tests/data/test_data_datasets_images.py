"""Image folders: class ids from sorted folder names, modes, sizes, resizing and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image  # noqa: E402

from ricordo.data import load_builtin
from ricordo.data.image_folder import image_folder_classes, load_image_folder
from ricordo.errors import ConfigError, DataError


def save(path: Path, array: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def colour_folder(root: Path, per_class: int = 5, size: tuple[int, int] = (6, 4)) -> dict:
    """root/<class>/<i>.png, RGB; class c has every pixel = (10c + i, 2i, 255 - c)."""
    pixels = {}
    for c, name in enumerate(["zebra", "ant", "moth"]):  # sorted: ant, moth, zebra
        for i in range(per_class):
            array = np.zeros((*size, 3), dtype=np.uint8)
            array[...] = (10 * c + i, 2 * i, 255 - c)
            save(root / name / f"{i:02d}.png", array)
            pixels[(name, i)] = array
    return pixels


def test_classes_are_sorted_folder_names(tmp_path: Path) -> None:
    colour_folder(tmp_path)
    (tmp_path / ".hidden").mkdir()
    assert image_folder_classes(tmp_path) == ["ant", "moth", "zebra"]


def test_load_all_rgb_values_labels(tmp_path: Path) -> None:
    pixels = colour_folder(tmp_path)
    data = load_image_folder(tmp_path)
    assert data.x.shape == (15, 3, 6, 4) and data.x.dtype == torch.float32
    assert data.y.tolist() == [0] * 5 + [1] * 5 + [2] * 5  # ant, moth, zebra
    expected = torch.from_numpy(pixels[("moth", 3)]).permute(2, 0, 1).float() / 255
    assert torch.equal(data.x[5 + 3], expected)


def test_grayscale_images_give_one_channel_and_mode_can_force_rgb(tmp_path: Path) -> None:
    for c in ("a", "b"):
        for i in range(3):
            save(tmp_path / c / f"{i}.png", np.full((5, 7), 40 * i, dtype=np.uint8))
    gray = load_image_folder(tmp_path)
    assert gray.x.shape == (6, 1, 5, 7)
    assert torch.allclose(gray.x[2], torch.full((1, 5, 7), 80 / 255))
    rgb = load_image_folder(tmp_path, mode="RGB")
    assert rgb.x.shape == (6, 3, 5, 7) and torch.equal(rgb.x[:, :1], gray.x)


def test_different_sizes_need_a_size_and_get_resized(tmp_path: Path) -> None:
    save(tmp_path / "a" / "big.png", np.full((8, 10, 3), 200, dtype=np.uint8))
    save(tmp_path / "b" / "small.png", np.full((4, 4, 3), 100, dtype=np.uint8))
    with pytest.raises(DataError, match=r"differ in size: a/big.png is 8x10 .* pass size=\(H, W\)"):
        load_image_folder(tmp_path)
    data = load_image_folder(tmp_path, size=(3, 5))
    assert data.x.shape == (2, 3, 3, 5)
    assert torch.allclose(data.x[0], torch.full((3, 3, 5), 200 / 255))  # flat colour survives
    assert load_image_folder(tmp_path, size=6).x.shape == (2, 3, 6, 6)


def test_jpeg_and_upper_case_suffixes(tmp_path: Path) -> None:
    save(tmp_path / "a" / "x.JPG", np.full((4, 4, 3), 128, dtype=np.uint8), fmt="JPEG")
    save(tmp_path / "b" / "y.jpeg", np.full((4, 4, 3), 64, dtype=np.uint8), fmt="JPEG")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.x.shape == (2, 3, 4, 4) and data.y.tolist() == [0, 1]
    assert abs(float(data.x[0].mean()) - 128 / 255) < 0.02  # lossy, but close


def test_stratified_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    colour_folder(tmp_path, per_class=10)
    train = load_image_folder(tmp_path, split="train")
    test = load_image_folder(tmp_path, split="test")
    assert len(train) == 24 and len(test) == 6
    assert torch.bincount(test.y).tolist() == [2, 2, 2]
    rows = {tuple(r) for r in train.x.flatten(1).tolist()}
    assert not any(tuple(r) in rows for r in test.x.flatten(1).tolist())
    again = load_image_folder(tmp_path, split="test")
    assert torch.equal(again.x, test.x)
    other_seed = load_image_folder(tmp_path, split="test", seed=1)
    assert not torch.equal(other_seed.x, test.x)
    pair = load_builtin("image-folder", root=tmp_path)
    assert torch.equal(pair[0].x, train.x) and torch.equal(pair[1].x, test.x)


def test_train_and_test_folders_share_class_ids(tmp_path: Path) -> None:
    red, blue = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    save(tmp_path / "train" / "red" / "1.png", red)
    save(tmp_path / "train" / "red" / "2.png", red)
    save(tmp_path / "test" / "blue" / "1.png", blue)  # blue only in test
    save(tmp_path / "test" / "red" / "3.png", red)
    assert image_folder_classes(tmp_path) == ["blue", "red"]
    train, test = load_builtin("image-folder", root=tmp_path)
    assert train.y.tolist() == [1, 1] and test.y.tolist() == [0, 1]
    assert float(test.x[0, 2].mean()) == 1.0
    assert len(load_image_folder(tmp_path)) == 4
    assert torch.equal(load_image_folder(tmp_path, split="test").y, test.y)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="train/ folder but no test/"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="needs root=FOLDER"):
        load_builtin("image-folder")
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_image_folder(empty)
    (empty / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_image_folder(empty)


def test_cli_string_options_are_converted(tmp_path: Path) -> None:
    colour_folder(tmp_path, per_class=4)
    train, test = load_builtin(
        "image-folder", root=tmp_path, size="3x5", test_fraction="0.5", seed="1"
    )
    assert train.x.shape == (6, 3, 3, 5) and len(test) == 6
    assert load_image_folder(tmp_path, size="2,4").x.shape[-2:] == (2, 4)
    assert load_image_folder(tmp_path, size="3").x.shape[-2:] == (3, 3)
    with pytest.raises(ConfigError, match="option seed='one' is not a valid int"):
        load_builtin("image-folder", root=tmp_path, seed="one")
    with pytest.raises(DataError, match="size='0x4' is invalid"):
        load_image_folder(tmp_path, size="0x4")
