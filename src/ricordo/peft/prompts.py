"""Learnable prompt tokens: one (length, dim) prompt set per task (or per pool entry).

``TransformerEncoder.forward(x, prompts=...)`` inserts (N, length, dim) tokens after the CLS
token; ``for_rows`` builds that tensor for a mixed batch in one gather, so rows routed to
different tasks run in a single forward pass (no grouping needed for prompts).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ricordo.errors import ConfigError, StateCorruptError

# How a new prompt set is initialised:
# - "linear": U(-1/sqrt(dim), 1/sqrt(dim)), the default init of the nn.Linear(dim, length) that
#   holds each prompt in the official S-Prompts code (models/sinet.py, prompt_pool);
# - "uniform": U(-1, 1), Renate's PromptPool (S-Prompts/SPeft and L2P).
PROMPT_INITS = ("linear", "uniform")


class PromptSets(nn.Module):
    """Prompt sets of ``length`` tokens of width ``dim``, appended one per task."""

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        if length < 1 or dim < 1:
            raise ConfigError(f"prompt length={length} and width={dim} must be >= 1")
        self.length = int(length)
        self.dim = int(dim)
        self.sets = nn.ParameterList()

    def __len__(self) -> int:
        return len(self.sets)

    def add(self, init: str = "linear", generator: torch.Generator | None = None) -> int:
        """Append a new prompt set (initialised by ``init``, see PROMPT_INITS) and return its
        index; drawn from ``generator`` so a reloaded lineage grows the same way."""
        if init not in PROMPT_INITS:
            raise ConfigError(f"prompt init {init!r} is not one of {PROMPT_INITS}")
        bound = 1.0 / math.sqrt(self.dim) if init == "linear" else 1.0
        values = torch.empty(self.length, self.dim).uniform_(-bound, bound, generator=generator)
        device = self.sets[0].device if len(self.sets) else values.device
        self.sets.append(nn.Parameter(values.to(device)))
        return len(self.sets) - 1

    def get(self, index: int) -> Tensor:
        """Prompt set ``index``: (length, dim)."""
        return self.sets[index]

    def stacked(self) -> Tensor:
        """Every prompt set: (sets, length, dim)."""
        return torch.stack(list(self.sets))

    def for_rows(self, tasks: Tensor) -> Tensor:
        """The prompt set of each row's task: (N, length, dim) for ``tasks`` (N,); or, for
        ``tasks`` (N, K) (K sets per row, L2P's selected pool entries), the K sets of each row
        concatenated along the tokens: (N, K * length, dim)."""
        chosen = self.stacked()[tasks.to(self.sets[0].device)]
        return chosen.flatten(1, 2) if tasks.dim() == 2 else chosen

    def repeat(self, index: int, rows: int) -> Tensor:
        """Prompt set ``index`` for every one of ``rows`` rows: (rows, length, dim)."""
        return self.sets[index].unsqueeze(0).expand(rows, -1, -1)

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}{i}": p.detach() for i, p in enumerate(self.sets)}

    def load_tensors(self, tensors: dict[str, Tensor], prefix: str, count: int) -> None:
        """Replace the sets with ``count`` saved ones (``state_tensors`` with ``prefix``)."""
        self.sets = nn.ParameterList()
        for i in range(count):
            saved = tensors[f"{prefix}{i}"]
            if tuple(saved.shape) != (self.length, self.dim):
                raise StateCorruptError(
                    f"saved prompt set {i} has shape {tuple(saved.shape)}, expected "
                    f"({self.length}, {self.dim}); load it with the backbone it was trained on"
                )
            self.sets.append(nn.Parameter(saved.clone()))
