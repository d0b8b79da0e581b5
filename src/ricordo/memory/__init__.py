"""Rehearsal memory: per-field tensor storage (RAM or memory-mapped) with pluggable policies."""

from __future__ import annotations

from ricordo.memory.buffer import TensorMemory
from ricordo.memory.herding import herding_order
from ricordo.memory.policies import (
    POLICIES,
    ClassBalancedPolicy,
    GradientMatchingPolicy,
    HerdingPolicy,
    InfinitePolicy,
    MemoryPolicy,
    ReservoirPolicy,
    SlidingWindowPolicy,
)
from ricordo.memory.storage import STORAGES

__all__ = [
    "POLICIES",
    "STORAGES",
    "ClassBalancedPolicy",
    "GradientMatchingPolicy",
    "HerdingPolicy",
    "InfinitePolicy",
    "MemoryPolicy",
    "ReservoirPolicy",
    "SlidingWindowPolicy",
    "TensorMemory",
    "herding_order",
]
