"""Domain-incremental transforms: permuted pixels, rotated images, shifted hues."""

from __future__ import annotations

import math

import pytest
import torch

from ricordo.data import ArrayDataset, make_scenario
from ricordo.data.scenarios import permute_features, rotate, shift_hue
from ricordo.data.scenarios.transforms import hsv_to_rgb, rgb_to_hsv
from ricordo.errors import DataError


def _ramp(n: int = 8, shape: tuple[int, ...] = (1, 3, 4)) -> ArrayDataset:
    """Every row is 0..D-1 (reshaped), so a permuted row spells out its permutation."""
    d = math.prod(shape)
    x = torch.arange(d, dtype=torch.float32).repeat(n, 1).reshape(n, *shape)
    return ArrayDataset(x, torch.arange(n) % 4)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    """Like torch.testing.assert_close, without its 1.5 s first-call import cost."""
    assert a.shape == b.shape and float((a - b).abs().max()) <= atol, float((a - b).abs().max())


def _rgb(n: int = 12, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(n, 3, 5, 5, generator=g), torch.arange(n) % 3)


# --------------------------------------------------------------------------------- permutation


def test_permutation_is_a_fixed_bijection_per_chunk() -> None:
    train, test = _ramp(8), _ramp(3)
    sc = make_scenario("permutation", train, test, 4, 0)
    d = 12
    perms = []
    for k in range(4):
        rows = sc.train[k].x.reshape(len(train), d).long()
        perm = rows[0]
        assert torch.equal(torch.sort(perm).values, torch.arange(d))  # a bijection of features
        assert (rows == perm).all()  # the same for every sample of the chunk
        test_rows = sc.test[k].x.reshape(len(test), d).long()
        assert (test_rows == perm).all()  # train and test of a chunk share it
        assert sc.train[k].feature_shape == (1, 3, 4)
        assert torch.equal(sc.train[k].y, train.y) and len(sc.test[k]) == len(test)
        perms.append(perm)
    assert torch.equal(perms[0], torch.arange(d))  # chunk 0 is the identity
    assert len({tuple(p.tolist()) for p in perms}) == 4  # each chunk its own permutation
    seeds = sc.info["permutation_seeds"]
    assert seeds[0] is None and len(seeds) == 4
    for k in (1, 2, 3):  # documented: each permutation is reproducible from its own seed
        expect = torch.randperm(d, generator=torch.Generator().manual_seed(seeds[k]))
        assert torch.equal(perms[k], expect)
    assert sc.chunk_classes == [[0, 1, 2, 3]] * 4
    other = make_scenario("permutation", train, test, 4, 1)
    assert not torch.equal(other.train[1].x, sc.train[1].x)


def test_permutation_split_data_partitions_the_train_set() -> None:
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    train = ArrayDataset(x, torch.arange(20) % 2)
    sc = make_scenario("permutation", train, train, 3, 0, options={"split_data": True})
    assert [len(c) for c in sc.train] == [7, 7, 6]
    firsts = torch.cat([c.x.min(1).values for c in sc.train])  # a row's min identifies it
    assert torch.equal(torch.sort(firsts).values, x[:, 0])
    assert all(len(t) == 20 for t in sc.test)
    assert torch.equal(sc.train[0].x, x[torch.isin(x[:, 0], sc.train[0].x[:, 0])])


def test_permute_features_keeps_shape() -> None:
    x = torch.arange(24.0).reshape(2, 3, 4)
    out = permute_features(x, torch.arange(11, -1, -1))
    assert out.shape == x.shape and torch.equal(out.reshape(2, -1), x.reshape(2, -1).flip(1))


# ------------------------------------------------------------------------------------ rotation


def test_rotate_90_matches_rot90() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 6, 6, generator=g)
    _close(rotate(x, 90), torch.rot90(x, 1, dims=(2, 3)))
    _close(rotate(x, -90), torch.rot90(x, -1, dims=(2, 3)))
    _close(rotate(x, 180), torch.flip(x, (2, 3)))
    _close(rotate(x, 360), x)
    wide = torch.rand(1, 1, 4, 8, generator=g)  # non-square: rigid, not stretched
    square = torch.zeros(1, 1, 8, 8)
    square[:, :, 2:6] = wide
    _close(rotate(wide, 90), torch.rot90(square, 1, dims=(2, 3))[:, :, 2:6])
    small = rotate(x, 90, batch_pixels=40)  # one image per batch: same numbers
    _close(small, rotate(x, 90))


def test_rotation_scenario_angles_and_chunks() -> None:
    g = torch.Generator().manual_seed(1)
    train = ArrayDataset(torch.rand(10, 1, 6, 6, generator=g), torch.arange(10) % 5)
    test = ArrayDataset(torch.rand(4, 1, 6, 6, generator=g), torch.arange(4))
    sc = make_scenario("rotation", train, test, 4, 0, options={"max_degrees": 360})
    assert sc.info["angles"] == [0.0, 90.0, 180.0, 270.0]
    for k in range(4):
        expect = torch.rot90(train.x, k, dims=(2, 3))
        _close(sc.train[k].x, expect)
        _close(sc.test[k].x, torch.rot90(test.x, k, dims=(2, 3)))
        assert torch.equal(sc.train[k].y, train.y)
    default = make_scenario("rotation", train, test, 3, 0)
    assert default.info["angles"] == [0.0, 60.0, 120.0]
    given = make_scenario("rotation", train, test, 2, 0, options={"degrees": [-90, 90]})
    assert given.info["angles"] == [-90.0, 90.0]
    _close(given.train[0].x, torch.rot90(train.x, -1, dims=(2, 3)))
    # the angles are deterministic; the seed only matters with split_data
    assert torch.equal(make_scenario("rotation", train, test, 3, 9).train[2].x, default.train[2].x)


def test_rotation_needs_images() -> None:
    flat = ArrayDataset(torch.zeros(4, 64), torch.arange(4))
    with pytest.raises(DataError) as info:
        make_scenario("rotation", flat, flat, 2, 0, data_name="digits")
    assert str(info.value) == (
        "rotation needs images with features shaped (C, H, W); digits has features shaped (64,); "
        "reshape flat features first, e.g. x.reshape(-1, 1, 28, 28), or use the permutation "
        "scenario"
    )


# ----------------------------------------------------------------------------------- hue shift


def test_hsv_round_trip_and_known_colours() -> None:
    x = _rgb().x
    _close(hsv_to_rgb(rgb_to_hsv(x)), x)
    pure = torch.eye(3).reshape(3, 3, 1, 1)  # red, green, blue
    _close(rgb_to_hsv(pure)[:, 0, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3]))
    # red shifted by a third of the wheel is green, by two thirds blue
    _close(shift_hue(pure[:1], 1 / 3), pure[1:2])
    _close(shift_hue(pure[:1], 2 / 3), pure[2:3])
    grey = torch.full((1, 3, 2, 2), 0.4)
    _close(shift_hue(grey, 0.3), grey)  # no hue to shift


def test_hue_shift_full_turn_returns_the_input() -> None:
    x = _rgb().x
    _close(shift_hue(x, 1.0), x)
    _close(shift_hue(x, 0.999999), x, atol=1e-4)
    turned = shift_hue(shift_hue(shift_hue(shift_hue(x, 0.25), 0.25), 0.25), 0.25)
    _close(turned, x)
    assert (shift_hue(x, 0.5) - x).abs().max() > 0.1


def test_hue_shift_scenario() -> None:
    train, test = _rgb(12), _rgb(6, seed=1)
    sc = make_scenario("hue-shift", train, test, 4, 0)
    assert sc.info["hue_shifts"] == [0.0, 0.25, 0.5, 0.75]
    assert torch.equal(sc.train[0].x, train.x)
    for k in range(4):
        _close(sc.train[k].x, shift_hue(train.x, k / 4))
        _close(sc.test[k].x, shift_hue(test.x, k / 4))
    # away from grey pixels (no defined hue), chunk k's hue is the source hue + k/4 turns
    hsv = rgb_to_hsv(train.x)
    coloured = hsv[:, 1] > 0.05
    for k in range(1, 4):
        gap = rgb_to_hsv(sc.train[k].x)[:, 0] - hsv[:, 0] - k / 4
        off = torch.remainder(gap + 0.5, 1.0) - 0.5  # distance on the colour wheel
        assert off[coloured].abs().max() < 2e-4
    given = make_scenario("hue-shift", train, test, 2, 0, options={"shifts": [0.5, 1.0]})
    _close(given.train[1].x, train.x)


def test_hue_shift_refuses_grey_and_unscaled_images() -> None:
    grey = ArrayDataset(torch.rand(4, 1, 8, 8), torch.arange(4))
    with pytest.raises(DataError) as info:
        make_scenario("hue-shift", grey, grey, 2, 0, data_name="digits")
    assert str(info.value) == (
        "hue-shift needs images with features shaped (3, H, W); digits has features shaped "
        "(1, 8, 8); use rotation or permutation for other images, or repeat a grey channel: "
        "x.expand(-1, 3, -1, -1)"
    )
    flat = ArrayDataset(torch.rand(4, 12), torch.arange(4))
    with pytest.raises(
        DataError, match=r"features shaped \(3, H, W\); data has features shaped \(12,\)"
    ):
        make_scenario("hue-shift", flat, flat, 2, 0, data_name="data")
    big = ArrayDataset(_rgb().x * 255, torch.arange(12) % 3)
    with pytest.raises(
        DataError, match=r"RGB values in \[0, 1\]; cifar has values in \[0\.\d+, 25\d"
    ):
        make_scenario("hue-shift", big, _rgb(), 2, 0, data_name="cifar")
    with pytest.raises(DataError, match="the test set of cifar has values in"):
        make_scenario("hue-shift", _rgb(), big, 2, 0, data_name="cifar")
