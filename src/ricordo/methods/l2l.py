"""L2L, Learning to LoRA (Wistuba, Sivaprasad, Balles, Zappella, 2024, "Choice of PEFT Technique
in Continual Learning: Prompt Tuning is Not All You Need"): L2P with its prompt pool replaced by
a pool of LoRA adapters, each with a learned key, and one classifier shared by every update.

A row's query is the frozen backbone's CLS feature (no adapter active); its ``top_n`` adapters
by cosine similarity of key and query are active together, their updates summed
(ΔW = (alpha / rank) · Σ B_i A_i over the selected i), and the shared head (the model's output
layer) reads the adapted backbone's CLS feature. Each update trains every adapter of the pool,
the keys and the head with cross-entropy plus ``key_loss_weight`` times L2P's key-matching loss;
the backbone's own weights stay bit-identical. Retrieval, batch-wise selection, the
class-incremental training mask and prompt identification are those of l2p
(``ricordo.methods.keyed_pool``). In a mixed batch the rows are grouped by their selected set
and each group runs once with its adapters (``ricordo.peft.routing.run_grouped``). Pool entry i
is the peft adapter ``expert<i>`` in the backbone; the state holds the adapters (safetensors,
never the backbone) and puts them back into a reloaded backbone. Requires ``--backbone``.

No code of L2L is public and the paper's body could not be read (methods.md §2.2): what is
reconstructed rather than verified is the additive combination with equal weights, the query
from the backbone without adapters, the key loss mirroring L2P, and the shared head (the paper
reports a shared head beats per-task heads for the "L2X" methods).

Defaults: pool size 10, N 5 and lambda 0.5 are l2p's (Renate's L2P); each adapter takes peft's
LoRA defaults (rank 8, alpha 8, no dropout) on the query and value projections, as color and
s-lora do (the paper tuned the rank per benchmark). Train with the L2P setting (Adam, constant lr)
or the S-Prompts one; the PEFT-choice paper's optimiser settings are unverified.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ricordo.methods.base import UpdateContext, register
from ricordo.methods.keyed_pool import KeyedPool, PoolParams
from ricordo.methods.lora_experts import (
    LoraParamFields,
    adapter_name,
    adapters_from_tensors,
    adapters_to_tensors,
    attach_adapters,
)
from ricordo.methods.routed import find_encoder
from ricordo.peft import lora
from ricordo.peft.pool import group_selections
from ricordo.peft.routing import run_grouped

if TYPE_CHECKING:
    from ricordo.models.transformer import TransformerEncoder


@dataclass(frozen=True)
class L2LParams(LoraParamFields, PoolParams):
    """L2P's retrieval (PoolParams) over a pool of LoRA adapters with color's LoRA settings."""


@register
class L2L(KeyedPool):
    name = "l2l"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = L2LParams
    summary = "L2P with a pool of LoRA adapters in place of prompts; selected adapters summed."
    defaults_from = (
        "l2p's retrieval (Renate's L2P: M 10, N 5, lambda 0.5) with the PEFT-choice paper's "
        "LoRA pool (methods.md §2.2; combination additive, unverified), peft's LoRA defaults "
        "(r 8, alpha 8) on query/value"
    )

    def __init__(self, params: Any, memory: Any) -> None:
        super().__init__(params, memory)
        self.adapters: list[dict[str, Tensor]] = []  # the pool's tensors, on the CPU

    def _names(self, ids: list[int] | None = None) -> list[str]:
        return [adapter_name(i) for i in (range(self.params.pool_size) if ids is None else ids)]

    def build_pool(self, encoder: TransformerEncoder, ctx: UpdateContext) -> list[nn.Parameter]:
        present = set(lora.adapter_names(encoder.model))
        for name in self._names():
            if name not in present:  # the first update: A from the global RNG the engine seeds
                lora.add_adapter(encoder.model, name, self.params.settings())
        lora.activate(encoder.model, self._names(), trainable=True)
        return []  # the adapters are inside the model: the optimizer finds them by requires_grad

    def query_features(self, encoder: TransformerEncoder, x: Tensor) -> Tensor:
        with lora.using_adapter(encoder.model, None):
            return encoder(x)

    def pooled_features(self, encoder: TransformerEncoder, x: Tensor, ids: Tensor) -> Tensor:
        groups, sets = group_selections(ids)
        model = encoder.model
        training = torch.is_grad_enabled() and bool(self._training)

        def run(group: int, rows: Tensor) -> Tensor:
            names = self._names(sets[group])
            lora.activate(model, names, trainable=training)
            if training and self.params.dropout > 0:
                for name in names:
                    lora.train_dropout(model, name)
            return encoder(rows)

        if not training:
            with lora.using_adapter(model, None):  # restores the adapters active before
                return run_grouped(groups, x, run)
        features = run_grouped(groups, x, run)
        # A later group's activation froze the adapters of earlier groups; an adapter that
        # does not require grad at backward time gets no gradient, so unfreeze the pool again.
        lora.activate(model, self._names(), trainable=True)
        return features

    def finish_pool(self, encoder: TransformerEncoder) -> None:
        self.adapters = [lora.adapter_state(encoder.model, name) for name in self._names()]
        lora.activate(encoder.model, None)

    def pool_shape(self) -> dict[str, Any]:
        settings = dataclasses.asdict(self.params.settings())
        settings["target_modules"] = list(settings["target_modules"])  # as JSON reads it back
        return {**super().pool_shape(), **settings}

    def pool_tensors(self) -> dict[str, Tensor]:
        return adapters_to_tensors(self.adapters)

    def load_pool(self, tensors: dict[str, Tensor]) -> None:
        assert self.keys is not None  # loaded first
        self.adapters = adapters_from_tensors(tensors, self.keys.size)

    def attach(self, model: nn.Module) -> None:
        if self.adapters:
            attach_adapters(find_encoder(model, self.name), self.adapters, self.params.settings())
