"""S-Prompts (Wang, Huang, Hong, NeurIPS 2022): one prompt set and one head per task on a frozen
pretrained transformer; k-means prototypes of the frozen features pick the task at test time.

Each update trains a new prompt set of ``prompt_length`` tokens, inserted after the CLS token, and
a new head over the chunk's classes, with cross-entropy only; nothing else changes. Prototypes,
routing and the two settings (domain- and class-incremental) are described in
``ricordo.methods.routed``. A mixed batch runs in one forward pass: each row gets its task's
prompts. Requires ``--backbone``.

Defaults: the official S-Prompts code (iamwangyabin/S-Prompts, models/sinet.py and
methods/sprompt.py): 10 prompt tokens per domain held by an nn.Linear (hence the "linear"
initialisation), KMeans(n_clusters=5, random_state=0) on normalised frozen features, the L1
distance to the centroids, cosine annealing of the learning rate over the epochs. Renate's SPeft
uses the L2 distance and U(-1, 1) prompts instead (``distance=l2 prompt_init=uniform``).

The official configs train with SGD momentum 0.9, lr 0.01 (cosine over the epochs, the default
``schedule``), batch 128, weight decay 2e-4 (5e-4 on the first task), 10-30 epochs per domain:
``--optimizer sgd --momentum 0.9 --lr 0.01 --weight-decay 2e-4 --batch-size 128``.
Not implemented: S-liPrompts (CLIP with learnable language prompts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ricordo.errors import ConfigError
from ricordo.methods.base import UpdateContext, register
from ricordo.methods.routed import RoutedExperts, RoutedParams
from ricordo.peft.prompts import PROMPT_INITS, PromptSets

if TYPE_CHECKING:
    from ricordo.models.transformer import TransformerEncoder

PROMPT_PREFIX = "prompt."


@dataclass(frozen=True)
class SPromptsParams(RoutedParams):
    prompt_length: int = field(
        default=10,
        metadata={"doc": "Prompt tokens per task (official S-Prompts: 10)."},
    )
    prompt_init: str = field(
        default="linear",
        metadata={
            "doc": "Initial prompts: linear, U(±1/sqrt(width)) as the official code's "
            "nn.Linear prompt holder; or uniform, U(-1, 1) as Renate's PromptPool."
        },
    )
    distance: str = field(
        default="l1",
        metadata={
            "doc": "Distance to the prototypes: l1 (official S-Prompts) or l2 (Renate's SPeft)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.prompt_length, int) or self.prompt_length < 1:
            raise ConfigError(f"prompt_length={self.prompt_length!r} must be an integer >= 1")
        if self.prompt_init not in PROMPT_INITS:
            raise ConfigError(
                f"prompt_init={self.prompt_init!r} must be one of {', '.join(PROMPT_INITS)}"
            )


@register
class SPrompts(RoutedExperts):
    name = "s-prompts"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = SPromptsParams
    summary = "A prompt set and head per task on a frozen transformer; prototypes route rows."
    defaults_from = (
        "the official S-Prompts code (iamwangyabin/S-Prompts): prompt length 10, "
        "KMeans(n_clusters=5, random_state=0), L1 nearest prototype, cosine lr"
    )

    def __init__(self, params: Any, memory: Any) -> None:
        super().__init__(params, memory)
        self.prompts: PromptSets | None = None

    def add_expert(self, encoder: TransformerEncoder, ctx: UpdateContext) -> list[nn.Parameter]:
        if self.prompts is None:
            self.prompts = PromptSets(self.params.prompt_length, encoder.hidden_size)
        elif self.prompts.length != self.params.prompt_length:
            raise ConfigError(
                f"prompt_length={self.params.prompt_length} differs from this lineage's "
                f"{self.prompts.length} (its prompt sets run in one batch); keep it, or start "
                "a new lineage to change it"
            )
        index = self.prompts.add(self.params.prompt_init, ctx.generator)
        self.prompts.to(ctx.device)  # before the optimizer sees the new prompt set
        return [self.prompts.sets[index]]

    def _prompts(self, device: Any) -> PromptSets:
        assert self.prompts is not None
        return self.prompts.to(device)

    def train_features(self, encoder: TransformerEncoder, x: Tensor, task: int) -> Tensor:
        return encoder(x, prompts=self._prompts(x.device).repeat(task, len(x)))

    def expert_features(self, encoder: TransformerEncoder, x: Tensor, task: int | None) -> Tensor:
        if task is None:
            return encoder(x)
        return encoder(x, prompts=self._prompts(x.device).repeat(task, len(x)))

    def routed_features(self, encoder: TransformerEncoder, x: Tensor, tasks: Tensor) -> Tensor:
        return encoder(x, prompts=self._prompts(x.device).for_rows(tasks))

    def expert_tensors(self) -> dict[str, Tensor]:
        return {} if self.prompts is None else self.prompts.state_tensors(PROMPT_PREFIX)

    def load_experts(self, tensors: dict[str, Tensor], count: int, data: dict[str, Any]) -> None:
        if count == 0:
            self.prompts = None
            return
        length, width = tensors[f"{PROMPT_PREFIX}0"].shape
        self.prompts = PromptSets(int(length), int(width))
        self.prompts.load_tensors(tensors, PROMPT_PREFIX, count)
