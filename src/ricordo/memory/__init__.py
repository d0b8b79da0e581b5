"""Rehearsal memory: per-field tensor storage with pluggable selection policies."""

from __future__ import annotations

from ricordo.memory.buffer import TensorMemory
from ricordo.memory.policies import POLICIES, InfinitePolicy, MemoryPolicy, ReservoirPolicy

__all__ = ["POLICIES", "InfinitePolicy", "MemoryPolicy", "ReservoirPolicy", "TensorMemory"]
