"""L2P, Learning to Prompt (Wang et al., CVPR 2022): a pool of prompts with learned keys on a
frozen pretrained transformer, and one classifier shared by every update.

The pool has ``pool_size`` prompts of ``prompt_length`` tokens, each with a key. A row's query is
the frozen backbone's CLS feature without prompts; its ``top_n`` prompts by cosine similarity of
key and query are inserted after the CLS token (N x L tokens, no position embedding, so their
order does not matter), and the classifier reads the mean of the prompt tokens' outputs
(``pooling prompts``, the official "prompt" head and Renate's ``prompt_mean``; ``cls`` reads the
CLS output). Each update trains the whole pool, its keys and the shared head (the model's output
layer, grown to the seen classes) with cross-entropy plus ``key_loss_weight`` times the
key-matching loss (mean over rows of sum over selected keys of 1 - cos(query, key)); the
backbone stays bit-identical. Retrieval, batch-wise selection, the class-incremental training
mask and prompt identification are described in ``ricordo.methods.keyed_pool``. A mixed batch
runs in one forward pass, each row with its own prompts. Requires ``--backbone``.

Defaults: M 10, L 5, N 5 and lambda 0.5, keys and prompts U(-1, 1), are Renate's
``LearningToPromptTransformer``/``LearningToPromptLearner`` (M, L, N also the values our notes
give for the L2P paper, unverified against it; the official JAX configs use N 4, L 5-10,
lambda 1.0). The official training setting is Adam,
lr 0.03 constant, batch 128, 5 epochs: ``--optimizer adam --lr 0.03 --batch-size 128 --epochs 5``
(PILOT's reproduction: Adam lr 0.001875 at batch 16). Not implemented: the official gradient
clipping (1.0), the task-incremental prompt mask, and L2P with a rehearsal buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ricordo.errors import ConfigError, StateCorruptError
from ricordo.methods.base import UpdateContext, register
from ricordo.methods.keyed_pool import KeyedPool, PoolParams
from ricordo.models.transformer import POOLINGS
from ricordo.peft.prompts import PROMPT_INITS, PromptSets

if TYPE_CHECKING:
    from ricordo.models.transformer import TransformerEncoder

PROMPT_PREFIX = "prompt."


@dataclass(frozen=True)
class L2PParams(PoolParams):
    prompt_length: int = field(
        default=5,
        metadata={"doc": "Tokens L of each pool prompt (Renate: 5; official L2P configs 5-10)."},
    )
    prompt_init: str = field(
        default="uniform",
        metadata={
            "doc": "Initial prompts: uniform, U(-1, 1) as Renate's PromptPool; or linear, "
            "U(±1/sqrt(width))."
        },
    )
    pooling: str = field(
        default="prompts",
        metadata={
            "doc": "Classifier input: prompts (mean of the prompt tokens' outputs, L2P's "
            "prompt head) or cls (the CLS output)."
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
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r} must be one of {', '.join(POOLINGS)}")


@register
class L2P(KeyedPool):
    name = "l2p"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    Params = L2PParams
    summary = "A pool of prompts with learned keys on a frozen transformer; one shared head."
    defaults_from = (
        "Renate's LearningToPromptTransformer/Learner: M 10, L 5, N 5, lambda 0.5, keys and "
        "prompts U(-1, 1), prompt-mean head; the official L2P code's train_mask"
    )

    def __init__(self, params: Any, memory: Any) -> None:
        super().__init__(params, memory)
        self.prompts: PromptSets | None = None

    def build_pool(self, encoder: TransformerEncoder, ctx: UpdateContext) -> list[nn.Parameter]:
        if self.prompts is None:
            self.prompts = PromptSets(self.params.prompt_length, encoder.hidden_size)
            for _ in range(self.params.pool_size):
                self.prompts.add(self.params.prompt_init, ctx.generator)
        self.prompts.to(ctx.device)  # before the optimizer sees the prompts
        return list(self.prompts.sets)

    def pooled_features(self, encoder: TransformerEncoder, x: Tensor, ids: Tensor) -> Tensor:
        assert self.prompts is not None
        prompts = self.prompts.to(x.device).for_rows(ids)  # (B, N * L, D), one pass
        return encoder(x, prompts=prompts, pool=self.params.pooling)

    def pool_shape(self) -> dict[str, Any]:
        return {**super().pool_shape(), "prompt_length": self.params.prompt_length}

    def pool_tensors(self) -> dict[str, Tensor]:
        return {} if self.prompts is None else self.prompts.state_tensors(PROMPT_PREFIX)

    def load_pool(self, tensors: dict[str, Tensor]) -> None:
        first = tensors.get(f"{PROMPT_PREFIX}0")
        if first is None or first.dim() != 2:
            raise StateCorruptError("method state lacks the l2p prompt pool")
        self.prompts = PromptSets(int(first.shape[0]), int(first.shape[1]))
        assert self.keys is not None  # loaded first
        self.prompts.load_tensors(tensors, PROMPT_PREFIX, self.keys.size)
