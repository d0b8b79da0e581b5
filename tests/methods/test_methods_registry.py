"""Every registered method: documented, tested, and safe with --mask-unseen."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.methods import METHODS

TESTS = Path(__file__).parent


@pytest.mark.parametrize("name", METHODS.names())
def test_method_has_a_summary_and_a_test_file(name: str) -> None:
    method = METHODS.get(name)
    assert method.summary, f"{name} needs a one-line summary (README table)"
    sources = "".join(p.read_text() for p in TESTS.glob("test_*.py"))
    assert f'"{name}"' in sources, f"no test mentions method {name!r}"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_with_mask_unseen(name: str, digits_scenario: Scenario) -> None:
    """Masked logits are -inf: methods that regress logits must use the raw ones."""
    updater = Updater(
        method=name, mask_unseen=True, epochs=1, memory_size=60, hidden=(32,), progress=False
    )
    for chunk in digits_scenario.train[:2]:
        record = updater.update(chunk)
        assert math.isfinite(record["train"]["final_loss"])
    assert 0.0 <= updater.evaluate(digits_scenario.test_all())["accuracy"] <= 1.0
