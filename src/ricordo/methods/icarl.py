"""iCaRL: herded exemplars, sigmoid distillation, nearest-mean-of-exemplars classification.

Rebuffi, Kolesnikov, Sperl, Lampert 2017, "iCaRL: Incremental Classifier and Representation
Learning" (CVPR). Training uses the new chunk plus every stored exemplar (the paper's training set,
as Mammoth does); the loss is the paper's binary cross-entropy over the seen classes, where the
targets of old classes are the sigmoid outputs of a frozen copy of the previous model
(distillation) and the other targets are the one-hot labels. At the end of an update the memory
holds ``memory_size // seen classes`` exemplars per class: old classes keep a prefix of their
herding order, the classes of the chunk are herded afresh in the L2-normalised feature space.
Prediction returns ``-distance`` to the unit-length mean of each class's normalised exemplar
features (so argmax is the nearest mean); classes without exemplars score -4 (distances between
unit vectors are at most 2). During training (e.g. validation for early stopping) it predicts
with the network's outputs, since the stored means belong to the previous features.

Assumptions: labels are class ids and every seen class keeps >= 1 exemplar (so memory_size must
be >= the number of seen classes). "Old" classes are those seen before and absent from the chunk:
in class- and task-incremental scenarios these are the paper's old classes; in a
domain-incremental scenario every chunk has every class, so nothing is distilled and iCaRL is
replay of herded exemplars (a class is re-herded from its exemplars plus its new rows) with
nearest-mean classification. The memory is chosen by herding; --memory-policy is not used.

Defaults: the paper's classifier (nearest mean of exemplars). Mammoth's best arguments for
seq-MNIST with buffer 500 set no iCaRL hyperparameter, only training options (lr 0.1, batch 10,
one epoch, no weight decay); ours are UpdateConfig's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.config import UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.memory import TensorMemory
from ricordo.memory.herding import herding_order
from ricordo.methods.base import Batch, Method, UpdateContext, register
from ricordo.models.head import unwrap

UNSEEN_SCORE = -4.0  # below -|f - mu| for any unit vectors f, mu


@dataclass(frozen=True)
class ICaRLParams:
    nme: bool = field(
        default=True,
        metadata={
            "doc": ('paper: nearest-mean-of-exemplars; False: the network\'s outputs ("hybrid1")')
        },
    )


@register
class ICaRL(Method):
    name = "icarl"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = ICaRLParams
    summary = "Herded exemplars per class, sigmoid distillation, nearest-mean-of-exemplars."
    memory_note = "herded exemplars"
    defaults_from = "the paper (NME); Mammoth's seq-MNIST, buffer 500 best sets no iCaRL option"

    def __init__(self, params: ICaRLParams, memory: TensorMemory | None) -> None:
        super().__init__(params, memory)
        self.means: Tensor | None = None  # (classes with exemplars, features), unit rows
        self.mean_classes: Tensor | None = None  # the class id of each row of ``means``
        self.old_model: torch.nn.Module | None = None
        self.old_classes: list[int] = []

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        if config.memory_size < 1:
            raise ConfigError(
                "method 'icarl' needs a memory: pass --memory-size N with N >= number of classes"
            )
        return config.memory_size, "reservoir"  # filled in order at end_update (fill phase)

    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        assert self.memory is not None and self.memory.capacity is not None
        if len(ctx.seen_classes) > self.memory.capacity:
            raise ConfigError(
                f"method 'icarl' keeps >= 1 exemplar per class: memory_size="
                f"{self.memory.capacity} < {len(ctx.seen_classes)} seen classes; pass "
                f"--memory-size >= {len(ctx.seen_classes)}"
            )
        known = [] if self.mean_classes is None else self.mean_classes.tolist()
        self.old_classes = sorted(set(known) - set(data.classes()))
        if self.old_classes:
            self.old_model = copy.deepcopy(unwrap(ctx.model)).eval().requires_grad_(False)
        self.means = None  # the features change now; predict uses the network until end_update

    def training_data(self, data: ArrayDataset, ctx: UpdateContext) -> ArrayDataset:
        assert self.memory is not None
        if len(self.memory) == 0:
            return data
        old = self.memory.get()
        return ArrayDataset.concat([ArrayDataset(old["x"].clone(), old["y"].clone()), data])

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        logits = ctx.model(batch.x)  # not ctx.logits: BCE of a -inf (--mask-unseen) logit is nan
        target = F.one_hot(batch.y, logits.shape[1]).to(logits.dtype)
        if self.old_model is not None:
            with torch.no_grad():
                old = torch.sigmoid(self.old_model(batch.x)[:, self.old_classes])
            target[:, self.old_classes] = old.to(target.dtype)
        seen = torch.tensor(ctx.seen_classes, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits[:, seen], target[:, seen], reduction="none")
        return bce.sum(1).mean()  # the paper sums over classes

    @torch.no_grad()
    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        assert self.memory is not None and self.memory.capacity is not None
        self.old_model = None
        model = ctx.model
        was_training = model.training
        model.eval()
        per_class = self.memory.capacity // len(ctx.seen_classes)
        stored = self.memory.get() if len(self.memory) else {"x": data.x[:0], "y": data.y[:0]}
        chunk_classes = set(data.classes())
        xs, ys = [], []
        for c in ctx.seen_classes:
            rows = stored["x"][stored["y"] == c]
            if c in chunk_classes:  # (re-)herd from its exemplars and its new rows
                rows = torch.cat([rows, data.x[data.y == c].to(rows.dtype)])
                rows = rows[herding_order(self._features(rows, ctx), per_class)]
            rows = rows[:per_class]  # old classes keep a prefix of their herding order
            xs.append(rows)
            ys.append(torch.full((len(rows),), c, dtype=torch.int64))
        x, y = torch.cat(xs), torch.cat(ys)
        memory = self.memory.empty_like()  # rows in class order, each class in herding order
        memory.add({"x": x, "y": y})
        self.memory = memory
        features = self._features(x, ctx)
        self.mean_classes = torch.unique(y)
        means = torch.stack([features[y == c].mean(0) for c in self.mean_classes.tolist()])
        self.means = F.normalize(means, dim=1)
        model.train(was_training)

    def _features(self, x: Tensor, ctx: UpdateContext) -> Tensor:
        """L2-normalised penultimate features of ``x`` (float32, CPU), in batches."""
        size = 4 * ctx.config.batch_size
        parts = [
            ctx.features_and_logits(x[i : i + size].to(ctx.device))[0].float().cpu()
            for i in range(0, len(x), size)
        ]
        return F.normalize(torch.cat(parts), dim=1)

    def predict(self, x: Tensor, ctx: UpdateContext) -> Tensor:
        if not self.params.nme or self.means is None or self.mean_classes is None:
            return ctx.logits(x)
        features, logits = ctx.features_and_logits(x)
        f = F.normalize(features.float(), dim=1)
        means = self.means.to(f.device)
        squared = f.pow(2).sum(1, keepdim=True) - 2 * f @ means.T + means.pow(2).sum(1)
        scores = torch.full(logits.shape, UNSEEN_SCORE, device=f.device)
        scores[:, self.mean_classes.to(f.device)] = -squared.clamp_min(0).sqrt()
        return scores

    def state_tensors(self) -> dict[str, Tensor]:
        if self.means is None or self.mean_classes is None:
            return {}
        return {"class_means": self.means, "mean_classes": self.mean_classes}

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, object]) -> None:
        self.means = tensors.get("class_means")
        self.mean_classes = tensors.get("mean_classes")
