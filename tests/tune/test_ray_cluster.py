"""Sweeps and tuning trials on a 2-node Ray cluster that the test starts on this machine.

Both nodes have one CPU each and every run or trial asks for one, so two at once must land on
different nodes: the records name the node that ran each (``node``), and both must appear.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from ricordo.cli import app
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.tune.objective import METRIC
from ricordo.tune.storage import other_machines, trial_storage
from ricordo.updater import Updater


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimpleNamespace]:
    """A head and a worker node, one CPU each (Ray picks free ports); always torn down."""
    import ray  # the hpo and dev extras: missing it is a failure, not a skip
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    # Cluster() records its address as this machine's current Ray cluster (/tmp/ray), which a
    # plain ray.init() of another test running in parallel would then join: it is not recorded.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
        nodes = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
    try:
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes(timeout=120)
        ids = {node.node_id for node in nodes.list_all_nodes()}
        yield SimpleNamespace(address=nodes.address, node_ids=ids)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        nodes.shutdown()


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_benchmark_sweep_runs_on_both_nodes(cluster: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    _invoke(
        "benchmark", "--methods", "finetune", "--seeds", "0,1", "--updates", "2",
        "--epochs", "1", "--hidden", "32", "--threads", "1", "--workers", "2",
        "--ray-address", cluster.address, "--output", str(out), "--no-progress",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == []
    assert summary["experiment"]["ray_address"] == cluster.address
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert {r["node"] for r in summary["runs"]} == cluster.node_ids
    for run in summary["runs"]:
        results = json.loads((out / run["file"]).read_text())
        assert len(results["per_update"]) == 2


def test_tune_trials_run_on_both_nodes_with_shared_storage(
    cluster: SimpleNamespace,
    digits_scenario: Scenario,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both trials pending at once (ricordo queues one at a time by default), so that the second
    # cannot wait for the first one's CPU and must take the other node's.
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "2")
    chunk = digits_scenario.train[0]
    data = tmp_path / "train-0.npz"
    np.savez(data, x=chunk.x.numpy(), y=chunk.y.numpy())
    (tmp_path / "space.yaml").write_text("lr: {choice: [0.05, 0.1]}\n")
    storage = tmp_path / "shared"
    output = _invoke(
        "tune", "--data", str(data), "--next-state", str(tmp_path / "v1"),
        "--space", str(tmp_path / "space.yaml"), "--scheduler", "random", "--trials", "2",
        "--max-epochs", "2", "--method", "er", "--memory-size", "50", "--hidden", "32",
        "--ray-address", cluster.address, "--storage", f"file://{storage}", "--no-progress",
        "--max-time", "300",  # Ray stops the trials rather than hang the suite
    )  # fmt: skip
    assert "2 trials" in output
    record = Updater.load(str(tmp_path / "v1")).history[-1]["tune"]
    trials = record["trials"]
    assert [t["status"] for t in trials] == ["done", "done"]
    assert all(t["epochs"] == 2 and t["metric"] is not None for t in trials)
    assert {t["node"] for t in trials} == cluster.node_ids
    # Every trial's results and checkpoints are on the storage, and kept there.
    folders = sorted(p for p in (storage / "trials").iterdir() if p.is_dir())
    assert len(folders) == 2
    for folder, trial in zip(folders, trials, strict=True):
        lines = (folder / "result.json").read_text().splitlines()
        results = [json.loads(line) for line in lines]
        assert [r["epochs"] for r in results] == [1, 2]
        assert results[-1]["node"] == trial["node"]
        assert results[-1][METRIC] == pytest.approx(trial["metric"])
        checkpoints = sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint_"))
        assert checkpoints == ["checkpoint_000000", "checkpoint_000001"]


def test_storage_takes_folders_and_fsspec_urls(tmp_path: Path) -> None:
    assert trial_storage("trials").path == str(Path.cwd() / "trials")
    local = trial_storage(f"file://{tmp_path}/t")
    assert (local.path, local.local) == (f"{tmp_path}/t", True)
    remote = trial_storage("memory://bucket/tune")
    assert not remote.local and remote.url == "memory://bucket/tune"
    assert remote.path == "/bucket/tune"
    assert type(remote.filesystem).__name__ == "PyFileSystem"  # pyarrow, as Ray requires
    with pytest.raises(ConfigError, match=r"^--storage nope://x cannot be opened \("):
        trial_storage("nope://x")


def test_other_machines_are_the_nodes_at_other_addresses() -> None:
    nodes = [
        {"NodeManagerAddress": "10.0.0.1", "Alive": True},
        {"NodeManagerAddress": "10.0.0.2", "Alive": True},
        {"NodeManagerAddress": "10.0.0.3", "Alive": False},  # a dead node is ignored
    ]
    ray = SimpleNamespace(
        util=SimpleNamespace(get_node_ip_address=lambda: "10.0.0.1"), nodes=lambda: nodes
    )
    assert other_machines(ray) == ["10.0.0.2"]


def test_a_cluster_on_other_machines_needs_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    from ricordo.tune import runner

    monkeypatch.setattr(runner, "other_machines", lambda ray: ["10.0.0.2"])
    plan = runner.SearchPlan("random", 2, 1, None, "10.0.0.1:6379", None, 0)
    with pytest.raises(ConfigError) as error:
        runner._check_storage_reachable(object(), plan)
    assert str(error.value) == (
        "the Ray cluster at 10.0.0.1:6379 has nodes on other machines (10.0.0.2); give "
        "--storage (--trials-dir) as storage every node reaches: an fsspec URL such as "
        "s3://bucket/tune, or a folder mounted on every node"
    )
    with_storage = runner.SearchPlan("random", 2, 1, None, "10.0.0.1:6379", "s3://b/t", 0)
    runner._check_storage_reachable(object(), with_storage)  # given: accepted
