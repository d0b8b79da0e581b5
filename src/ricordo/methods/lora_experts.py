"""Routed LoRA experts (the shared part of color and s-lora): one peft LoRA adapter per task.

The adapter of task t is named ``expert<t>`` inside the backbone's HF model. While it trains it
is the only active and trainable adapter; afterwards the method keeps a CPU copy of its tensors
(the state's ``lora.<t>.*`` entries, since a state never holds the backbone) and ``attach``
injects them into a reloaded backbone bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ricordo.errors import ConfigError, StateCorruptError
from ricordo.methods.base import UpdateContext
from ricordo.methods.routed import RoutedExperts, RoutedParams, find_encoder
from ricordo.peft import lora
from ricordo.peft.lora import LoraSettings

if TYPE_CHECKING:
    from ricordo.models.transformer import TransformerEncoder

LORA_PREFIX = "lora."


def adapter_name(task: int) -> str:
    return f"expert{task}"


@dataclass(frozen=True)
class LoraParamFields:
    """The LoRA hyperparameters of a method (``--param rank=...``), shared by color, s-lora and
    l2l: put it first among the bases so the method's own fields come before these."""

    rank: int = field(
        default=8,
        metadata={
            "doc": "LoRA rank r of each adapter (peft's default 8; the papers' is unverified)."
        },
    )
    alpha: float = field(
        default=8.0,
        metadata={
            "doc": "LoRA alpha; an adapter's update is scaled by alpha / rank (peft's default 8)."
        },
    )
    dropout: float = field(
        default=0.0,
        metadata={"doc": "Dropout on the adapters' input while training (peft's default 0)."},
    )
    target_modules: str = field(
        default="query,value,q_proj,v_proj",
        metadata={
            "doc": "Comma-separated names of the linear layers to adapt; the default is the "
            "attention query and value projections (LoRA's choice) as BERT (query, value) and "
            "transformers 5's ViT (q_proj, v_proj) name them; names absent from a model are "
            "ignored, none matching is an error."
        },
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        try:
            self.settings()
        except ConfigError as error:
            raise ConfigError(str(error)) from None

    def settings(self) -> LoraSettings:
        return LoraSettings(
            rank=self.rank,
            alpha=float(self.alpha),
            dropout=float(self.dropout),
            target_modules=lora.parse_targets(self.target_modules),
        )


@dataclass(frozen=True)
class LoraExpertParams(LoraParamFields, RoutedParams):
    """Prototype routing (RoutedParams) and the LoRA settings of each task's expert."""


class LoraExperts(RoutedExperts):
    """A routed-expert method whose experts are LoRA adapters."""

    def __init__(self, params: Any, memory: Any) -> None:
        super().__init__(params, memory)
        self.adapters: list[dict[str, Tensor]] = []  # finished adapters' tensors, on the CPU
        # The lineage's adapter shape (rank, alpha, dropout, targets), fixed by its first
        # expert: a reloaded state re-injects every adapter with it.
        self.lora_settings: dict[str, Any] | None = None

    def add_expert(self, encoder: TransformerEncoder, ctx: UpdateContext) -> list[nn.Parameter]:
        settings = dataclasses.asdict(self.params.settings())
        settings["target_modules"] = list(settings["target_modules"])  # as JSON reads it back
        if self.lora_settings is not None and settings != self.lora_settings:
            changed = sorted(k for k in settings if settings[k] != self.lora_settings.get(k))
            raise ConfigError(
                f"LoRA {', '.join(changed)} differ from this lineage's ({self.lora_settings}); "
                "keep them, or start a new lineage to change them"
            )
        self.lora_settings = settings
        name = adapter_name(len(self.adapters))
        # A's initial values come from the global RNG, which the engine seeds per update.
        lora.add_adapter(encoder.model, name, self.params.settings())
        lora.activate(encoder.model, name, trainable=True)
        return []  # the adapter is inside the model: the optimizer finds it by requires_grad

    def train_features(self, encoder: TransformerEncoder, x: Tensor, task: int) -> Tensor:
        name = adapter_name(task)
        lora.activate(encoder.model, name, trainable=True)
        if self.params.dropout > 0:
            lora.train_dropout(encoder.model, name)
        return encoder(x)

    def expert_features(self, encoder: TransformerEncoder, x: Tensor, task: int | None) -> Tensor:
        with lora.using_adapter(encoder.model, None if task is None else adapter_name(task)):
            return encoder(x)

    def finish_expert(self, encoder: TransformerEncoder, task: int) -> None:
        self.adapters.append(lora.adapter_state(encoder.model, adapter_name(task)))
        lora.activate(encoder.model, None)

    def expert_tensors(self) -> dict[str, Tensor]:
        return adapters_to_tensors(self.adapters)

    def state_json(self) -> dict[str, Any]:
        return {**super().state_json(), "lora_settings": self.lora_settings}

    def load_experts(self, tensors: dict[str, Tensor], count: int, data: dict[str, Any]) -> None:
        self.adapters = adapters_from_tensors(tensors, count)
        self.lora_settings = data.get("lora_settings")

    def attach(self, model: nn.Module) -> None:
        if self.adapters:
            attach_adapters(find_encoder(model, self.name), self.adapters, self.params.settings())


# The state of a list of finished adapters (their CPU tensors), shared with l2l's LoRA pool.
def adapters_to_tensors(adapters: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """State tensors ``lora.<i>.<key>`` of adapters ``adapter_name(i)``."""
    return {
        f"{LORA_PREFIX}{task}.{key}": value
        for task, tensors in enumerate(adapters)
        for key, value in tensors.items()
    }


def adapters_from_tensors(tensors: dict[str, Tensor], count: int) -> list[dict[str, Tensor]]:
    """``count`` adapters' tensors from ``adapters_to_tensors``' output."""
    adapters: list[dict[str, Tensor]] = [{} for _ in range(count)]
    for key, value in tensors.items():
        if not key.startswith(LORA_PREFIX):
            continue
        task, _, rest = key[len(LORA_PREFIX) :].partition(".")
        if not task.isdigit() or int(task) >= count:
            raise StateCorruptError(f"method state has a LoRA entry {key!r} of no expert")
        adapters[int(task)][rest] = value.clone()
    if any(not a for a in adapters):
        raise StateCorruptError(f"method state lacks the LoRA tensors of some of {count} experts")
    return adapters


def attach_adapters(
    encoder: TransformerEncoder, adapters: list[dict[str, Tensor]], settings: LoraSettings
) -> None:
    """Inject the saved adapters (``adapter_name(i)``) the encoder lacks, bit for bit; none
    is left active."""
    present = set(lora.adapter_names(encoder.model))
    for task, tensors in enumerate(adapters):
        if adapter_name(task) not in present:
            lora.load_adapter(encoder.model, adapter_name(task), settings, tensors)
    lora.activate(encoder.model, None)
