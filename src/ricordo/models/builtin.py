"""Built-in backbones: a multilayer perceptron and a small CNN, both ending in an nn.Linear head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch
from torch import nn

from ricordo.errors import ConfigError
from ricordo.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


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
