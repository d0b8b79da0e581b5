"""The reduced ResNet-18 for small images that Mammoth and the DER paper use as ``resnet18``.

Architecture (read from Mammoth's backbone/ResNetBlock.py; this is our own code): a 3x3 stem
conv with ``width`` channels (Mammoth's ``nf``, 64) + BN + ReLU and no max-pool, four stages of
two BasicBlocks with ``width``, 2x, 4x, 8x channels and strides 1, 2, 2, 2, global average pooling
and a final nn.Linear head. Convolutions have no bias; a block's shortcut is a 1x1 conv + BN when
it changes the stride or the width. Kept small images at full resolution in the stem, which is
what makes it the usual CIFAR / Tiny ImageNet continual-learning backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Blocks per stage and the stride of each stage's first block (ResNet-18).
BLOCKS = (2, 2, 2, 2)
STRIDES = (1, 2, 2, 2)


def _conv3x3(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inputs, outputs, stride)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = _conv3x3(outputs, outputs)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(outputs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """Stem, four stages, global average pooling, then ``classifier``, the last nn.Linear (the
    layer Ricordo grows when new classes arrive; its input is the feature vector that iCaRL,
    DER and the other feature-space methods read)."""

    def __init__(
        self, channels: int, num_classes: int, width: int = 64, prefix: Sequence[nn.Module] = ()
    ) -> None:
        super().__init__()
        # Optional input layers (Normalize): a Sequential so an empty one costs nothing.
        self.inputs = nn.Sequential(*prefix)
        self.stem = nn.Sequential(
            _conv3x3(channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        inputs = width
        for stage, (blocks, stride) in enumerate(zip(BLOCKS, STRIDES, strict=True)):
            outputs = width * 2**stage
            layers = []
            for block in range(blocks):
                layers.append(BasicBlock(inputs, outputs, stride if block == 0 else 1))
                inputs = outputs
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(self.inputs(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(self.pool(out))


def resnet18_parameters(channels: int, num_classes: int, width: int = 64) -> int:
    """Parameters of :class:`ResNet18`, computed without building it (for the size check)."""
    count = 9 * channels * width + 2 * width  # stem conv (no bias) + BN
    inputs = width
    for stage, (blocks, stride) in enumerate(zip(BLOCKS, STRIDES, strict=True)):
        outputs = width * 2**stage
        for block in range(blocks):
            count += 9 * inputs * outputs + 2 * outputs + 9 * outputs * outputs + 2 * outputs
            if (stride if block == 0 else 1) != 1 or inputs != outputs:
                count += inputs * outputs + 2 * outputs
            inputs = outputs
    return count + (inputs + 1) * num_classes
