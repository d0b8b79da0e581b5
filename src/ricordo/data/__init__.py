"""Data: load arrays, files and torch datasets; built-in datasets; scenarios that make chunks."""

from __future__ import annotations

from ricordo.data.builtin import DATASETS, load_builtin
from ricordo.data.dataset import ArrayDataset
from ricordo.data.export import export_scenario
from ricordo.data.lazy import LazyDataset
from ricordo.data.loaders import load_data
from ricordo.data.scenarios import SCENARIOS, Scenario, make_scenario

__all__ = [
    "DATASETS",
    "LazyDataset",
    "SCENARIOS",
    "ArrayDataset",
    "Scenario",
    "export_scenario",
    "load_builtin",
    "load_data",
    "make_scenario",
]
