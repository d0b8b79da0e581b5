"""Domain-incremental scenarios: every chunk has all classes, seen through its own input transform.

Convention for ``permutation``, ``rotation`` and ``hue-shift``: chunk 0 is the untransformed data;
by default every chunk trains on the FULL train set (Avalanche's PermutedMNIST/RotatedMNIST), and
``split_data=True`` gives each chunk a disjoint random 1/updates of it instead (Renate's
``TransformScenario``). Test chunk k is always the full test set under chunk k's transform.
The tensor ops (``permute_features``, ``rotate``, ``shift_hue``) are batched torch, no torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from ricordo.data.dataset import ArrayDataset
from ricordo.data.scenarios.base import (
    SCENARIOS,
    Scenario,
    check_args,
    check_bool,
    check_numbers,
    info,
    random_parts,
    rng,
    too_many_updates,
    with_x,
)
from ricordo.errors import DataError

# ----------------------------------------------------------------------------------- tensor ops


def permute_features(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x`` with its flattened features reordered by ``perm``, shape kept."""
    return x.reshape(len(x), -1)[:, perm.to(x.device)].reshape(x.shape)


def rotate(x: torch.Tensor, degrees: float, *, batch_pixels: int = 1 << 22) -> torch.Tensor:
    """Images (N, C, H, W) rotated counter-clockwise by ``degrees`` about their centre.

    Bilinear sampling; corners that come from outside the image are 0 (torchvision's default).
    A positive angle turns the picture like ``torch.rot90(x, 1, dims=(2, 3))``. Works in
    batches of about ``batch_pixels`` grid points to bound memory.
    """
    if x.ndim != 4:
        raise DataError(f"rotate needs images shaped (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if degrees % 360 == 0 or n == 0:
        return x.clone()
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    # grid_sample works in [-1, 1] coordinates; scale by (W, H) so non-square images rotate
    # rigidly. Each output pixel samples the input at the point rotated back by -degrees.
    theta = torch.tensor(
        [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype, device=x.device
    )
    step = max(1, batch_pixels // (h * w))
    out = torch.empty_like(x)
    for i in range(0, n, step):
        xb = x[i : i + step]
        grid = F.affine_grid(theta.expand(len(xb), 2, 3), list(xb.shape), align_corners=False)
        out[i : i + step] = F.grid_sample(
            xb, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
    return out


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB images (N, 3, H, W) in [0, 1] to HSV with hue in [0, 1) (a fraction of the wheel)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0.0)
    return torch.stack([torch.remainder(hue, 1.0), sat, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_hsv`` (hue taken modulo 1)."""
    h, s, v = x.unbind(1)
    channels = []
    for n in (5.0, 3.0, 1.0):  # r, g, b
        k = torch.remainder(n + h * 6.0, 6.0)
        weight = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        channels.append(v - v * s * weight)
    return torch.stack(channels, 1)


def shift_hue(x: torch.Tensor, turns: float) -> torch.Tensor:
    """RGB images (N, 3, H, W) in [0, 1] with hue rotated by ``turns`` of the colour wheel."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise DataError(f"shift_hue needs RGB images shaped (N, 3, H, W), got {tuple(x.shape)}")
    if turns % 1.0 == 0:
        return x.clone()
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + turns, 1.0)
    return hsv_to_rgb(hsv).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------- helpers


def _transformed(
    name: str,
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    split_data: bool,
    transforms: list[Callable[[torch.Tensor], torch.Tensor]],
    data_name: str,
) -> tuple[list[ArrayDataset], list[ArrayDataset], list[list[int]]]:
    """Train/test chunks: chunk k is (a random part of) the data under ``transforms[k]``."""
    if split_data:
        too_many_updates(f"{name} with split_data", updates, len(train), "samples", data_name)
        parts = [train.subset(i) for i in random_parts(len(train), updates, rng(seed, 0))]
    else:
        parts = [train] * updates
    train_chunks = [with_x(p, t(p.x)) for p, t in zip(parts, transforms, strict=True)]
    test_chunks = [with_x(test, t(test.x)) for t in transforms]
    return train_chunks, test_chunks, [c.classes() for c in train_chunks]


def _need_images(name: str, data: ArrayDataset, data_name: str, channels: int | None) -> None:
    shape = data.feature_shape
    if len(shape) != 3 or (channels is not None and shape[0] != channels):
        want = f"({channels}, H, W)" if channels else "(C, H, W)"
        fix = (
            "reshape flat features first, e.g. x.reshape(-1, 1, 28, 28), or use the permutation "
            "scenario"
            if len(shape) != 3
            else "use rotation or permutation for other images, or repeat a grey channel: "
            "x.expand(-1, 3, -1, -1)"
        )
        raise DataError(
            f"{name} needs images with features shaped {want}; {data_name} has features "
            f"shaped {shape}; {fix}"
        )


# ----------------------------------------------------------------------------------- scenarios


@SCENARIOS.register("permutation")
def permutation(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    split_data: bool = False,
) -> Scenario:
    """Permuted inputs (Goodfellow et al. 2013; Kirkpatrick et al. 2017 "EWC" permuted MNIST).

    Chunk 0 keeps the identity; chunk k > 0 applies a fixed random permutation of the flattened
    features, drawn from ``permutation_seeds[k]`` (recorded in ``info``; itself drawn from
    ``seed``), to train and test alike: ``torch.randperm(D, generator=Generator().manual_seed(s))``.
    """
    check_args(updates, seed)
    split = check_bool("split_data", split_data)
    dim = math.prod(train.feature_shape)
    seeds: list[int | None] = [None] + [
        int(s) for s in rng(seed, 1).integers(0, 2**31 - 1, size=updates - 1)
    ]
    perms = [
        torch.arange(dim)
        if s is None
        else torch.randperm(dim, generator=torch.Generator().manual_seed(s))
        for s in seeds
    ]
    transforms = [lambda x, p=p: permute_features(x, p) for p in perms]
    tr, te, classes = _transformed(
        "permutation", train, test, updates, seed, split, transforms, data_name
    )
    return Scenario(
        name="permutation",
        train=tr,
        test=te,
        chunk_classes=classes,
        info=info("permutation", updates, seed, {"split_data": split}, permutation_seeds=seeds),
    )


@SCENARIOS.register("rotation")
def rotation(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    degrees: list[float] | None = None,
    max_degrees: float = 180.0,
    split_data: bool = False,
) -> Scenario:
    """Rotated images (Lopez-Paz & Ranzato 2017 "GEM" rotated MNIST; Renate ImageRotationScenario).

    Chunk k rotates every image counter-clockwise by ``k * max_degrees / updates`` degrees
    (evenly spaced in [0, max_degrees), so chunk 0 is unrotated), or by ``degrees[k]`` when
    given. The angles are deterministic; ``seed`` only drives ``split_data``.
    """
    check_args(updates, seed)
    split = check_bool("split_data", split_data)
    (top,) = check_numbers("max_degrees", [max_degrees], 1) or [0.0]
    angles = check_numbers("degrees", degrees, updates) or [
        k * top / updates for k in range(updates)
    ]
    _need_images("rotation", train, data_name, None)
    tr, te, classes = _transformed(
        "rotation",
        train,
        test,
        updates,
        seed,
        split,
        [lambda x, a=a: rotate(x, a) for a in angles],
        data_name,
    )
    options: dict[str, Any] = {"degrees": degrees, "max_degrees": top, "split_data": split}
    return Scenario(
        name="rotation",
        train=tr,
        test=te,
        chunk_classes=classes,
        info=info("rotation", updates, seed, options, angles=angles),
    )


@SCENARIOS.register("hue-shift")
def hue_shift(
    train: ArrayDataset,
    test: ArrayDataset,
    updates: int,
    seed: int,
    *,
    data_name: str = "the training set",
    shifts: list[float] | None = None,
    split_data: bool = False,
) -> Scenario:
    """Colour drift: chunk k shifts the hue of RGB images by k/updates of the colour wheel.

    Inspired by Renate's ``HueShiftScenario`` (which instead sorts images by dominant hue; that
    is ``feature-sorting`` with ``statistic="hue"`` here). ``shifts[k]`` (in turns, 1.0 = the
    full wheel) overrides the default; features must be RGB (N, 3, H, W) in [0, 1].
    """
    check_args(updates, seed)
    split = check_bool("split_data", split_data)
    turns = check_numbers("shifts", shifts, updates) or [k / updates for k in range(updates)]
    _need_images("hue-shift", train, data_name, 3)
    for what, data in (("", train), ("the test set of ", test)):
        if len(data) and (float(data.x.min()) < 0.0 or float(data.x.max()) > 1.0):
            raise DataError(
                f"hue-shift needs RGB values in [0, 1]; {what}{data_name} has values in "
                f"[{float(data.x.min()):g}, {float(data.x.max()):g}]; divide 0..255 images by 255 "
                "or undo the normalisation first"
            )
    tr, te, classes = _transformed(
        "hue-shift",
        train,
        test,
        updates,
        seed,
        split,
        [lambda x, t=t: shift_hue(x, t) for t in turns],
        data_name,
    )
    return Scenario(
        name="hue-shift",
        train=tr,
        test=te,
        chunk_classes=classes,
        info=info(
            "hue-shift", updates, seed, {"shifts": shifts, "split_data": split}, hue_shifts=turns
        ),
    )
