"""The Updater API: growth, rollback on every bad input, overrides, backends, fsspec URLs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo import UpdateConfig, Updater
from ricordo.data import ArrayDataset, Scenario
from ricordo.errors import ConfigError, DataError, TrainingDivergedError
from ricordo.models import num_outputs

FAST = dict(epochs=2, lr=0.1, memory_size=50, progress=False, hidden=(32,))


def fingerprint(updater: Updater) -> dict[str, torch.Tensor]:
    """Everything an update may change, copied."""
    assert updater.model is not None
    state = {f"model.{k}": v.clone() for k, v in updater.model.state_dict().items()}
    if updater.memory is not None:
        state.update({f"memory.{k}": v.clone() for k, v in updater.memory.get().items()})
    return state


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def trained(digits_scenario: Scenario) -> Updater:
    updater = Updater(method="er", **FAST)
    updater.update(digits_scenario.train[0])
    return updater


def test_output_layer_grows_with_new_classes(digits_scenario: Scenario) -> None:
    updater = Updater(method="finetune", **FAST)
    updater.update(digits_scenario.train[0])
    first = max(digits_scenario.chunk_classes[0]) + 1
    assert num_outputs(updater.model) == first
    updater.update(digits_scenario.train[1])
    seen = digits_scenario.chunk_classes[0] + digits_scenario.chunk_classes[1]
    assert num_outputs(updater.model) == max(seen) + 1
    assert updater.seen_classes == sorted(seen)


def test_accepts_numpy_tensors_and_datasets(digits_scenario: Scenario) -> None:
    chunk = digits_scenario.train[0]
    for data in (
        (chunk.x.numpy(), chunk.y.numpy()),
        {"x": chunk.x, "y": chunk.y},
        torch.utils.data.TensorDataset(chunk.x, chunk.y),
    ):
        updater = Updater(method="finetune", **FAST)
        updater.update(data)
        assert updater.predict(chunk.x).shape == (len(chunk),)


@pytest.mark.parametrize(
    ("make_bad", "error", "message"),
    [
        (lambda c: ArrayDataset(c.x[:0], c.y[:0]), DataError, "empty"),
        (lambda c: ArrayDataset(c.x.flatten(1), c.y), DataError, "feature shape"),
        (lambda c: ArrayDataset(c.x.clone().fill_(float("nan")), c.y), DataError, "NaN"),
        (lambda c: ArrayDataset(c.x, c.y.clone().fill_(5000)), DataError, "max-classes"),
        (lambda c: ArrayDataset(c.x, c.y.clone().fill_(-1)), DataError, "negative label"),
    ],
)
def test_bad_chunks_are_rejected_and_nothing_changes(
    trained: Updater, digits_scenario: Scenario, make_bad, error, message
) -> None:
    before = fingerprint(trained)
    history = list(trained.history)
    with pytest.raises(error, match=message):
        trained.update(make_bad(digits_scenario.train[1]))
    assert same(before, fingerprint(trained))
    assert trained.history == history


def test_diverging_loss_rolls_back_everything(trained: Updater, digits_scenario: Scenario) -> None:
    before = fingerprint(trained)
    config = trained.config
    huge = digits_scenario.train[1]
    with pytest.raises(TrainingDivergedError, match="lower --lr"):
        trained.update(ArrayDataset(huge.x * 1e30, huge.y), lr=1e10)
    assert same(before, fingerprint(trained))
    assert trained.config == config
    assert trained.updates == 1
    trained.update(digits_scenario.train[1])  # still usable afterwards
    assert trained.updates == 2


def test_training_options_can_change_but_lineage_options_cannot(
    trained: Updater, digits_scenario: Scenario
) -> None:
    trained.update(digits_scenario.train[1], epochs=1, lr=0.01)
    assert trained.config.epochs == 1 and trained.history[-1]["config"]["lr"] == 0.01
    with pytest.raises(ConfigError, match="fixed for this lineage"):
        trained.update(digits_scenario.train[2], method="joint")
    with pytest.raises(ConfigError, match="fixed for this lineage"):
        trained.update(digits_scenario.train[2], hidden=(8,))


def test_history_records_data_fingerprint_and_training(trained: Updater) -> None:
    record = trained.history[0]
    assert record["update"] == 0 and record["data"]["samples"] > 0
    assert len(record["data"]["fingerprint"]) == 64
    assert record["train"]["steps"] > 0 and record["train"]["backend"] == "torch"


def test_same_seed_same_numbers_different_seed_different(digits_scenario: Scenario) -> None:
    def run(seed: int) -> torch.Tensor:
        updater = Updater(method="er", seed=seed, **FAST)
        updater.update(digits_scenario.train[0])
        return updater.predict_logits(digits_scenario.test[0].x)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_round_trip_through_memory_filesystem(trained: Updater, digits_scenario: Scenario) -> None:
    url = "memory://ricordo-test-updater/v0"
    trained.save(url)
    try:
        loaded = Updater.load(url)
        x = digits_scenario.test[0].x
        assert torch.equal(loaded.predict_logits(x), trained.predict_logits(x))
        assert loaded.source_url == url
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/ricordo-test-updater", recursive=True)


def test_saved_state_records_its_parent(trained: Updater, tmp_path: Path, digits_scenario) -> None:
    trained.save(str(tmp_path / "v0"))
    loaded = Updater.load(str(tmp_path / "v0"))
    loaded.update(digits_scenario.train[1])
    manifest = loaded.save(str(tmp_path / "v1"))
    assert manifest["parent"] == str(tmp_path / "v0")
    assert manifest["meta"]["updates"] == 2


def test_validation_split_and_early_stopping(digits_scenario: Scenario) -> None:
    updater = Updater(
        method="finetune", val_fraction=0.2, patience=1, **{**FAST, "epochs": 30, "lr": 0.5}
    )
    updater.update(digits_scenario.train[0])
    train = updater.history[0]["train"]
    assert train["val_accuracy"] and train["epochs"] <= 30
    assert train["best_epoch"] is not None
    assert train["epochs"] < 30, "early stopping never triggered in 30 epochs"


def test_predict_rejects_wrong_shapes_and_nan(trained: Updater) -> None:
    with pytest.raises(DataError, match="feature shape"):
        trained.predict(np.zeros((3, 64), dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        trained.predict(np.full((3, 1, 8, 8), np.nan, dtype=np.float32))
    with pytest.raises(ConfigError, match="not been trained"):
        Updater().predict(np.zeros((1, 1, 8, 8)))
    proba = trained.predict_proba(np.zeros((3, 1, 8, 8), dtype=np.float32))
    assert torch.allclose(proba.sum(1), torch.ones(3))


def test_fabric_backend_matches_the_plain_loop(digits_scenario: Scenario) -> None:
    results = {}
    for backend in ("torch", "fabric"):
        updater = Updater(method="er", backend=backend, accelerator="cpu", **FAST)
        updater.update(digits_scenario.train[0])
        results[backend] = updater.predict_logits(digits_scenario.test[0].x)
        assert updater.history[0]["train"]["backend"] == backend
    torch.testing.assert_close(results["torch"], results["fabric"])


def test_multi_device_is_refused_with_a_clear_message(digits_scenario: Scenario) -> None:
    with pytest.raises(ConfigError, match="--devices 1"):
        Updater(method="finetune", devices=2, **FAST).update(digits_scenario.train[0])


def test_config_object_and_keyword_overrides_combine() -> None:
    updater = Updater(UpdateConfig(method="joint"), epochs=4)
    assert updater.config.method == "joint" and updater.config.epochs == 4


def test_bf16_true_model_evaluates_and_reloads_in_its_dtype(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method="er", precision="bf16-true", accelerator="cpu", **FAST)
    updater.update(digits_scenario.train[0])
    assert next(updater.model.parameters()).dtype == torch.bfloat16
    x = digits_scenario.test[0].x
    logits = updater.predict_logits(x)
    updater.save(str(tmp_path / "v0"))
    reloaded = Updater.load(str(tmp_path / "v0"))
    assert next(reloaded.model.parameters()).dtype == torch.bfloat16
    assert torch.equal(reloaded.predict_logits(x), logits)
    assert reloaded.evaluate(digits_scenario.test[0]) == updater.evaluate(digits_scenario.test[0])
