"""Scenarios cut one (train, test) dataset into a sequence of chunks, one per model update.

Each scenario is one registered function ``(train, test, updates, seed, *, data_name, **options)
-> Scenario``; ``make_scenario`` looks it up by name and checks the options. One module per
family: ``classes`` (class-, task-incremental, blurry), ``transforms`` (permutation, rotation,
hue-shift), ``sorting`` (feature-sorting), ``streams`` (iid, grouped, time-incremental).
"""

from __future__ import annotations

from ricordo.data.scenarios.base import (
    SCENARIOS,
    Scenario,
    ScenarioFn,
    make_scenario,
    mask_logits,
    scenario_options,
    task_mask,
)
from ricordo.data.scenarios.classes import blurry, class_incremental, task_incremental
from ricordo.data.scenarios.sorting import feature_sorting
from ricordo.data.scenarios.streams import grouped, iid, time_incremental
from ricordo.data.scenarios.transforms import (
    hue_shift,
    permutation,
    permute_features,
    rotate,
    rotation,
    shift_hue,
)

__all__ = [
    "SCENARIOS",
    "Scenario",
    "ScenarioFn",
    "blurry",
    "class_incremental",
    "feature_sorting",
    "grouped",
    "hue_shift",
    "iid",
    "make_scenario",
    "mask_logits",
    "permutation",
    "permute_features",
    "rotate",
    "rotation",
    "scenario_options",
    "shift_hue",
    "task_incremental",
    "task_mask",
    "time_incremental",
]
