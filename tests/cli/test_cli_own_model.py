"""A state trained in Python from an nn.Module (issue 10.1), used from the CLI.

The state names its model only by class (``module:Net``) and never runs code: ``evaluate``
without the model is one line saying what to pass; with a model file whose ``model_fn`` builds
the same network and ``--accept-model-change`` it evaluates, and the state is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ricordo.updater import Updater

NET_SOURCE = """
from torch import nn


class Net(nn.Module):
    def __init__(self, outputs=2):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, outputs)

    def forward(self, x):
        return self.head(self.body(x))


def model_fn(num_classes):
    return Net(num_classes)
"""


def test_an_nn_module_state_from_the_cli(
    tmp_path: Path, chunks: Path, cli: Callable[..., Any], digest: Callable[[Path], Any]
) -> None:
    namespace: dict[str, Any] = {"__name__": "user_script"}
    exec(compile(NET_SOURCE, "<net>", "exec"), namespace)  # the user's class, in their script
    data = np.load(chunks / "train-0.npz")
    updater = Updater(model=namespace["Net"](), epochs=1, memory_size=20, progress=False)
    updater.update(data["x"], data["y"])
    state = tmp_path / "v0"
    updater.save(str(state))
    before = digest(state)

    result = cli("evaluate", "--state", state, "--data", chunks / "test-0.npz")
    assert result.code == 1 and result.out == "", result.describe()
    assert len(result.err_lines) == 1, result.describe()
    line = result.err_lines[0]
    assert (
        line.startswith("ricordo: error: the state at ") and "needs its model, an instance" in line
    )
    assert "--config" in line and "--accept-model-change" in line

    model_file = tmp_path / "net.py"
    model_file.write_text(NET_SOURCE)
    ok = cli(
        "evaluate",
        "--state",
        state,
        "--data",
        chunks / "test-0.npz",
        "--config",
        model_file,
        "--accept-model-change",
    )
    assert ok.code == 0, ok.describe()
    assert "accuracy" in ok.out
    assert digest(state) == before


def test_model_option_takes_a_python_file_like_config(
    tmp_path: Path, chunks: Path, cli: Callable[..., Any]
) -> None:
    # `--model net.py` means the user's code (it used to fail as an unknown built-in name).
    model_file = tmp_path / "net.py"
    model_file.write_text(NET_SOURCE)
    state = tmp_path / "v0"
    args = ["--data", chunks / "train-0.npz", "--epochs", "1", "--no-progress"]
    made = cli("update", *args, "--model", model_file, "--next-state", state)
    assert made.code == 0, made.describe()
    loaded = Updater.load(str(state), model=str(model_file))
    assert type(loaded.model).__name__ == "Net"

    both = cli(
        "update", *args, "--model", model_file, "--config", model_file, "--next-state", state
    )
    assert both.code == 1 and len(both.err_lines) == 1, both.describe()
    assert "both name model code; pass one of them" in both.err_lines[0]
