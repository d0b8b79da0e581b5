"""Fine-tuning: train on each new chunk only (the lower bound every method must beat)."""

from __future__ import annotations

from ricordo.methods.base import Method, register


@register
class FineTune(Method):
    name = "finetune"
    summary = "Train on the new chunk only; forgets (lower bound)."
