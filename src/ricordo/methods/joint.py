"""Joint training: keep every sample ever seen and train on all of them (the upper bound).

An unbounded memory (the ``infinite`` policy, --memory-size is ignored) keeps every row of every
chunk; each update trains on the old rows and the new chunk together, continuing from the current
weights rather than from scratch (the bound a continual learner could reach with unlimited storage
and compute, as the "JOINT" rows of the DER paper and Avalanche's cumulative baseline).
"""

from __future__ import annotations

from ricordo.config import UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.methods.base import Method, UpdateContext, register


@register
class Joint(Method):
    name = "joint"
    supports_ddp = True  # tests/test_ddp_methods.py: 2 ranks write one process's state
    summary = "Train on all data seen so far, continuing from the current weights (upper bound)."

    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str]:
        return None, "infinite"

    def training_data(self, data: ArrayDataset, ctx: UpdateContext) -> ArrayDataset:
        assert self.memory is not None
        if len(self.memory) == 0:
            return data
        old = self.memory.get()
        return ArrayDataset.concat([ArrayDataset(old["x"], old["y"]), data])

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        assert self.memory is not None
        self.memory.add({"x": data.x, "y": data.y})
