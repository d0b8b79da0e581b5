"""Every registered method: documented, tested, safe with --mask-unseen, running in class-, task-
and domain-incremental streams and learning each task. Retention against fine-tuning:
test_retention.py."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from ricordo import Updater
from ricordo.data import Scenario, load_builtin, make_scenario
from ricordo.errors import ConfigError
from ricordo.methods import METHODS

TESTS = Path(__file__).parent
# Methods that train parts of a pretrained transformer (s-prompts, s-lora, color) need
# --backbone: the digits MLP runs below are for the others; test_peft_routing.py trains them,
# and test_backbone_methods_refuse_without_a_backbone checks their one-line refusal.
DIGITS_METHODS = [n for n in METHODS.names() if not METHODS.get(n).needs_backbone]
BACKBONE_METHODS = [n for n in METHODS.names() if METHODS.get(n).needs_backbone]


@pytest.mark.parametrize("name", METHODS.names())
def test_method_has_a_summary_and_a_test_file(name: str) -> None:
    method = METHODS.get(name)
    assert method.summary, f"{name} needs a one-line summary (README table)"
    # tests/methods/, or tests/ for methods tested with their parts (test_peft_routing.py)
    files = [*TESTS.glob("test_*.py"), *TESTS.parent.glob("test_*.py")]
    sources = "".join(p.read_text() for p in files)
    assert f'"{name}"' in sources, f"no test mentions method {name!r}"


@pytest.mark.parametrize("name", DIGITS_METHODS)
def test_method_trains_with_mask_unseen(name: str, digits_scenario: Scenario) -> None:
    """Masked logits are -inf: methods that regress logits must use the raw ones."""
    updater = Updater(
        method=name, mask_unseen=True, epochs=1, memory_size=60, hidden=(32,), progress=False
    )
    for chunk in digits_scenario.train[:2]:
        record = updater.update(chunk)
        assert math.isfinite(record["train"]["final_loss"])
    # Prediction never masks: a -inf kept from training (e.g. stored as a target) would show here.
    assert bool(torch.isfinite(updater.predict_logits(digits_scenario.test_all().x)).all())


# Streams a method does not suit, and what it says there instead of silently degrading.
UNSUITED = {("gdumb", "permutation"): "GDumb suits class- and task-incremental streams"}


# Renate divides super-er's loss by 1 + the sum of its weights (4.1 by default): its new-batch
# cross-entropy takes ~4x smaller steps, so it gets the same 3 epochs at 4x the learning rate.
# EWC's λ 90 (Mammoth's) goes with Mammoth's lr 0.03: at 0.1 its penalty makes SGD diverge.
LEARNING_RATES = {"super-er": 0.4, "ewc": 0.03, "online-ewc": 0.03}
# CLS-ER's published defaults need more steps than 3 short epochs: its stable model, which
# predicts, averages ~100 steps (decay 0.99), so it gets 30 epochs.
OPTIONS: dict[str, dict] = {"cls-er": {"epochs": 30}}


@pytest.fixture(scope="module")
def scenarios() -> dict[str, Scenario]:
    train, test = load_builtin("digits")
    kinds = ("class-incremental", "task-incremental", "permutation")
    return {kind: make_scenario(kind, train, test, updates=5, seed=0) for kind in kinds}


@pytest.mark.parametrize("kind", ["class-incremental", "task-incremental", "permutation"])
@pytest.mark.parametrize("name", DIGITS_METHODS)
def test_method_learns_in_class_task_and_domain_incremental_streams(
    name: str, kind: str, scenarios: dict[str, Scenario], caplog: pytest.LogCaptureFixture
) -> None:
    """Two updates of each kind of stream: every method runs without a warning, or says that the
    stream does not suit it; with the task known it separates the task's classes. (Accuracy on
    class- and domain-incremental streams: test_retention.py compares it with fine-tuning, which
    any bar on the seen classes here would let through.)"""
    scenario = scenarios[kind]
    lr = LEARNING_RATES.get(name, 0.1)
    options = {"epochs": 3, **OPTIONS.get(name, {})}
    updater = Updater(method=name, memory_size=60, hidden=(32,), lr=lr, progress=False, **options)
    with caplog.at_level(logging.WARNING, logger="ricordo.methods"):
        for chunk in scenario.train[:2]:
            updater.update(chunk)
    if (name, kind) in UNSUITED:
        assert UNSUITED[name, kind] in caplog.text
        return
    assert not caplog.text
    if kind == "task-incremental":  # the task id is known: logits masked to its classes
        accuracy = updater.evaluate(scenario.test[1], classes=scenario.chunk_classes[1])
        assert accuracy["accuracy"] > 0.75, accuracy  # chance: 0.5


@pytest.mark.parametrize("name", BACKBONE_METHODS)
def test_backbone_methods_refuse_without_a_backbone(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        Updater(method=name, progress=False)
    assert str(error.value) == (
        f"method {name!r} trains small parts of a frozen pretrained transformer; pass "
        "--backbone NAME_OR_PATH (Python: backbone=...), a ViT or BERT-like encoder's hub "
        "name or folder"
    )
