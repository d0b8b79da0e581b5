"""CoLoR (Wistuba, Sivaprasad, Balles, Zappella, 2023): one LoRA expert and one head per task on a
frozen pretrained transformer; k-means prototypes of the frozen features pick the expert.

Each update injects a new LoRA adapter (through ``peft``: rank ``rank``, scale ``alpha / rank``,
on the ``target_modules`` linear layers, B = 0 so it starts at the pretrained model) and a new
head over the chunk's classes, and trains only those, with cross-entropy; every task's adapter
is trained from the pretrained weights (independent experts). Prototypes, routing and the two
settings are in ``ricordo.methods.routed``; a mixed batch is grouped by expert. ``routing
first-task`` is CoLoR++: the routing features come from the backbone with the first task's
adapter. The adapters live in the backbone while the lineage runs; the state holds them (as
safetensors, not the backbone) and puts them back into the reloaded backbone. Requires
``--backbone``.

Defaults: CoLoR's rank, scale and adapted matrices are not verified against the paper
(methods.md §1.6), so they are peft's LoraConfig defaults (r 8, alpha 8, dropout 0) on the query
and value projections (LoRA's own choice, Hu et al. 2021); K = 5 prototypes and the L2 distance
are Renate's SPeft (CoLoR's authors' S-Prompts implementation, which CoLoR extends).
"""

from __future__ import annotations

from ricordo.methods.base import register
from ricordo.methods.lora_experts import LoraExpertParams, LoraExperts


@register
class CoLoR(LoraExperts):
    name = "color"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = LoraExpertParams
    summary = "A LoRA expert and head per task on a frozen transformer; prototypes route rows."
    defaults_from = (
        "CoLoR as methods.md §1 reconstructs it: Renate's SPeft routing (5 k-means prototypes "
        "per task, L2), peft's LoRA defaults (r 8, alpha 8) on query/value"
    )
