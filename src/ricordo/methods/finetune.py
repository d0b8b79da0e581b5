"""Fine-tuning: train on each new chunk only (the lower bound every method must beat).

Each update continues from the current weights with cross-entropy on the new chunk and nothing
else: no memory, no penalty. In class-incremental streams it forgets the earlier classes almost
entirely (the DER paper's "SGD" row); in domain-incremental streams it keeps part of what it knew.
Every method in the zoo is compared against it and against ``joint``.
"""

from __future__ import annotations

from ricordo.methods.base import Method, register


@register
class FineTune(Method):
    name = "finetune"
    summary = "Train on the new chunk only; forgets (lower bound)."
    supports_lazy_data = True
    supports_ddp = True  # its loss is the sharded new batch's cross-entropy (tests/test_ddp.py)
