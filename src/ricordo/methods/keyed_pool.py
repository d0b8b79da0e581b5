"""A pool of experts retrieved by learned keys on a frozen pretrained transformer: the shared part
of l2p (Learning to Prompt, Wang et al. CVPR 2022) and l2l (its LoRA variant, Wistuba et al. 2024).

The pool holds ``pool_size`` entries (prompt sets or LoRA adapters, the subclass's) and as many
keys. A row's query is the frozen backbone's CLS feature (no prompts, no adapters); its
``top_n`` entries by cosine similarity of key and query are applied (prompts prepended, adapters
summed) and a single classifier shared by every update (the model's own growing output layer)
maps the resulting feature to the logits. The whole pool, its keys and the shared head train in
every update with cross-entropy plus ``key_loss_weight`` times the key-matching loss (each row's
selected keys pulled towards its query); the backbone stays bit-identical. No replay.

- ``batchwise``: L2P's batch-wise selection (the batch's N most frequent entries for every row)
  on training batches only (``train``: the official code trains with it; evaluation here is per
  row, so a prediction never depends on the other rows of its batch), ``never`` (each row its
  own top N, in training too), or ``always`` (Renate's implementation, which votes at
  evaluation as well). Rows selecting different entries in a mixed batch each get their own.
- ``train_mask``: class-incremental masking as in the L2P paper and its official code
  (``train_mask=True``): while training, the logits of classes outside the chunk are set to -inf,
  so the shared head's old classes get no gradient from the new data (Renate does not mask).
  In a domain-incremental stream every chunk has all classes and the mask changes nothing.

Prompt identification (``task_id_accuracy`` in evaluations and benchmarks): each update records
how often its training selected each entry; a test row is assigned the update whose training
used its selected entries most (``ricordo.peft.pool.SelectionHistory``). L2P has no task id of
its own, so this measures whether test rows retrieve the entries their task trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.engine.distributed import global_rows, unshard
from ricordo.errors import ConfigError, StateCorruptError
from ricordo.methods.base import Batch, Method, UpdateContext
from ricordo.methods.routed import find_encoder
from ricordo.models.head import output_layer, unwrap
from ricordo.peft.pool import PoolKeys, SelectionHistory, batch_vote

if TYPE_CHECKING:
    from ricordo.config import UpdateConfig
    from ricordo.data.dataset import ArrayDataset
    from ricordo.models.transformer import TransformerEncoder

BATCHWISE = ("train", "never", "always")
KEYS = "keys"
SELECTION = "selection"


@dataclass(frozen=True)
class PoolParams:
    """Pool size, retrieval and the key-matching loss, shared by l2p and l2l."""

    pool_size: int = field(
        default=10,
        metadata={"doc": "Pool entries M (Renate and the official L2P configs: 10)."},
    )
    top_n: int = field(
        default=5,
        metadata={"doc": "Entries N each row selects (Renate: 5; the official L2P configs: 4)."},
    )
    key_loss_weight: float = field(
        default=0.5,
        metadata={
            "doc": "Weight lambda of the key-matching loss (Renate's default 0.5; official L2P "
            "configs 1.0, Renate's benchmark configs 0.1)."
        },
    )
    batchwise: str = field(
        default="train",
        metadata={
            "doc": "Batch-wise majority vote of the selected entries: train (training batches "
            "only, evaluation per row), never, or always (Renate: at evaluation too)."
        },
    )
    train_mask: bool = field(
        default=True,
        metadata={
            "doc": "While training, mask the logits of classes outside the chunk (L2P's "
            "class-incremental train_mask); no effect when every chunk has all classes."
        },
    )

    def __post_init__(self) -> None:
        for name in ("pool_size", "top_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        if self.top_n > self.pool_size:
            raise ConfigError(f"top_n={self.top_n} must be at most pool_size={self.pool_size}")
        weight = self.key_loss_weight
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ConfigError(f"key_loss_weight={weight!r} must be a number >= 0")
        if self.batchwise not in BATCHWISE:
            raise ConfigError(f"batchwise={self.batchwise!r} must be one of {', '.join(BATCHWISE)}")
        if not isinstance(self.train_mask, bool):
            raise ConfigError(f"train_mask={self.train_mask!r} must be true or false")


class KeyedPool(Method):
    """A key-retrieved pool and a shared head; subclasses supply the entries.

    Subclass hooks: ``build_pool`` (create or unfreeze the entries before the optimizer is
    built), ``pooled_features`` (features with each row's selected entries), ``query_features``
    (the frozen backbone alone), ``finish_pool`` and the entries' state (``pool_tensors``,
    ``load_pool``, ``attach``).
    """

    needs_backbone = True
    # --strategy ddp: the loss calls the encoder, the head and the pool directly; the loop
    # averages their gradients, and the vote and the selection history see the global batch.
    ddp_wraps_model = False
    # No hook reads the chunk as a whole (no memory, no prototypes): a lazy chunk streams.
    supports_lazy_data = True

    def __init__(self, params: Any, memory: Any) -> None:
        super().__init__(params, memory)
        self.keys: PoolKeys | None = None
        self.history = SelectionHistory(params.pool_size)
        # The lineage's pool shape (pool_size, the entries' shape), fixed by its first update:
        # the saved entries and keys only fit it.
        self.shape: dict[str, Any] | None = None
        self._training: list[nn.Parameter] = []

    @classmethod
    def check_config(cls, config: UpdateConfig) -> None:
        super().check_config(config)
        if getattr(config, "train_backbone", False):
            raise ConfigError(
                f"method {cls.name!r} keeps the backbone frozen (it trains a pool of small "
                "parts and a head); drop --train-backbone"
            )

    # -- the pool's entries (subclasses) ----------------------------------------------------------
    def build_pool(self, encoder: TransformerEncoder, ctx: UpdateContext) -> list[nn.Parameter]:
        """Create the entries (first update) or make them trainable; return the parameters
        the method owns outside the model (those inside are found by requires_grad)."""
        raise NotImplementedError

    def pooled_features(self, encoder: TransformerEncoder, x: Tensor, ids: Tensor) -> Tensor:
        """Features (B, D) of ``x`` with row i's selected entries ``ids[i]`` (B, N) applied;
        with grad while the model trains."""
        raise NotImplementedError

    def query_features(self, encoder: TransformerEncoder, x: Tensor) -> Tensor:
        """The query: CLS features of the frozen backbone alone (no entry applied)."""
        return encoder(x)

    def finish_pool(self, encoder: TransformerEncoder) -> None:
        """Training of the update is over: freeze the entries, keep what the state needs."""

    def pool_shape(self) -> dict[str, Any]:
        """The parameters that fix the pool's tensors (JSON values); subclasses add theirs."""
        return {"pool_size": self.params.pool_size}

    def pool_tensors(self) -> dict[str, Tensor]:
        return {}

    def load_pool(self, tensors: dict[str, Tensor]) -> None:
        """Restore the entries from ``pool_tensors``' output."""

    # -- engine hooks -----------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, ctx: UpdateContext) -> None:
        shape = self.pool_shape()
        if self.shape is not None and shape != self.shape:
            changed = sorted(k for k in shape if shape[k] != self.shape.get(k))
            raise ConfigError(
                f"{', '.join(changed)} differ from this lineage's pool ({self.shape}); keep "
                "them, or start a new lineage to change them"
            )
        self.shape = shape
        encoder = find_encoder(model, self.name)
        if self.keys is None:
            self.keys = PoolKeys(self.params.pool_size, encoder.hidden_size, ctx.generator)
        self.keys.to(ctx.device)  # before the optimizer sees the keys
        owned = self.build_pool(encoder, ctx)
        # The shared classifier is the model's own output layer (grown to the seen classes).
        output_layer(unwrap(model))[1].requires_grad_(True)
        self._training = [self.keys.keys, *owned]

    def extra_parameters(self, ctx: UpdateContext) -> list[nn.Parameter]:
        return list(self._training)

    def _select(
        self, encoder: TransformerEncoder, x: Tensor, vote: bool, world: int = 1
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(query (B, D), selected entries (B, N), the global batch's selections) of ``x``.
        Under --strategy ddp (``world`` ranks, ``x`` this rank's shard) the vote counts the
        global batch's top-N lists, gathered from every rank, so every rank uses the entries
        one process would; the third item is what the selection history records (every rank
        records the global batch, so their histories stay equal)."""
        assert self.keys is not None
        with torch.no_grad():
            query = self.query_features(encoder, x)
        ids = self.keys.select(query, self.params.top_n)
        whole = ids if world == 1 else unshard(ids, global_rows(len(ids), world), world)
        if vote:
            chosen = batch_vote(whole, self.params.pool_size)[:1]
            ids, whole = chosen.expand(len(ids), -1), chosen.expand(len(whole), -1)
        return query, ids, whole

    def _logits(self, model: nn.Module, features: Tensor) -> Tensor:
        head = output_layer(unwrap(model))[1]
        return head(features.to(head.weight.dtype))

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        assert self.keys is not None, "prepare_model runs before the first step"
        encoder = find_encoder(ctx.model, self.name)
        query, ids, whole = self._select(
            encoder, batch.x, self.params.batchwise != "never", ctx.world_size
        )
        logits = ctx.mask_unseen(
            self._logits(ctx.model, self.pooled_features(encoder, batch.x, ids))
        )
        if self.params.train_mask:
            keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            keep[[c for c in ctx.chunk_classes if c < logits.shape[1]]] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        self.history.record(whole)
        loss = F.cross_entropy(logits, batch.y)
        if self.params.key_loss_weight > 0:
            loss = loss + self.params.key_loss_weight * self.keys.key_loss(query, ids)
        return loss

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        self.finish_pool(find_encoder(ctx.model, self.name))
        self.history.close_update()
        self._training = []

    def predict_with_tasks(self, x: Tensor, ctx: UpdateContext) -> tuple[Tensor, Tensor | None]:
        model = unwrap(ctx.model)
        if self.keys is None:  # before the first update: the untrained model, as for others
            return model(x), None
        encoder = find_encoder(model, self.name)
        self.keys.to(x.device)
        _query, ids, _ = self._select(encoder, x, self.params.batchwise == "always")
        logits = self._logits(model, self.pooled_features(encoder, x, ids))
        return logits, self.history.identify(ids)

    def predict(self, x: Tensor, ctx: UpdateContext) -> Tensor:
        return self.predict_with_tasks(x, ctx)[0]

    # -- state ------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        if self.keys is None:
            return {}
        return {
            KEYS: self.keys.keys.detach(),
            SELECTION: self.history.counts,
            **self.pool_tensors(),
        }

    def state_json(self) -> dict[str, Any]:
        return {"pool_shape": self.shape}

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        if KEYS not in tensors:
            self.keys = None
            return
        keys = tensors[KEYS]
        if keys.dim() != 2 or keys.shape[0] != self.params.pool_size:
            raise StateCorruptError(
                f"saved pool keys have shape {tuple(keys.shape)} for pool_size="
                f"{self.params.pool_size}; the state is inconsistent"
            )
        self.keys = PoolKeys.restored(keys)
        self.history = SelectionHistory(self.keys.size)
        self.history.load(tensors[SELECTION])
        self.shape = data.get("pool_shape")
        self.load_pool(tensors)
