"""Routed task experts on a frozen pretrained transformer: the shared part of s-prompts, s-lora
and color (S-Prompts, Wang et al. 2022; CoLoR, Wistuba et al. 2023; S-LoRA, Wistuba et al. 2024).

Every update is one task and adds one expert (a prompt set or a LoRA adapter, the subclass's)
and one task head over the chunk's classes; only those two train, with plain cross-entropy and
no replay; the backbone and every earlier expert and head stay bit-identical. The chunk's
L2-normalised routing features are clustered by k-means into ``clusters`` prototypes of the task.
At test time each row goes to the task of its nearest prototype, whose expert and head give its
logits (the head's values at its classes' ids; other classes get ``OUTSIDE_HEAD``). This serves
domain-incremental streams (every domain's head covers all classes) and class-incremental ones
(each head covers its task's classes, so task identification caps accuracy) alike; methods.md §1.5.

``routing``: ``frozen`` (the paper's: features of the backbone without any expert) or
``first-task`` (S-X++ / CoLoR++: features of the backbone with the first task's expert, which
re-clusters the first task after training it; better task identification on class splits).
Prototypes of a frozen routing are computed before training, so validation during an update
already routes rows (as Renate's SPeft does).

Not in this library's version: the CLIP text side of S-liPrompts, multi-GPU routing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext
from ricordo.models.head import num_outputs, output_layer, unwrap
from ricordo.peft.heads import TaskHeads
from ricordo.peft.routing import DISTANCES, TaskPrototypes, normalize

if TYPE_CHECKING:
    from ricordo.config import UpdateConfig
    from ricordo.data.dataset import ArrayDataset
    from ricordo.models.transformer import TransformerEncoder

ROUTINGS = ("frozen", "first-task")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class RoutedParams:
    """Prototype routing and the learning-rate schedule, shared by the routed-expert methods."""

    clusters: int = field(
        default=5,
        metadata={
            "doc": "k-means prototypes per task (S-Prompts and Renate: KMeans(n_clusters=5, "
            "random_state=0); the random state is --seed)."
        },
    )
    distance: str = field(
        default="l2",
        metadata={
            "doc": "Distance to the prototypes: l2 (Renate's SPeft) or l1 (official S-Prompts)."
        },
    )
    routing: str = field(
        default="frozen",
        metadata={
            "doc": "Routing features: frozen (the backbone without experts) or first-task (the "
            "backbone with the first task's expert: S-X++ / CoLoR++)."
        },
    )
    schedule: str = field(
        default="cosine",
        metadata={
            "doc": "Learning rate over an update's epochs: cosine (S-Prompts' "
            "CosineAnnealingLR, T_max = epochs) or constant (--lr)."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.clusters, int) or isinstance(self.clusters, bool):
            raise ConfigError(f"clusters={self.clusters!r} must be an integer >= 1")
        if self.clusters < 1:
            raise ConfigError(f"clusters={self.clusters} must be >= 1")
        if self.distance not in DISTANCES:
            raise ConfigError(f"distance={self.distance!r} must be one of {', '.join(DISTANCES)}")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"routing={self.routing!r} must be one of {', '.join(ROUTINGS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} must be one of {', '.join(SCHEDULES)}")


def find_encoder(model: nn.Module, method: str = "this method") -> TransformerEncoder:
    """The pretrained ``TransformerEncoder`` inside ``model`` (a ``--backbone`` model)."""
    from ricordo.models.transformer import TransformerEncoder

    for module in unwrap(model).modules():
        if isinstance(module, TransformerEncoder):
            return module
    raise ConfigError(
        f"method {method!r} needs a pretrained transformer backbone: pass --backbone NAME_OR_PATH"
    )


class RoutedExperts(Method):
    """One expert and one head per update; k-means prototypes pick a row's expert.

    Subclasses supply the expert: ``add_expert``, ``train_features``, ``expert_features``,
    ``finish_expert`` and the expert's state (``expert_tensors``, ``load_experts``, ``attach``).
    """

    def __init__(self, params: Any, memory: Any) -> None:
        super().__init__(params, memory)
        self.heads = TaskHeads()
        self.prototypes = TaskPrototypes()
        self.training_task: int | None = None  # the expert this update trains
        self.routing: str | None = None  # the lineage's routing features, fixed by task 0
        self._training: list[nn.Parameter] = []  # its parameters the method owns

    @property
    def experts(self) -> int:
        return len(self.heads)

    needs_backbone = True
    # --strategy ddp: the loss calls the encoder and the task's head directly (the model is not
    # wrapped; the loop averages the expert's and the head's gradients across ranks).
    ddp_wraps_model = False

    @classmethod
    def check_config(cls, config: UpdateConfig) -> None:
        super().check_config(config)
        if getattr(config, "train_backbone", False):
            raise ConfigError(
                f"method {cls.name!r} keeps the backbone frozen (each task trains its own "
                "small expert); drop --train-backbone"
            )

    # -- the expert (subclasses) -----------------------------------------------------------------
    def add_expert(self, encoder: TransformerEncoder, ctx: UpdateContext) -> list[nn.Parameter]:
        """Create expert ``self.experts - 1``, trainable; return the parameters the method owns
        (those inside the model are found by requires_grad)."""
        raise NotImplementedError

    def train_features(self, encoder: TransformerEncoder, x: Tensor, task: int) -> Tensor:
        """CLS features of ``x`` through the expert being trained, with grad."""
        raise NotImplementedError

    def expert_features(self, encoder: TransformerEncoder, x: Tensor, task: int | None) -> Tensor:
        """CLS features of ``x`` through expert ``task`` (None: the backbone alone)."""
        raise NotImplementedError

    def routed_features(self, encoder: TransformerEncoder, x: Tensor, tasks: Tensor) -> Tensor:
        """CLS features where row i goes through expert ``tasks[i]`` (default: grouped)."""
        from ricordo.peft.routing import run_grouped

        return run_grouped(tasks, x, lambda t, rows: self.expert_features(encoder, rows, t))

    def finish_expert(self, encoder: TransformerEncoder, task: int) -> None:
        """Training of expert ``task`` is over: freeze it, keep what the state needs."""

    def expert_tensors(self) -> dict[str, Tensor]:
        return {}

    def load_experts(self, tensors: dict[str, Tensor], count: int, data: dict[str, Any]) -> None:
        """Restore ``count`` experts from ``expert_tensors``' output (and ``state_json``'s)."""

    # -- engine hooks ----------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, ctx: UpdateContext) -> None:
        if self.routing is not None and self.params.routing != self.routing:
            raise ConfigError(
                f"routing={self.params.routing} differs from this lineage's routing="
                f"{self.routing}, whose features built the earlier tasks' prototypes; keep it, "
                "or start a new lineage to change it"
            )
        self.routing = self.params.routing
        encoder = find_encoder(model, self.name)
        task = self.experts
        self.heads.add(encoder.hidden_size, ctx.chunk_classes, ctx.generator)
        self.heads.to(ctx.device)  # before the optimizer sees the new head
        owned = self.add_expert(encoder, ctx)
        # The model's own output layer is not used: each task has its head in self.heads.
        output_layer(unwrap(model))[1].requires_grad_(False)
        self.training_task = task
        self._training = [*self.heads.heads[task].parameters(), *owned]

    def extra_parameters(self, ctx: UpdateContext) -> list[nn.Parameter]:
        return list(self._training)

    def learning_rate(self, epoch: int, epochs: int, lr: float) -> float:
        if self.params.schedule == "constant":
            return lr
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        assert self.training_task is not None
        if self.params.routing == "frozen" or self.training_task > 0:
            self._cluster(data, self.training_task, ctx)

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        task = self.training_task
        assert task is not None, "prepare_model runs before the first step"
        encoder = find_encoder(ctx.model, self.name)
        logits = self.heads.logits(self.train_features(encoder, batch.x, task), task)
        return F.cross_entropy(logits, self.heads.local_labels(batch.y, task))

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        task = self.training_task
        assert task is not None
        self.finish_expert(find_encoder(ctx.model, self.name), task)
        self._training = []
        self.training_task = None
        if self.params.routing == "first-task" and task == 0:
            self._cluster(data, 0, ctx)  # with the expert it has just trained

    # -- routing and prediction ------------------------------------------------------------------
    def _routing_source(self) -> int | None:
        """The expert the routing features go through (None: the backbone alone)."""
        if self.params.routing == "first-task" and self.training_task != 0 and self.experts:
            return 0
        return None

    @torch.no_grad()
    def routing_features(self, encoder: TransformerEncoder, x: Tensor) -> Tensor:
        """The L2-normalised features prototypes are built from and compared with."""
        return normalize(self.expert_features(encoder, x, self._routing_source()))

    def _cluster(self, data: ArrayDataset, task: int, ctx: UpdateContext) -> None:
        encoder = find_encoder(ctx.model, self.name)
        was_training = ctx.model.training
        ctx.model.eval()
        step = 4 * ctx.config.batch_size
        features = torch.cat(
            [
                self.routing_features(encoder, data.x[i : i + step].to(ctx.device)).cpu()
                for i in range(0, len(data), step)
            ]
        )
        ctx.model.train(was_training)
        self.prototypes.add(task, features, self.params.clusters, seed=ctx.config.seed)

    def identify(self, encoder: TransformerEncoder, x: Tensor) -> Tensor:
        """The task (N,) each row is routed to: its nearest prototype's (the only expert while
        no task has prototypes yet)."""
        if not self.prototypes.known_tasks():
            return torch.full((len(x),), self.experts - 1, dtype=torch.long, device=x.device)
        return self.prototypes.identify(self.routing_features(encoder, x), self.params.distance)

    def predict_with_tasks(self, x: Tensor, ctx: UpdateContext) -> tuple[Tensor, Tensor | None]:
        model = unwrap(ctx.model)
        if self.experts == 0:  # before the first update: the untrained model, as for others
            return model(x), None
        encoder = find_encoder(model, self.name)
        tasks = self.identify(encoder, x)
        self.heads.to(x.device)
        features = self.routed_features(encoder, x, tasks)
        return self.heads.routed(features, tasks, num_outputs(model)), tasks

    def predict(self, x: Tensor, ctx: UpdateContext) -> Tensor:
        return self.predict_with_tasks(x, ctx)[0]

    # -- state -----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        return {
            **self.heads.state_tensors("head."),
            **self.prototypes.state_tensors("prototypes."),
            **self.expert_tensors(),
        }

    def state_json(self) -> dict[str, Any]:
        return {
            "experts": self.experts,
            "head_classes": self.heads.classes,
            "routing": self.routing,
        }

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        self.heads.load_tensors(tensors, "head.", data.get("head_classes", []))
        self.prototypes.load_tensors(tensors, "prototypes.")
        self.routing = data.get("routing")
        self.load_experts(tensors, int(data.get("experts", 0)), data)
