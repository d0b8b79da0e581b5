"""Batched tensor augmentations (no torchvision): random crop with zero padding, horizontal flip,
normalisation, and an ``Augmentation`` pipeline parsed from a spec such as ``"crop:4,flip"``.

Everything works on a whole batch at once on whatever device ``x`` is on. Random numbers come
from a CPU ``torch.Generator`` and are moved to ``x``'s device afterwards, so the same seed gives
the same augmented batch on CPU and GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.errors import ConfigError, DataError
from ricordo.registry import Registry

# Per-channel mean and std of the training images in [0, 1].
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _image_batch(x: Tensor, what: str) -> tuple[int, int, int]:
    if x.ndim < 3:
        raise DataError(
            f"{what} needs image batches (N, C, H, W) or (N, H, W); got shape {tuple(x.shape)}"
        )
    return x.shape[0], x.shape[-2], x.shape[-1]


def crop_at(x: Tensor, padding: int, top: Tensor, left: Tensor) -> Tensor:
    """Pad the last two dims with ``padding`` zeros, then cut each sample back to its original
    size starting at row ``top[i]`` and column ``left[i]`` (in 0..2*padding) of the padded image.

    ``top = left = padding`` gives back ``x``. Vectorised: one ``gather`` over the flattened
    padded images, with one (H*W) index row per sample shared by its channels.
    """
    n, h, w = _image_batch(x, "crop")
    flat = x.reshape(n, -1, h, w)
    c, wide = flat.shape[1], w + 2 * padding
    padded = F.pad(flat, (padding, padding, padding, padding)).reshape(n, c, -1)
    down = torch.arange(h, device=x.device).view(1, h, 1)
    across = torch.arange(w, device=x.device).view(1, 1, w)
    rows = top.to(x.device, torch.int64).view(n, 1, 1) + down
    cols = left.to(x.device, torch.int64).view(n, 1, 1) + across
    index = (rows * wide + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, index).reshape(x.shape)


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Random translation by up to ``padding`` pixels per sample, zeros filling the gap.

    The classic CIFAR augmentation: zero-pad by ``padding`` and crop back at a random offset.
    """
    if padding < 0:
        raise ConfigError(f"crop padding {padding} is invalid; expected an integer >= 0")
    n, _, _ = _image_batch(x, "crop")
    if padding == 0 or n == 0:
        return x
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    return crop_at(x, padding, offsets[0], offsets[1])


def horizontal_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample left-right (last dim) with probability ``p``."""
    if not 0 <= p <= 1:
        raise ConfigError(f"flip probability {p} is invalid; expected a value in [0, 1]")
    n, _, _ = _image_batch(x, "flip")
    if p == 0 or n == 0:
        return x
    if p == 1:
        return x.flip(-1)
    flip = (torch.rand(n, generator=generator) < p).to(x.device)
    w = x.shape[-1]
    forward = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], forward.flip(0), forward)  # (N, W) column order
    flat = x.reshape(n, -1, w)
    return flat.gather(2, cols.view(n, 1, w).expand_as(flat)).reshape(x.shape)


def normalize(x: Tensor, mean: float | Sequence[float], std: float | Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel (dim 1); scalars apply to every feature."""
    means = [float(mean)] if isinstance(mean, (int, float)) else [float(m) for m in mean]
    stds = [float(std)] if isinstance(std, (int, float)) else [float(s) for s in std]
    if len(means) != len(stds) or not means:
        raise ConfigError(f"normalize needs as many means as stds; got {means} and {stds}")
    if min(stds) <= 0:
        raise ConfigError(f"normalize std {stds} must be positive")
    if len(means) == 1:
        return (x - means[0]) / stds[0]
    if x.ndim < 2 or x.shape[1] != len(means):
        raise DataError(
            f"normalize has {len(means)} channel means but the batch has shape "
            f"{tuple(x.shape)} (channels in dim 1); pass one mean/std or matching channels"
        )
    shape = (1, len(means)) + (1,) * (x.ndim - 2)
    m = torch.tensor(means, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(stds, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


# ------------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class Step:
    """One parsed pipeline step: ``apply(x, generator) -> x``; ``random`` if it draws numbers."""

    name: str
    args: tuple[str, ...]
    apply: Callable[[Tensor, torch.Generator | None], Tensor]
    random: bool

    @property
    def spec(self) -> str:
        return self.name + (":" + ",".join(self.args) if self.args else "")


# name -> factory(args) -> Step
AUGMENTATIONS: Registry[Callable[[tuple[str, ...]], Step]] = Registry("augmentation")


def _number(name: str, value: str, kind: type, example: str) -> float:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(
            f"augmentation {name!r} got {value!r}, not a{'n integer' if kind is int else ' number'}"
            f"; e.g. {example}"
        ) from None


@AUGMENTATIONS.register("crop")
def _crop(args: tuple[str, ...]) -> Step:
    """crop[:PADDING]: random crop after zero-padding by PADDING pixels (default 4)."""
    if len(args) > 1:
        raise ConfigError(f"augmentation 'crop' takes one padding, e.g. crop:4; got {args}")
    padding = int(_number("crop", args[0], int, "crop:4")) if args else 4
    if padding < 0:
        raise ConfigError(f"augmentation 'crop' padding {padding} is invalid; expected >= 0")
    return Step("crop", (str(padding),), lambda x, g: random_crop(x, padding, g), True)


@AUGMENTATIONS.register("flip")
def _flip(args: tuple[str, ...]) -> Step:
    """flip[:P]: horizontal flip with probability P (default 0.5)."""
    if len(args) > 1:
        raise ConfigError(f"augmentation 'flip' takes one probability, e.g. flip:0.5; got {args}")
    p = _number("flip", args[0], float, "flip:0.5") if args else 0.5
    if not 0 <= p <= 1:
        raise ConfigError(f"augmentation 'flip' probability {p} is invalid; expected 0..1")
    return Step("flip", (repr(p),), lambda x, g: horizontal_flip(x, p, g), True)


@AUGMENTATIONS.register("normalize")
def _normalize(args: tuple[str, ...]) -> Step:
    """normalize:PRESET or normalize:MEAN..,STD..: per-channel (x - mean) / std."""
    presets = ", ".join(NORMALIZE_PRESETS)
    if len(args) == 1 and args[0] in NORMALIZE_PRESETS:
        mean, std = NORMALIZE_PRESETS[args[0]]
    elif args and len(args) % 2 == 0:
        values = [_number("normalize", a, float, "normalize:0.5,0.5") for a in args]
        mean, std = tuple(values[: len(values) // 2]), tuple(values[len(values) // 2 :])
        if min(std) <= 0:
            raise ConfigError(f"augmentation 'normalize' std {std} must be positive")
    else:
        raise ConfigError(
            f"augmentation 'normalize' takes a preset ({presets}) or means then stds, e.g. "
            f"normalize:0.5,0.5 or normalize:0.49,0.48,0.45,0.25,0.24,0.26; got {args or '()'}"
        )
    return Step("normalize", args, lambda x, g: normalize(x, mean, std), False)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class Augmentation:
    """A sequence of steps applied to a batch: ``Augmentation.parse("crop:4,flip")(x, g)``.

    Spec grammar: steps separated by commas, ``name`` or ``name:arg``; a bare number after a
    step is one more argument of that step (``normalize:0.5,0.5`` is mean 0.5, std 0.5).
    """

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    @classmethod
    def parse(cls, spec: str) -> Augmentation:
        tokens = [t.strip() for t in str(spec).split(",")]
        if not spec or not spec.strip() or any(not t for t in tokens):
            raise ConfigError(
                f"augmentation spec {spec!r} has an empty step; write steps separated by "
                "commas, e.g. crop:4,flip"
            )
        parsed: list[tuple[str, list[str]]] = []
        for token in tokens:
            if ":" in token:
                name, _, arg = token.partition(":")
                parsed.append((name.strip(), [arg.strip()]))
            elif parsed and _is_number(token):
                parsed[-1][1].append(token)
            else:
                parsed.append((token, []))
        return cls([AUGMENTATIONS.get(name)(tuple(args)) for name, args in parsed])

    @property
    def spec(self) -> str:
        return ",".join(step.spec for step in self.steps)

    @property
    def random(self) -> bool:
        """True when every step is random (a training-only augmentation)."""
        return all(step.random for step in self.steps)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for step in self.steps:
            x = step.apply(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Augmentation({self.spec!r})"


@functools.lru_cache(maxsize=64)
def parse_augmentation(spec: str) -> Augmentation:
    """``Augmentation.parse`` with a cache (the engine looks the spec up every step)."""
    return Augmentation.parse(spec)


def training_augment_spec(spec: str | None) -> str | None:
    """Validate ``--augment``: None/""/"none" mean no augmentation; returns the stripped spec.

    Training augmentations must be random ops only: deterministic preprocessing such as
    normalize would have to apply at evaluation and prediction too, which ``--augment`` does not.
    """
    if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
        return None
    spec = str(spec).strip()
    try:
        pipeline = parse_augmentation(spec)
    except ConfigError as error:
        raise ConfigError(f"--augment {spec!r}: {error}") from None
    fixed = [s.name for s in pipeline.steps if not s.random]
    if fixed:
        random_ops = ", ".join(n for n in AUGMENTATIONS.names() if _default_is_random(n))
        raise ConfigError(
            f"--augment {spec!r}: {', '.join(fixed)} is deterministic preprocessing that must "
            "also apply at evaluation and prediction, but --augment only touches training "
            "batches; normalise the data itself before updating (ricordo.data.augment."
            f"normalize) and keep --augment for random ops: {random_ops}"
        )
    return spec


def _default_is_random(name: str) -> bool:
    try:
        return AUGMENTATIONS.get(name)(()).random
    except ConfigError:  # needs arguments: a parametrised preprocessing step
        return False
