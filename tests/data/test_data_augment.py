"""Batched augmentations: crop/flip/normalize semantics, spec parsing, determinism, speed."""

from __future__ import annotations

import pytest
import torch

from ricordo.data.augment import (
    AUGMENTATIONS,
    NORMALIZE_PRESETS,
    Augmentation,
    crop_at,
    horizontal_flip,
    normalize,
    random_crop,
)
from ricordo.errors import ConfigError, DataError


def images(n: int = 6, c: int = 3, h: int = 7, w: int = 5, seed: int = 0) -> torch.Tensor:
    # strictly positive, so zeros in an output can only come from the padding
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) + 0.1


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], zero outside: a reference translation."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    ys_in, xs_in = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
    out[..., ys, xs] = x[..., ys_in, xs_in]
    return out


def test_crop_at_the_padding_offset_is_identity() -> None:
    x = images()
    p = 3
    same = crop_at(x, p, torch.full((6,), p), torch.full((6,), p))
    assert torch.equal(same, x)


def test_crop_at_matches_a_reference_translation() -> None:
    x = images(n=4)
    top, left = torch.tensor([0, 4, 2, 1]), torch.tensor([4, 0, 3, 2])
    out = crop_at(x, 2, top, left)
    for i in range(4):
        assert torch.equal(out[i], shifted(x[i], int(top[i]) - 2, int(left[i]) - 2))


def test_random_crop_shifts_by_at_most_padding_and_keeps_shape() -> None:
    x, p = images(n=40, h=8, w=8), 2
    out = random_crop(x, p, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if torch.equal(out[i], shifted(x[i], dy, dx))
        ]
        assert len(found) == 1, f"sample {i} is not a translation by <= {p}"
        shifts.add(found[0])
    assert len(shifts) > 5  # offsets really vary per sample


def test_crop_handles_single_channel_without_channel_dim() -> None:
    x = images(n=3, c=1)[:, 0]  # (N, H, W)
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(random_crop(x, 0), x)
    with pytest.raises(DataError, match=r"image batches \(N, C, H, W\)"):
        random_crop(torch.ones(4, 10), 2)


def test_same_generator_seed_same_result_other_seed_differs() -> None:
    x = images(n=32)
    pipeline = Augmentation.parse("crop:2,flip")
    a = pipeline(x, torch.Generator().manual_seed(7))
    b = pipeline(x, torch.Generator().manual_seed(7))
    c = pipeline(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip() -> None:
    x = images()
    assert torch.equal(horizontal_flip(x, 1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(horizontal_flip(horizontal_flip(x, 1.0), 1.0), x)
    assert torch.equal(horizontal_flip(x, 0.0), x)
    many = images(n=400, h=2, w=3)
    out = horizontal_flip(many, 0.5, torch.Generator().manual_seed(0))
    flipped = (out == many.flip(-1)).flatten(1).all(1)
    kept = (out == many).flatten(1).all(1)
    assert bool((flipped | kept).all())  # each sample is either flipped or untouched
    assert 150 < int(flipped.sum()) < 250


def test_normalize_matches_manual() -> None:
    x = images()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, mean, std), manual)
    assert torch.allclose(normalize(x, 0.5, 0.5), (x - 0.5) / 0.5)
    preset_mean, preset_std = NORMALIZE_PRESETS["cifar10"]
    via_spec = Augmentation.parse("normalize:cifar10")(x)
    assert torch.allclose(via_spec, normalize(x, preset_mean, preset_std))
    with pytest.raises(DataError, match="3 channel means"):
        normalize(torch.ones(2, 1, 4, 4), mean, std)


def test_spec_parsing() -> None:
    pipeline = Augmentation.parse("crop:4, flip, normalize:cifar10")
    assert [s.name for s in pipeline.steps] == ["crop", "flip", "normalize"]
    assert pipeline.spec == "crop:4,flip:0.5,normalize:cifar10"
    assert not pipeline.random and Augmentation.parse("crop,flip:1").random
    two = Augmentation.parse("normalize:0.5,0.5")
    assert torch.allclose(two(torch.ones(1, 1, 2, 2)), torch.ones(1, 1, 2, 2))
    six = Augmentation.parse("normalize:0.4,0.5,0.6,1,2,4,flip:1")
    x = images(n=2)
    assert torch.allclose(six(x), normalize(x, (0.4, 0.5, 0.6), (1, 2, 4)).flip(-1))
    assert set(AUGMENTATIONS.names()) >= {"crop", "flip", "normalize"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("blur", "unknown augmentation 'blur'; choose one of: crop, flip, normalize"),
        ("crop:x", "not an integer"),
        ("crop:-1", "padding -1 is invalid"),
        ("flip:2", "probability 2.0 is invalid"),
        ("normalize:imagenet9", "takes a preset"),
        ("normalize:0.5,0.5,0.5", "takes a preset"),
        ("normalize:0.5,0", "must be positive"),
        ("crop,,flip", "empty step"),
        ("", "empty step"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Augmentation.parse(spec)
