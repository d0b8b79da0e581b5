"""Every method's saved state continues identically in a new process.

One child process loads the state each method saved after two updates, predicts, runs the third
update and predicts again; everything matches this process bit for bit (er-ace's state is also
continued by the ``ricordo update`` command in that child). One child for all methods: each test
file used to start its own, and interpreter and torch start-up cost ~46 s of the suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import FAST, assert_continues_identically_in_a_new_process, train_two_updates

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.methods import METHODS

# GDumb and RD fit a fresh model to the memory for 256 epochs by default; a few suffice here
# (RD's expert and consolidation need a memory that holds the chunk, as in test_method_rd.py).
CONFIGS: dict[str, dict[str, Any]] = {
    "gdumb": {**FAST, "params": {"fitting_epochs": 8}},
    "rd": {**FAST, "epochs": 10, "memory_size": 300, "params": {"fitting_epochs": 10}},
    # Continuing does not depend on lambda; this one keeps SGD at lr 0.1 stable on digits.
    "ewc": {**FAST, "params": {"ewc_lambda": 10.0}},
    "online-ewc": {**FAST, "params": {"ewc_lambda": 10.0}},
}


def test_every_method_state_continues_identically_in_a_new_process(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updaters = {
        name: train_two_updates(Updater(method=name, **CONFIGS.get(name, FAST)), digits_scenario)
        for name in METHODS.names()
        if not METHODS.get(name).needs_backbone  # test_peft_routing.py continues those
    }
    assert_continues_identically_in_a_new_process(
        updaters, digits_scenario, tmp_path, cli=("er-ace",), timeout=600
    )
