"""run_benchmark: per-update timing and memory, test sizes, and task-IL next to class-IL."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ricordo.bench import run_benchmark
from ricordo.bench.runner import task_il_applies
from ricordo.config import UpdateConfig
from ricordo.data import ArrayDataset, Scenario, load_builtin, make_scenario
from ricordo.engine.evaluate import evaluate_logits
from ricordo.updater import Updater


@pytest.fixture(scope="module")
def task_scenario() -> Scenario:
    train, test = load_builtin("digits")
    return make_scenario("task-incremental", train, test, updates=3, seed=0)


def test_task_il_is_at_least_class_il_and_learns_each_task(
    task_scenario: Scenario, tiny: Callable[..., UpdateConfig]
) -> None:
    results = run_benchmark(task_scenario, tiny("finetune", epochs=4))
    assert results["scenario"]["task_incremental"] is True
    class_il = np.asarray(results["accuracy_matrix"])
    task_il = np.asarray(results["task_il"]["accuracy_matrix"])
    assert task_il.shape == class_il.shape == (3, 3)
    # Masking to the true chunk's classes can only turn errors into hits, never the reverse.
    assert (task_il >= class_il - 1e-12).all()
    assert np.diag(task_il).min() >= 0.75, task_il
    # Finetune forgets old classes entirely in class-IL, much less when the task id is known.
    old = np.tril_indices(3, -1)
    assert class_il[old].max() <= 0.05, class_il
    assert task_il[old].mean() >= class_il[old].mean() + 0.2, task_il
    metrics = results["task_il"]["metrics"]
    assert metrics["average_accuracy"] == pytest.approx(task_il[-1].mean())
    assert metrics["average_accuracy"] >= results["metrics"]["average_accuracy"]
    initial = results["task_il"]["initial_accuracy"]
    assert metrics["forward_transfer"] == pytest.approx(
        np.mean([task_il[j - 1, j] - initial[j] for j in (1, 2)])
    )


def test_results_record_test_sizes_and_per_update_costs(
    task_scenario: Scenario, tiny: Callable[..., UpdateConfig]
) -> None:
    results = run_benchmark(task_scenario, tiny("er", memory_size=60))
    sizes = [len(t) for t in task_scenario.test]
    assert results["test_sizes"] == sizes
    final = np.asarray(results["accuracy_matrix"])[-1]
    assert results["metrics"]["micro_average_accuracy"] == pytest.approx(
        float((final * sizes).sum() / sum(sizes))
    )
    per_update = results["per_update"]
    assert [u["update"] for u in per_update] == [0, 1, 2]
    keys = {"train_seconds", "eval_seconds", "train_steps", "peak_rss_mb", "peak_cuda_mb"}
    assert all(keys <= set(u) for u in per_update)
    timing = results["timing"]
    assert sum(u["train_steps"] for u in per_update) == timing["train_steps"] > 0
    assert sum(u["train_seconds"] for u in per_update) == pytest.approx(
        timing["train_seconds"], abs=1e-3
    )
    assert sum(u["eval_seconds"] for u in per_update) <= timing["eval_seconds"] + 1e-3
    rss = [u["peak_rss_mb"] for u in per_update]
    assert rss[0] > 10 and rss == sorted(rss)  # ru_maxrss only grows within a process
    if not torch.cuda.is_available():
        assert all(u["peak_cuda_mb"] is None for u in per_update)
    # Model weights plus a memory that fills up: the state grows over the updates.
    state = [u["state_mb"] for u in per_update]
    assert 0 < state[0] <= state[-1]


def test_task_il_is_left_out_when_chunks_share_classes(tiny: Callable[..., UpdateConfig]) -> None:
    train, test = load_builtin("digits")
    iid = make_scenario("iid", train, test, updates=2, seed=0)
    assert not task_il_applies(iid)
    results = run_benchmark(iid, tiny("finetune", epochs=1))
    assert results["task_il"] is None
    assert results["scenario"]["task_incremental"] is False
    # Class-incremental chunks have disjoint classes: both views come from the same run.
    split = make_scenario("class-incremental", train, test, updates=2, seed=0)
    assert task_il_applies(split) and not split.task_incremental


def test_task_il_row_matches_updater_evaluate_with_classes(task_scenario: Scenario) -> None:
    updater = Updater(UpdateConfig(method="finetune", hidden=(16,), epochs=1, progress=False))
    updater.update(task_scenario.train[0])
    updater.update(task_scenario.train[1])
    test, classes = task_scenario.test[0], task_scenario.chunk_classes[0]
    masked = updater.evaluate(test, classes=classes)
    plain = updater.evaluate(test)
    logits = updater.predict_logits(test.x)
    keep = torch.full_like(logits, float("-inf"))
    keep[:, classes] = 0
    expected = float(((logits + keep).argmax(1) == test.y).float().mean())
    assert masked["accuracy"] == pytest.approx(expected)
    assert masked["accuracy"] >= plain["accuracy"]
    assert masked["samples"] == len(test)


def test_evaluate_logits_masks_other_classes() -> None:
    model = torch.nn.Identity()
    x = torch.tensor([[0.0, 5.0, 1.0, 2.0]] * 4)
    data = ArrayDataset(x, torch.tensor([2, 3, 1, 0]))
    device = torch.device("cpu")
    plain = evaluate_logits(lambda v: v, data, 2, device, model)
    assert plain["accuracy"] == pytest.approx(1 / 4)  # argmax 1 everywhere
    masked = evaluate_logits(lambda v: v, data, 2, device, model, classes=[2, 3])
    assert masked["accuracy"] == pytest.approx(1 / 4)  # argmax 3 among {2, 3}: only label 3
    # Labels outside the allowed classes are errors and stay out of the loss (finite).
    assert np.isfinite(masked["loss"])
    only2 = evaluate_logits(lambda v: v, data, 3, device, model, classes=[2, 99])
    assert only2["accuracy"] == pytest.approx(1 / 4)
    nothing = evaluate_logits(lambda v: v, data, 3, device, model, classes=[7])
    assert nothing["accuracy"] == 0.0
