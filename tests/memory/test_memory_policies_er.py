"""Every memory policy and storage through the Updater: ER learns, saves, reloads, continues."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError

FAST = dict(epochs=2, lr=0.1, memory_size=100, progress=False, hidden=(64,))
CASES = [
    ("reservoir", "ram"),
    ("class-balanced", "ram"),
    ("sliding-window", "ram"),
    ("herding", "ram"),
    ("reservoir", "mmap"),
    ("herding", "mmap"),
]


def assert_same(a: Updater, b: Updater) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert a.memory is not None and b.memory is not None
    assert (len(a.memory), a.memory.seen) == (len(b.memory), b.memory.seen)
    for name, value in a.memory.get().items():
        assert torch.equal(value, b.memory.get()[name]), name
    assert torch.equal(a.memory.generator.get_state(), b.memory.generator.get_state())


@pytest.mark.parametrize("policy, storage", CASES)
def test_er_with_each_policy_reloads_and_continues_identically(
    policy: str, storage: str, digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="er", memory_policy=policy, memory_storage=storage, **FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    assert updater.memory is not None
    assert (updater.memory.policy_name, updater.memory.storage) == (policy, storage)
    assert updater.evaluate(digits_scenario.test[1])["accuracy"] > 0.8  # it learns
    updater.save(str(tmp_path / "v1"))
    suffix = ".npy" if storage == "mmap" else ".safetensors"
    assert any(p.suffix == suffix for p in (tmp_path / "v1" / "memory").iterdir())
    reloaded = Updater.load(str(tmp_path / "v1"))
    assert reloaded.memory is not None and reloaded.memory.storage == storage
    test_all = digits_scenario.test_all()
    assert torch.equal(reloaded.predict_logits(test_all.x), updater.predict_logits(test_all.x))
    assert_same(updater, reloaded)
    updater.update(digits_scenario.train[2])
    reloaded.update(digits_scenario.train[2])
    assert_same(updater, reloaded)


def test_er_memory_shapes_per_policy(digits_scenario: Scenario) -> None:
    memories = {}
    for policy in ("class-balanced", "sliding-window", "herding"):
        updater = Updater(method="er", memory_policy=policy, **FAST)
        for chunk in digits_scenario.train[:3]:
            updater.update(chunk)
        assert updater.memory is not None and len(updater.memory) == 100
        memories[policy] = updater.memory.get()["y"]
    seen = sorted(c for classes in digits_scenario.chunk_classes[:3] for c in classes)
    for policy in ("class-balanced", "herding"):  # 6 classes share 100 slots: 16 or 17 each
        counts = torch.bincount(memories[policy])[seen]
        assert int(counts.min()) >= 16 and int(counts.max()) <= 17, (policy, counts)
    # The sliding window holds only the latest chunk's classes.
    assert set(memories["sliding-window"].tolist()) == set(digits_scenario.chunk_classes[2])


def test_herding_exemplars_are_distinct_chunk_rows(digits_scenario: Scenario) -> None:
    updater = Updater(method="er", memory_policy="herding", **FAST)
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    assert updater.memory is not None
    x = updater.memory.get()["x"]
    assert x.unique(dim=0).shape[0] == len(x) == 100  # no row twice
    pool = torch.cat([digits_scenario.train[0].x, digits_scenario.train[1].x])
    matches = (x[:, None, :] == pool[None, :, :]).all(-1).any(1)
    assert bool(matches.all())


def test_herding_needs_rows_it_can_rebuild(digits_scenario: Scenario) -> None:
    """A method storing fields the chunk lacks must supply them (memory_candidates)."""
    from ricordo.methods.er import ExperienceReplay

    class Extra(ExperienceReplay):
        def after_step(self, batch, ctx):  # type: ignore[no-untyped-def]
            assert self.memory is not None
            self.memory.add({"x": batch.x, "y": batch.y, "w": torch.ones(len(batch.y))})

    updater = Updater(method="er", memory_policy="herding", **FAST)
    updater.method.__class__ = Extra
    with pytest.raises(ConfigError, match="memory_candidates"):
        updater.update(digits_scenario.train[0])
    assert updater.updates == 0  # rolled back


def test_joint_keeps_its_infinite_memory_also_memory_mapped(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(
        method="joint",
        memory_storage="mmap",
        memory_size=0,
        **{k: v for k, v in FAST.items() if k != "memory_size"},
    )
    updater.update(digits_scenario.train[0])
    assert updater.memory is not None and updater.memory.policy_name == "infinite"
    assert updater.memory.storage == "mmap"
    updater.save(str(tmp_path / "j"))
    reloaded = Updater.load(str(tmp_path / "j"))
    updater.update(digits_scenario.train[1])
    reloaded.update(digits_scenario.train[1])
    assert_same(updater, reloaded)


def test_storage_is_fixed_for_a_lineage(digits_scenario: Scenario) -> None:
    updater = Updater(method="er", **FAST)
    updater.update(digits_scenario.train[0])
    with pytest.raises(ConfigError, match="memory_storage"):
        updater.update(digits_scenario.train[1], memory_storage="mmap")
    with pytest.raises(ConfigError, match="--memory-storage"):
        Updater(method="er", memory_storage="disk")
    with pytest.raises(ConfigError, match="--memory-dir"):
        Updater(method="er", memory_dir="/tmp")


def test_new_process_continues_an_mmap_herding_lineage(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="er", memory_policy="herding", memory_storage="mmap", **FAST)
    updater.update(digits_scenario.train[0])
    updater.save(str(tmp_path / "v0"))
    chunk = digits_scenario.train[1]
    np.savez(tmp_path / "c1.npz", x=chunk.x.numpy(), y=chunk.y.numpy())
    code = textwrap.dedent(
        f"""
        import numpy as np
        from ricordo import Updater
        u = Updater.load({str(tmp_path / "v0")!r})
        data = np.load({str(tmp_path / "c1.npz")!r})
        u.update(data["x"], data["y"])
        u.save({str(tmp_path / "v1")!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    updater.update(chunk)
    other = Updater.load(str(tmp_path / "v1"))
    assert_same(updater, other)
