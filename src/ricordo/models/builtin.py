"""Built-in backbones: a multilayer perceptron, a small CNN and the CIFAR ResNet-18, all ending
in an nn.Linear head."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from math import prod
from typing import Any

import torch
from torch import nn

from ricordo.errors import ConfigError
from ricordo.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", plugins="ricordo.models")

# The most parameters a built-in model may have (8 GiB of float32 weights, before gradients
# and optimiser state): --hidden 1000000000 is a typo, refused before anything is allocated.
MAX_PARAMETERS = 2**31


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, inside the model so training, evaluation and prediction
    all see the same inputs (``--model-option normalize=cifar10`` or ``normalize=0.5,0.25``)."""

    def __init__(self, spec: str, channels: int) -> None:
        super().__init__()
        from ricordo.data.augment import NORMALIZE_PRESETS

        if spec in NORMALIZE_PRESETS:
            mean, std = NORMALIZE_PRESETS[spec]
        else:
            try:
                values = [float(v) for v in str(spec).split(",")]
            except ValueError:
                values = []
            if len(values) != 2 and len(values) != 2 * channels:
                raise ConfigError(
                    f"normalize={spec!r} is not a preset ({', '.join(NORMALIZE_PRESETS)}) nor "
                    f"'mean,std' or {channels} means then {channels} stds"
                )
            mean, std = tuple(values[: len(values) // 2]), tuple(values[len(values) // 2 :])
        if len(mean) not in (1, channels) or min(std) <= 0:
            raise ConfigError(
                f"normalize={spec!r} needs 1 or {channels} positive std values per channel"
            )
        # Per-channel statistics broadcast over (N, C, H, W); a single pair over anything.
        shape = (1, len(mean), 1, 1) if len(mean) > 1 else (1,)
        self.register_buffer("mean", torch.tensor(mean).reshape(shape))
        self.register_buffer("std", torch.tensor(std).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _input_layers(input_shape: Sequence[int], normalize: str | None) -> list[nn.Module]:
    if normalize is None:
        return []
    channels = int(input_shape[0]) if len(input_shape) == 3 else 1
    return [Normalize(normalize, channels)]


@MODELS.register("mlp")
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (256, 128),
    normalize: str | None = None,
) -> nn.Module:
    """Flatten, then Linear+ReLU per hidden size, then the Linear output layer."""
    layers: list[nn.Module] = [*_input_layers(input_shape, normalize), nn.Flatten()]
    width = prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (32, 64),
    normalize: str | None = None,
) -> nn.Module:
    """Conv(3x3)+BN+ReLU+MaxPool per entry of ``hidden`` (channels), global pool, Linear head."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model 'cnn' needs images shaped (channels, height, width), got {tuple(input_shape)}; "
            "use --model mlp for flat features"
        )
    layers: list[nn.Module] = _input_layers(input_shape, normalize)
    channels = input_shape[0]
    for out in hidden:
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, padding=1),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@MODELS.register("resnet18")
def resnet18(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (),
    width: int = 64,
    normalize: str | None = None,
) -> nn.Module:
    """The reduced ResNet-18 for 32x32 (or 64x64) images of Mammoth and the DER paper
    (models.resnet); ``width`` is Mammoth's ``nf`` (64). ``--hidden`` does not apply to it."""
    from ricordo.models.resnet import ResNet18

    if len(input_shape) != 3:
        raise ConfigError(
            f"model 'resnet18' needs images shaped (channels, height, width), got "
            f"{tuple(input_shape)}; use --model mlp for flat features"
        )
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ConfigError(f"resnet18 width={width!r} must be a positive integer (64 is Mammoth's)")
    prefix = _input_layers(input_shape, normalize)
    return ResNet18(int(input_shape[0]), num_classes, width=width, prefix=prefix)


def build_builtin(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int],
    options: dict[str, Any],
) -> nn.Module:
    """Build a built-in model after checking its options and size, so a bad ``--model-option``
    or an absurd ``--hidden`` is one line instead of a TypeError or a failed allocation."""
    factory = MODELS.get(name)
    check_options(name, factory, options)
    count = parameter_count(name, input_shape, num_classes, hidden, options)
    limit = min(MAX_PARAMETERS, _physical_memory() // 4 or MAX_PARAMETERS)
    if count > limit:
        # resnet18's size is set by its width, not by --hidden (which it ignores).
        sizes = (
            f"width={options.get('width', 64)}"
            if name == "resnet18"
            else f"--hidden {','.join(map(str, hidden))}"
        )
        raise ConfigError(
            f"model {name!r} with {sizes} on inputs "
            f"{tuple(input_shape)} would have {count:,} parameters, over the limit of "
            f"{limit:,} (2**31, or this machine's memory in float32 weights); use smaller "
            "layers"
        )
    return factory(input_shape, num_classes, hidden=tuple(hidden), **options)


def check_options(name: str, factory: ModelFactory, options: dict[str, Any]) -> None:
    """Refuse ``--model-option`` keys the built-in factory does not take, listing those it does."""
    if not isinstance(options, dict):
        raise ConfigError(f"model {name!r} options must be a mapping of k=v, got {options!r}")
    fixed = ("input_shape", "num_classes", "hidden")
    accepted = [p for p in inspect.signature(factory).parameters if p not in fixed]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option(s) {unknown}; its --model-option keys: "
            f"{', '.join(accepted) or 'none'} (--hidden sets the layer sizes)"
        )


def parameter_count(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int],
    options: dict[str, Any] | None = None,
) -> int:
    """Parameters of the built-in ``mlp``, ``cnn`` or ``resnet18`` for these shapes, computed
    without building it (0 for a model this function does not know)."""
    if name == "resnet18" and len(input_shape) == 3:
        from ricordo.models.resnet import resnet18_parameters

        width = (options or {}).get("width", 64)
        if isinstance(width, int) and not isinstance(width, bool) and width > 0:
            return resnet18_parameters(int(input_shape[0]), num_classes, width)
        return 0  # the factory refuses the width in one line
    if name == "mlp":
        count, width = 0, prod(int(d) for d in input_shape)
        for size in (*hidden, num_classes):
            count += (width + 1) * int(size)
            width = int(size)
        return count
    if name == "cnn" and len(input_shape) == 3:
        count, channels = 0, int(input_shape[0])
        for out in hidden:  # conv 3x3 + bias, then batch norm's weight and bias
            count += (9 * channels + 1) * int(out) + 2 * int(out)
            channels = int(out)
        return count + (channels + 1) * num_classes
    return 0


def _physical_memory() -> int:
    """Bytes of RAM, where the OS says (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 0
