"""One tuning trial: the update of the loaded state with the trial's configuration.

The trial reports the objective (``ricordo.tune.objective``) once per epoch with a mid-update
checkpoint (``ricordo.engine.checkpoint``), so a scheduler that pauses it (PASHA) resumes it
from its last epoch rather than from the start; ``training_iteration`` is then the number of
epochs trained. Checkpoints go to the job's trial storage (``tune.storage``: a folder or any
fsspec URL, shared by every node of a cluster); no state is written by a trial.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from ricordo.data.dataset import ArrayDataset
from ricordo.tune.objective import ValidationSplit, score, split_for_tuning
from ricordo.tune.space import SearchSpace


@dataclass
class TrialJob:
    """What every trial of a tuning job shares (sent once to the Ray workers)."""

    chunk: ArrayDataset
    space: SearchSpace
    max_epochs: int
    state: str | None = None  # the state to update (None: a fresh lineage of ``options``)
    options: dict[str, Any] = field(default_factory=dict)  # fixed UpdateConfig options
    holdout: float = 0.2
    seed: int = 0
    threads: int = 1
    model_code: str | None = None
    backbone: str | None = None
    accept_model_change: bool = False

    def start(self) -> tuple[Any, ValidationSplit]:
        """The Updater a trial starts from (the loaded state, or a fresh one) with the held-out
        memory rows removed, and the job's validation split (the same for every trial)."""
        from ricordo.updater import Updater

        if self.state is None:
            updater = Updater(**self.options)
        else:
            updater = Updater.load(
                self.state,
                model=self.model_code,
                backbone=self.backbone,
                accept_model_change=self.accept_model_change,
            )
        split = split_for_tuning(self.chunk, updater.memory, holdout=self.holdout, seed=self.seed)
        if split.trial_memory is not None:
            updater.method.memory = split.trial_memory
        return updater, split

    def overrides(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The update options of the trial with configuration ``sample``."""
        options = {} if self.state is None else dict(self.options)
        trial = self.space.overrides(sample)
        if "params" in trial and "params" in options:
            trial["params"] = {**options["params"], **trial["params"]}
        options.update(trial)
        options.update(epochs=self.max_epochs, threads=self.threads, progress=False, logger=())
        return options


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """Ray Tune function trainable (bound to ``job`` with ``tune.with_parameters``)."""
    import ray
    from ray import tune

    updater, split = job.start()
    # Which node ran the trial (Ray's own results name only an IP, shared by a machine's nodes).
    # Outside Ray (a test calling the trainable) asking would start a Ray: then None.
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

    def report(end: Any) -> None:
        metrics = score(end.evaluate, split)
        metrics["epochs"] = end.epochs_done
        metrics["node"] = node
        with tempfile.TemporaryDirectory(prefix="ricordo-trial-") as folder:
            end.save(folder)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    checkpoint = tune.get_checkpoint()
    overrides = job.overrides(config)
    if checkpoint is None:
        updater.update(split.train, on_epoch_end=report, **overrides)
        return
    with checkpoint.as_directory() as folder:
        updater.update(split.train, on_epoch_end=report, resume_from=folder, **overrides)
