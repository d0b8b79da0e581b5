"""Plugin ER: experience replay, shipped by a third-party package to show Ricordo's plugins.

It is the built-in ER under another name; a real plugin would override the Method hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ricordo.data import ArrayDataset
from ricordo.methods.er import ExperienceReplay


class PluginER(ExperienceReplay):
    name = "plugin-er"
    summary = "Experience replay from the ricordo-plugin-example package."


def tiny_mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (16,),
) -> nn.Module:
    """Flatten, one hidden layer of ``hidden[0]`` units, the Linear output layer."""
    width = 1
    for size in input_shape:
        width *= int(size)
    units = int(hidden[0]) if hidden else 16
    return nn.Sequential(
        nn.Flatten(), nn.Linear(width, units), nn.ReLU(), nn.Linear(units, num_classes)
    )


def load_blobs(
    root: str | None = None, download: bool = False, classes: int = 4
) -> tuple[ArrayDataset, ArrayDataset]:
    """``classes`` Gaussian blobs in 2-D, 50 train and 10 test rows each (root/download unused)."""
    generator = torch.Generator().manual_seed(0)

    def split(per_class: int) -> ArrayDataset:
        y = torch.arange(classes).repeat_interleave(per_class)
        centres = torch.stack([torch.arange(classes) * 3.0, torch.zeros(classes)], dim=1)
        x = centres[y] + torch.randn(len(y), 2, generator=generator)
        return ArrayDataset(x, y)

    return split(50), split(10)
