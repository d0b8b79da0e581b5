"""Retention against fine-tuning on the same stream and seed.

Three updates of digits (class-incremental: 2 new classes each; permutation: every class, a new
pixel permutation each), then the accuracy on the first chunk's test set ("old") and on all test
data seen so far ("seen"). A method known to retain in that kind of stream must keep the first
chunk better than ``finetune`` by a margin, and must not buy it by failing to learn the later
chunks (its "seen" accuracy beats fine-tuning's too). Fine-tuning itself keeps nothing of the first
chunk in class-incremental streams, so a smoke bar on "seen" would not tell the two apart.

Margins are below the smallest gap measured over seeds 0-3 (the test runs seed 0); the comments
give the gaps. Methods left out, and why, are listed under the tables.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from ricordo import Updater
from ricordo.data import ArrayDataset, Scenario, load_builtin, make_scenario

CONFIG: dict[str, Any] = dict(epochs=5, memory_size=100, hidden=(64,), lr=0.1, progress=False)
UPDATES = 3

# Methods whose defaults do not suit three short updates (~45 steps each) take a documented option.
PARAMS: dict[str, dict[str, Any]] = {
    # The published decays average the stable model over more steps than these updates have, so
    # it has not learnt the later chunks yet ("seen" at fine-tuning's level); cls_er.py.
    "cls-er": {"adapt_decays": True},
    # Renate's consolidation (--epochs over the memory at --lr) cannot fit a fresh model in 5
    # epochs (chance accuracy); GDumb's fit from scratch, the documented opt-in (rd.py).
    "rd": {"fitting_epochs": 128, "schedule": "sgdr"},
    # Plain SGD at lr 0.1 is stable only while lr * 2 * lambda * F < 2 for every parameter.
    "ewc": {"ewc_lambda": 10.0},
    "online-ewc": {"ewc_lambda": 10.0},
}

# kind -> method -> (margin on "old", margin on "seen") over fine-tuning.
RETAINS: dict[str, dict[str, tuple[float, float]]] = {
    # Replay keeps old classes in the softmax; measured "old" gaps >= +0.37 (der), "seen" >= +0.28.
    "class-incremental": {
        name: (0.3, 0.2)
        for name in (
            "er",
            "er-ace",
            "der",
            "der++",
            "offline-er",
            "icarl",
            "bic",
            "cls-er",
            "super-er",
            "gdumb",
            "rd",
            "joint",
            "a-gem",
        )
    },
    "permutation": {
        # Replay and EWC: "old" gaps >= +0.15 (online EWC), "seen" >= +0.06.
        **{
            name: (0.1, 0.0)
            for name in (
                "er",
                "er-ace",
                "der",
                "der++",
                "offline-er",
                "bic",
                "cls-er",
                "super-er",
                "joint",
                "a-gem",
                "ewc",
                "online-ewc",
            )
        },
        # These keep a little: "old" gaps >= +0.04 (pod-er), +0.09 (lwf, si); "seen" >= +0.02.
        **{name: (0.03, 0.0) for name in ("pod-er", "lwf", "si")},
    },
}
# Left out. Class-incremental: ewc, online-ewc, si and lwf keep no old class without a memory
# (as published, e.g. van de Ven et al. 2019); pod-er (Renate's: no cross-entropy on memory rows)
# kept none in this stream either. Permutation: gdumb does not suit it (it warns, see
# test_methods_registry.py); rd's fresh model fitted to 100 rows of ten classes scores below
# fine-tuning on "seen"; icarl has its own test (test_method_icarl.py).


@functools.cache
def scenario(kind: str) -> Scenario:
    train, test = load_builtin("digits")
    return make_scenario(kind, train, test, updates=5, seed=0)


@functools.cache
def old_and_seen(kind: str, name: str) -> tuple[float, float]:
    """Accuracy on the first chunk and on everything seen, after UPDATES updates."""
    stream = scenario(kind)
    updater = Updater(method=name, params=PARAMS.get(name, {}), **CONFIG)
    for chunk in stream.train[:UPDATES]:
        updater.update(chunk)
    seen = ArrayDataset.concat(stream.test[:UPDATES])
    return updater.evaluate(stream.test[0])["accuracy"], updater.evaluate(seen)["accuracy"]


CASES = [(kind, name) for kind, methods in RETAINS.items() for name in methods]


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_method_keeps_the_first_chunk_better_than_finetuning(kind: str, name: str) -> None:
    old, seen = old_and_seen(kind, name)
    baseline_old, baseline_seen = old_and_seen(kind, "finetune")
    margin_old, margin_seen = RETAINS[kind][name]
    assert old > baseline_old + margin_old, (old, baseline_old)
    assert seen > baseline_seen + margin_seen, (seen, baseline_seen)


def test_finetuning_forgets_the_first_chunk_of_a_class_incremental_stream() -> None:
    """What the comparison is against: fine-tuning learns each chunk and keeps nothing of the
    first in class-incremental streams; it keeps part of it in permuted ones."""
    old, seen = old_and_seen("class-incremental", "finetune")
    assert old == 0.0 and seen > 0.15  # the last chunk: a third of the seen rows
    old, _ = old_and_seen("permutation", "finetune")
    assert 0.15 < old < 0.7
