"""A user model from a config file: ``model_fn(**kwargs)`` returns any nn.Module ending in Linear.

Ricordo stores the file's path and sha256 in the state and rebuilds the model from it on load;
the last nn.Linear grows when new classes arrive.

CLI:
    ricordo data digits --out chunks
    ricordo update --data chunks/train-0.npz --next-state state/v0 \
        --config examples/custom_model.py --model-option width=64 --method er
    ricordo update --data chunks/train-1.npz --state state/v0 --next-state state/v1
"""

from __future__ import annotations

from torch import nn


def model_fn(input_shape: tuple[int, ...], num_classes: int, width: int = 128) -> nn.Module:
    """``input_shape`` and ``num_classes`` are filled in by Ricordo; ``width`` is a user option."""
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * input_shape[1] * input_shape[2], width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )
