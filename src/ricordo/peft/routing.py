"""Task identification by k-means prototypes, and per-sample routing in a mixed batch.

S-Prompts (and CoLoR, S-LoRA after it) cluster each task's L2-normalised frozen features with
k-means (K = 5, ``random_state=0``) and keep the centroids with the task's id; a test row goes to
the task of its nearest centroid (official S-Prompts: L1 distance; Renate: L2). methods.md §1.4.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from ricordo.errors import ConfigError, DataError, StateCorruptError

DISTANCES = ("l2", "l1")
# sklearn >= 1.4 changed KMeans' n_init default from 10 to "auto" (1 run for k-means++); the
# S-Prompts and Renate code ran with 10. Pinned so prototypes do not move with sklearn versions.
KMEANS_N_INIT = 10


def normalize(features: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (float32), the space the prototypes live in."""
    return F.normalize(features.float(), dim=1)


def kmeans_centroids(features: Tensor, k: int, seed: int = 0) -> Tensor:
    """k-means centroids (k', D) of ``features`` (N, D) with sklearn, seeded; k' = min(k,
    distinct rows) so a small chunk still gets prototypes. Centroids are not re-normalised."""
    from sklearn.cluster import KMeans

    if features.dim() != 2 or len(features) == 0:
        raise DataError(f"k-means needs features (N, D) with N >= 1, got {tuple(features.shape)}")
    data = features.detach().to("cpu", torch.float32)
    clusters = min(int(k), len(torch.unique(data, dim=0)))
    # sklearn takes a 32-bit random state; --seed may be up to 2**63 - 1.
    model = KMeans(n_clusters=clusters, random_state=seed % 2**32, n_init=KMEANS_N_INIT)
    model.fit(data.numpy())
    return torch.from_numpy(model.cluster_centers_).to(torch.float32)


class TaskPrototypes:
    """Centroids of every task's features, each labelled with its task id."""

    def __init__(self) -> None:
        self.centroids = torch.empty(0, 0)
        self.tasks = torch.empty(0, dtype=torch.long)

    def known_tasks(self) -> list[int]:
        return sorted({int(t) for t in self.tasks.tolist()})

    def add(self, task: int, features: Tensor, k: int, seed: int = 0) -> None:
        """Cluster ``features`` (already normalised) into ``k`` prototypes of ``task``,
        replacing any the task had (re-clustering it with another feature extractor)."""
        centroids = kmeans_centroids(features, k, seed)
        keep = self.tasks != task
        if len(self.tasks) and self.centroids.shape[1] != centroids.shape[1]:
            raise ConfigError(
                f"prototype width {centroids.shape[1]} differs from the stored "
                f"{self.centroids.shape[1]}; every task must use the same feature extractor"
            )
        old = self.centroids[keep] if len(self.tasks) else centroids[:0]
        self.centroids = torch.cat([old, centroids])
        labels = torch.full((len(centroids),), int(task), dtype=torch.long)
        self.tasks = torch.cat([self.tasks[keep], labels])

    def identify(self, features: Tensor, distance: str = "l2") -> Tensor:
        """The task (N,) of each row of ``features`` (normalised): its nearest centroid's."""
        if distance not in DISTANCES:
            raise ConfigError(f"distance {distance!r} is not one of {DISTANCES}")
        if len(self.tasks) == 0:
            raise ConfigError("no task prototypes yet: train on a chunk first")
        centroids = self.centroids.to(features.device)
        gaps = torch.cdist(features.float(), centroids, p=1.0 if distance == "l1" else 2.0)
        return self.tasks.to(features.device)[gaps.argmin(dim=1)]

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        if len(self.tasks) == 0:
            return {}
        return {f"{prefix}centroids": self.centroids, f"{prefix}tasks": self.tasks}

    def load_tensors(self, tensors: dict[str, Tensor], prefix: str) -> None:
        if f"{prefix}centroids" not in tensors:
            self.__init__()  # type: ignore[misc]
            return
        centroids, tasks = tensors[f"{prefix}centroids"], tensors[f"{prefix}tasks"]
        if centroids.dim() != 2 or tasks.shape != (centroids.shape[0],):
            raise StateCorruptError(
                f"saved prototypes {tuple(centroids.shape)} and task ids {tuple(tasks.shape)} "
                "do not match; the state is inconsistent"
            )
        self.centroids = centroids.to(torch.float32).clone()
        self.tasks = tasks.to(torch.long).clone()


def run_grouped(tasks: Tensor, inputs: Tensor, run: Callable[[int, Tensor], Tensor]) -> Tensor:
    """``run(task, rows)`` once per task present in ``tasks`` (N,), on that task's rows of
    ``inputs`` (N, ...), with the results scattered back into row order: per-sample routing of
    a mixed batch in one call per expert."""
    if len(tasks) != len(inputs):
        raise DataError(f"{len(tasks)} task ids for {len(inputs)} rows")
    out: Tensor | None = None
    for task in torch.unique(tasks).tolist():
        rows = (tasks == task).nonzero().squeeze(1).to(inputs.device)
        result = run(int(task), inputs[rows])
        if out is None:
            out = result.new_empty((len(inputs), *result.shape[1:]))
        out[rows.to(result.device)] = result
    if out is None:
        raise DataError("routing needs at least one row")
    return out
