"""Ricordo: continual learning for PyTorch models.

``import ricordo`` stays light (no torch import); the heavy API is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from ricordo.config import UpdateConfig
    from ricordo.updater import Updater

__all__ = ["Updater", "UpdateConfig", "__version__"]

_LAZY = {"Updater": "ricordo.updater", "UpdateConfig": "ricordo.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ricordo' has no attribute {name!r}")
