"""S-LoRA (Wistuba, Sivaprasad, Balles, Zappella, 2024, "Choice of PEFT Technique in Continual
Learning: Prompt Tuning is Not All You Need"): S-Prompts with each task's prompt set replaced by
a LoRA adapter, plus a head per task.

It is the CoLoR recipe (``ricordo.methods.color``) under the name the PEFT-choice paper gives it,
so benchmark tables can use the paper's names: same algorithm, same defaults. ``routing
first-task`` is that paper's S-LoRA++ (the routing features come from the backbone adapted on
the first task). Requires ``--backbone``.

Defaults: those of ``color`` (the PEFT-choice paper's numbers could not be checked, methods.md
§2.3): peft's LoraConfig (r 8, alpha 8) on the query and value projections, Renate's SPeft routing
(5 k-means prototypes per task, L2).
"""

from __future__ import annotations

from ricordo.methods.base import register
from ricordo.methods.lora_experts import LoraExpertParams, LoraExperts


@register
class SLoRA(LoraExperts):
    name = "s-lora"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = LoraExpertParams
    summary = "S-Prompts with a LoRA adapter per task in place of prompts (= color's recipe)."
    defaults_from = (
        "the PEFT-choice paper's S-LoRA = CoLoR's recipe (methods.md §2.1): Renate's SPeft "
        "routing (5 k-means prototypes per task, L2), peft's LoRA defaults (r 8, alpha 8) on "
        "query/value"
    )
