"""A benchmark sweep and tuning trials on a Ray cluster, the trials' results on shared storage.

Start the cluster first (README, *Scaling out*), then give its address and the storage:

    ray start --head --port 6379 --num-cpus 4              # on the head machine
    ray start --address HEAD_IP:6379 --num-cpus 4          # on each other machine
    python examples/ray_cluster.py HEAD_IP:6379 s3://bucket/tune    # or a folder every node mounts

Without arguments it starts a two-node cluster on this machine (one CPU per node, as
``tests/tune/test_ray_cluster.py`` does), uses a temporary folder as the storage, and stops the
cluster at the end. Each run and trial prints the Ray node that ran it (the two sweep runs
start together, so they take one node each; Ricordo queues one new trial at a time, so short
trials may all run on one node).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from ricordo.bench import run_sweep
from ricordo.config import UpdateConfig
from ricordo.data import load_builtin, make_scenario
from ricordo.tune import tune


@contextmanager
def cluster(address: str | None) -> Iterator[str]:
    """The address given, or a two-node cluster on this machine for the length of the block."""
    if address is not None:
        yield address
        return
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        yield nodes.address
    finally:
        nodes.shutdown()


def main(address: str | None, storage: str) -> None:
    with cluster(address) as ray_address:
        out = tempfile.mkdtemp(prefix="ricordo-sweep-")
        config = UpdateConfig(method="er", memory_size=100, hidden=(32,), epochs=2, threads=1)
        summary = run_sweep(
            {"dataset": "digits", "updates": 3},
            [config],
            [0, 1],
            out,
            workers=2,
            ray_address=ray_address,
        )
        accuracy = summary["methods"]["er"]["metrics"]["average_accuracy"]["mean"]
        for run in summary["runs"]:
            print(f"sweep run {run['run']}: {run['status']} on node {run['node'][:8]}")
        print(f"sweep: er average accuracy {accuracy:.3f} over 2 seeds ({out})")

        train, test = load_builtin("digits")
        chunk = make_scenario("class-incremental", train, test, updates=3, seed=0).train[0]
        result = tune(
            chunk,
            space={"lr": {"loguniform": [0.02, 0.2]}},
            scheduler="random",
            trials=2,
            max_epochs=2,
            ray_address=ray_address,
            trials_dir=storage,
            method="er",
            memory_size=100,
            hidden=(32,),
            progress=False,
        )
        for trial in result.trials:
            print(
                f"trial {trial.trial}: lr={trial.config['lr']:.4f}, accuracy {trial.metric:.3f} "
                f"on node {(trial.node or '?')[:8]}"
            )
        print(f"tune: best lr={result.best.config['lr']:.4f}; trials kept in {storage}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    given = arguments[0] if arguments else None
    main(given, arguments[1] if len(arguments) > 1 else tempfile.mkdtemp(prefix="ricordo-tune-"))
