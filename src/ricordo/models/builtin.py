"""Built-in backbones: a multilayer perceptron and a small CNN, both ending in an nn.Linear head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

from torch import nn

from ricordo.errors import ConfigError
from ricordo.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


@MODELS.register("mlp")
def mlp(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)
) -> nn.Module:
    """Flatten, then Linear+ReLU per hidden size, then the Linear output layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
def cnn(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (32, 64)
) -> nn.Module:
    """Conv(3x3)+BN+ReLU+MaxPool per entry of ``hidden`` (channels), global pool, Linear head."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model 'cnn' needs images shaped (channels, height, width), got {tuple(input_shape)}; "
            "use --model mlp for flat features"
        )
    layers: list[nn.Module] = []
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
