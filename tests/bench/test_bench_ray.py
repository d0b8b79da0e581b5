"""Sweeps on Ray: a local cluster when Ray is installed; a clear error when it is not."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ricordo.bench import run_sweep
from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError

SPEC = {"dataset": "digits", "updates": 2}


def test_missing_ray_is_a_config_error(
    tmp_path: Path, tiny: Callable[..., UpdateConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ricordo\[hpo\]'"):
        run_sweep(SPEC, [tiny("finetune")], [0, 1], tmp_path / "out", ray_address="local")


@pytest.mark.slow
def test_sweep_on_a_local_ray_cluster(tmp_path: Path, tiny: Callable[..., UpdateConfig]) -> None:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    out = tmp_path / "ray"
    summary = run_sweep(
        SPEC, [tiny("finetune", epochs=1)], [0, 1], out, workers=2, ray_address="local"
    )
    assert not ray.is_initialized()  # the cluster it started is shut down again
    assert summary["failed"] == []
    files = sorted(p.name for p in (out / "runs").iterdir())
    assert files == ["finetune-seed0.json", "finetune-seed1.json"]
    runs = [json.loads((out / "runs" / f).read_text()) for f in files]
    assert [r["config"]["seed"] for r in runs] == [0, 1]
    assert summary["methods"]["finetune"]["metrics"]["average_accuracy"]["n"] == 2
    assert summary["experiment"]["ray_address"] == "local"
