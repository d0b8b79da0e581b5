"""Data-parallel updates (``--strategy ddp``): which process this is, and how a batch is split.

Every process runs the whole job (Lightning Fabric re-runs the command for ranks 1..N-1, or
``torchrun``/SLURM started them all) and sees the whole chunk. Each step every rank builds the
same global batch from the same seeded order and trains on its share of it (rows ``rank``,
``rank + N``, ...); Fabric's DDP wrapper averages the gradients, so a step is the step one
process would take on the global batch. The rehearsal memory is replicated: every rank inserts
the whole global batch with identical generators, so the memories stay equal without any
communication, and equal to the memory of a one-process run on the same seed. Rank 0 alone
writes states.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch
from torch import nn

# The Fabric strategies that run one update on several processes.
DATA_PARALLEL = ("ddp",)

T = TypeVar("T", bound=torch.Tensor)


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def is_writer() -> bool:
    """True in the one process that writes states and prints results (rank 0)."""
    return rank() == 0


def shard(rows: T, rank_: int, world: int) -> T:
    """This rank's rows of a global batch: every ``world``-th row from ``rank_`` (all of them
    in one process). Strided, so ranks get equal shares (within one row) of any batch."""
    if world == 1:
        return rows
    return rows[rank_::world]  # type: ignore[return-value]


def mean_across_ranks(value: torch.Tensor, world: int) -> float:
    """The mean of a scalar over the ranks (the global batch's loss); itself in one process
    (``item()``: no detached copy needed, it is read every step)."""
    if world == 1:
        return value.item()
    total = value.detach().to(torch.float64).reshape(1).clone()
    torch.distributed.all_reduce(total)
    return float(total) / world


def unshard(part: T, rows: int, world: int) -> T:
    """The global batch of ``rows`` rows from every rank's ``shard`` of it (the inverse of
    ``shard``, by an all-gather): what one process computed for the whole batch, e.g. the
    logits DER stores with each new row. Itself in one process."""
    if world == 1:
        return part
    # all_gather needs equal sizes: pad every shard to the largest, then drop the padding.
    largest = -(-rows // world)
    padded = part.new_zeros((largest, *part.shape[1:]))
    padded[: len(part)] = part
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded.contiguous())
    whole = part.new_empty((rows, *part.shape[1:]))
    for rank_, piece in enumerate(gathered):
        whole[rank_::world] = piece[: len(range(rank_, rows, world))]
    return whole  # type: ignore[return-value]


def global_rows(rows: int, world: int) -> int:
    """The rows of the global batch whose shard on this rank has ``rows`` rows."""
    if world == 1:
        return rows
    total = torch.tensor([rows], dtype=torch.int64, device=_collective_device())
    torch.distributed.all_reduce(total)
    return int(total)


def average_gradients(parameters: Iterable[nn.Parameter], world: int) -> None:
    """Average the gradients of ``parameters`` across the ranks, as DistributedDataParallel
    does for a wrapped model (for methods that train parameters outside it: the PEFT methods'
    heads, prompts and keys). One all-reduce of one flat buffer; a parameter no rank gave a
    gradient keeps ``grad = None`` (so optimizers skip it, as in one process), one that only
    some ranks reached gets the ranks' mean with zeros for the others (what the global batch's
    gradient is). Nothing in one process."""
    if world == 1:
        return
    params = list(parameters)
    if not params:
        return
    device = params[0].device  # the ranks' one training device: every gradient is there
    pieces = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    reached = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([*(piece.reshape(-1).float() for piece in pieces), reached])
    torch.distributed.all_reduce(flat)
    start = 0
    for p, any_rank in zip(params, flat[-len(params) :].tolist(), strict=True):
        size = p.numel()
        if any_rank > 0:
            p.grad = (flat[start : start + size] / world).view_as(p).to(p.dtype)
        else:
            p.grad = None
        start += size


def _collective_device() -> torch.device:
    """Where tensors of a collective live: the GPU for NCCL, the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
