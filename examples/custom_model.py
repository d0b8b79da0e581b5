"""A user model from a config file: ``model_fn(**kwargs)`` returns any nn.Module ending in Linear.

The state records this file's name and sha256, never its path, and never runs it: every job that
loads the state passes the file again with --config (in Python: Updater.load(url, model=path)),
and its sha256 must match (--accept-model-change takes an edited file on purpose). The last
nn.Linear grows when new classes arrive. An importable module works too:
--config mypackage.models:model_fn.

CLI:
    ricordo data digits --out chunks
    ricordo update --data chunks/train-0.npz --next-state state/v0 \
        --config examples/custom_model.py --model-option width=64 --method er
    ricordo update --data chunks/train-1.npz --state state/v0 --next-state state/v1 \
        --config examples/custom_model.py
    ricordo evaluate --state state/v1 --data chunks/test-all.npz --config examples/custom_model.py
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
