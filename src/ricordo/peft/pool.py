"""Key-query retrieval from a pool of experts (L2P, Wang et al. CVPR 2022; and L2L after it).

A pool has M entries (prompt sets or LoRA adapters, the method's) and M learned keys. A row's
query is the frozen backbone's CLS feature; it selects the N entries whose keys are most similar
to it (cosine). The key-matching ("surrogate") loss pulls the selected keys towards the queries.
``SelectionHistory`` records which entries each update trained, so a test row's selection can be
matched back to the update whose training used those entries most (prompt identification).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import ConfigError, StateCorruptError


class PoolKeys(nn.Module):
    """M learned keys (M, D), initialised U(-1, 1) as L2P's official code and Renate's
    PromptPool do; ``select`` retrieves each row's top-N entries by cosine similarity."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ConfigError(f"a key pool needs size >= 1 and width >= 1, got {size}, {dim}")
        values = torch.empty(size, dim).uniform_(-1.0, 1.0, generator=generator)
        self.keys = nn.Parameter(values)

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    def similarity(self, query: Tensor) -> Tensor:
        """Cosine similarity (B, M) of each query row (B, D) to every key."""
        return F.normalize(query.float(), dim=1) @ F.normalize(self.keys.float(), dim=1).T

    @torch.no_grad()
    def select(self, query: Tensor, top_n: int) -> Tensor:
        """Each row's ``top_n`` most similar entries (B, N), sorted by id (the order of
        prompts or summed adapters does not change the result; sorted ids group equal sets)."""
        if not 1 <= top_n <= self.size:
            raise ConfigError(f"top_n={top_n} must be between 1 and the pool size {self.size}")
        ids = self.similarity(query).topk(top_n, dim=1).indices
        return ids.sort(dim=1).values

    def key_loss(self, query: Tensor, ids: Tensor) -> Tensor:
        """L2P's surrogate loss: the mean over rows of sum over the row's selected keys of
        (1 - cos(query, key)); its gradient moves only the selected keys (the query is frozen).
        Renate instead sums every row's similarity to every row's selected keys over B**2,
        which is the same only when all rows select the same keys (the batch-wise vote)."""
        keys = F.normalize(self.keys.float(), dim=1)[ids.to(self.keys.device)]  # (B, N, D)
        query = F.normalize(query.detach().float(), dim=1).unsqueeze(1)  # (B, 1, D)
        return (1.0 - (keys * query).sum(dim=2)).sum(dim=1).mean()

    @classmethod
    def restored(cls, keys: Tensor) -> PoolKeys:
        """Keys saved by a state (M, D), without drawing from any random generator."""
        if keys.dim() != 2 or 0 in keys.shape:
            raise StateCorruptError(f"saved pool keys have shape {tuple(keys.shape)}, not (M, D)")
        pool = cls.__new__(cls)
        nn.Module.__init__(pool)
        pool.keys = nn.Parameter(keys.detach().to(torch.float32).clone())
        return pool


def batch_vote(ids: Tensor, size: int) -> Tensor:
    """L2P's batch-wise selection: the N entries chosen most often across the batch's top-N
    lists (B, N), used for every row (ties go to the lower id, as ``lax.top_k`` in the
    official code). Unlike Renate, the vote is applied even when all M entries occur."""
    top_n = ids.shape[1]
    counts = torch.bincount(ids.flatten().cpu(), minlength=size)
    chosen = torch.argsort(-counts, stable=True)[:top_n].sort().values
    return chosen.to(ids.device).unsqueeze(0).expand(ids.shape[0], -1)


def group_selections(ids: Tensor) -> tuple[Tensor, list[list[int]]]:
    """The distinct selected sets of a batch: a group id per row (B,) and each group's entry
    ids, for running the rows of one set together (``routing.run_grouped``)."""
    sets, groups = torch.unique(ids, dim=0, return_inverse=True)
    return groups, [[int(i) for i in row] for row in sets.tolist()]


class SelectionHistory:
    """How often each update's training steps selected each pool entry: (updates, M) counts.

    A test row is identified with the update whose training selected the row's entries most
    often (each update's counts normalised to frequencies; ties go to the earlier update). When
    updates used the same entries, this cannot tell them apart, and the accuracy says so.
    """

    def __init__(self, size: int) -> None:
        self.counts = torch.zeros(0, size)
        self.current = torch.zeros(size)

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def record(self, ids: Tensor) -> None:
        """Count the entries a training step used (B, N)."""
        self.current += torch.bincount(ids.flatten().cpu(), minlength=len(self.current)).float()

    def close_update(self) -> None:
        """The update's training ended: keep its counts as its row."""
        self.counts = torch.cat([self.counts, self.current.unsqueeze(0)])
        self.current = torch.zeros_like(self.current)

    def identify(self, ids: Tensor) -> Tensor | None:
        """The update (B,) whose training used each row's selected entries most; None before
        any update was recorded."""
        if len(self) == 0:
            return None
        frequency = self.counts / self.counts.sum(dim=1, keepdim=True).clamp_min(1.0)
        scores = frequency.to(ids.device).T[ids].sum(dim=1)  # (B, updates)
        # argmax over a stable descending sort: the first (earliest) update among ties.
        return torch.argsort(-scores, dim=1, stable=True)[:, 0]

    def load(self, counts: Tensor) -> None:
        if counts.dim() != 2 or counts.shape[1] != len(self.current):
            raise StateCorruptError(
                f"saved selection counts have shape {tuple(counts.shape)}, expected (updates, "
                f"{len(self.current)}); the state is inconsistent"
            )
        self.counts = counts.to(torch.float32).clone()
