"""Per-task classification heads: one ``nn.Linear`` per task over that task's classes.

A head's classes are the labels of the chunk it was trained on. That covers both settings of
methods.md §1.5: domain-incremental (every domain has all classes: each head covers all of them,
as S-Prompts' per-domain classifiers do) and class-incremental (each head covers only its task's
classes; the prediction is the argmax of the routed head, placed at those classes' ids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from ricordo.errors import DataError, StateCorruptError
from ricordo.peft.routing import run_grouped

# The logit of every class outside the routed head. Finite, so the cross-entropy of a row routed
# to the wrong task stays a number (about 1e4) instead of inf; exp(-1e4) is probability 0.
OUTSIDE_HEAD = -1e4


class TaskHeads(nn.Module):
    """Linear heads, one per task, each with its list of class ids."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList()
        self.classes: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.heads)

    def add(
        self, in_features: int, classes: Sequence[int], generator: torch.Generator | None = None
    ) -> int:
        """Append a head over ``classes`` and return its index. Weight and bias are drawn from
        U(-1/sqrt(in), 1/sqrt(in)) (nn.Linear's default) with ``generator``."""
        classes = sorted({int(c) for c in classes})
        if not classes:
            raise DataError("a task head needs at least one class")
        head = skip_init(nn.Linear, in_features, len(classes))  # initialised below
        bound = 1.0 / math.sqrt(max(1, in_features))
        with torch.no_grad():
            for parameter in head.parameters():
                values = torch.empty(parameter.shape).uniform_(-bound, bound, generator=generator)
                parameter.copy_(values)
        if len(self.heads):
            head.to(next(self.heads[0].parameters()).device)
        self.heads.append(head)
        self.classes.append(classes)
        return len(self.heads) - 1

    def logits(self, features: Tensor, task: int) -> Tensor:
        """Head ``task``'s logits over its own classes: (N, len(classes[task]))."""
        head = self.heads[task]
        return head(features.to(head.weight.dtype))

    def local_labels(self, y: Tensor, task: int) -> Tensor:
        """Class ids ``y`` as positions in head ``task``'s classes."""
        classes = self.classes[task]
        lookup = torch.full((max(classes) + 1,), -1, dtype=torch.long)
        lookup[classes] = torch.arange(len(classes))
        labels = y.long().cpu()
        local = lookup[labels.clamp(0, len(lookup) - 1)]
        outside = (labels >= len(lookup)) | (labels < 0) | (local < 0)
        if bool(outside.any()):
            raise DataError(
                f"labels {sorted(set(labels[outside].tolist()))[:5]} are not among the classes "
                f"of task head {task} ({classes[:10]})"
            )
        return local.to(y.device)

    def place(self, local: Tensor, task: int, width: int) -> Tensor:
        """(N, width) logits: head ``task``'s values at its class ids, OUTSIDE_HEAD elsewhere."""
        classes = self.classes[task]
        width = max(width, max(classes) + 1)
        out = local.new_full((local.shape[0], width), OUTSIDE_HEAD)
        out[:, torch.tensor(classes, device=local.device)] = local
        return out

    def routed(self, features: Tensor, tasks: Tensor, width: int) -> Tensor:
        """(N, width) logits where row i comes from head ``tasks[i]`` (rows grouped by head)."""
        width = max([width, *(max(c) + 1 for c in self.classes)])
        return run_grouped(
            tasks, features, lambda t, rows: self.place(self.logits(rows, t), t, width)
        )

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {}
        for i, head in enumerate(self.heads):
            tensors[f"{prefix}{i}.weight"] = head.weight.detach()
            tensors[f"{prefix}{i}.bias"] = head.bias.detach()
        return tensors

    def load_tensors(
        self, tensors: dict[str, Tensor], prefix: str, classes: Sequence[Sequence[int]]
    ) -> None:
        """Replace the heads with saved ones (``state_tensors`` with ``prefix``)."""
        self.heads = nn.ModuleList()
        self.classes = []
        for i, head_classes in enumerate(classes):
            weight, bias = tensors[f"{prefix}{i}.weight"], tensors[f"{prefix}{i}.bias"]
            if weight.shape[0] != len(head_classes) or bias.shape != (len(head_classes),):
                raise StateCorruptError(
                    f"saved task head {i} has {weight.shape[0]} rows for "
                    f"{len(head_classes)} classes; the state is inconsistent"
                )
            head = skip_init(nn.Linear, weight.shape[1], weight.shape[0], dtype=weight.dtype)
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            self.heads.append(head)
            self.classes.append([int(c) for c in head_classes])
