"""Guards around training (issue 8): options are validated, a diverging loss stops the update,
absurd models are refused before allocation, evaluation counts agree, DER's state stays small."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ricordo import UpdateConfig, Updater
from ricordo.data import ArrayDataset, Scenario
from ricordo.engine.loop import DivergenceGuard
from ricordo.errors import ConfigError, TrainingDivergedError
from ricordo.models import build_model, make_spec, num_outputs
from ricordo.models.builtin import MAX_PARAMETERS, parameter_count

FAST = {"hidden": (16,), "progress": False, "threads": 1}

# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lr", math.inf, "--lr inf is invalid; expected a finite learning rate > 0"),
        ("lr", math.nan, "--lr nan is invalid"),
        ("lr", -0.1, "--lr -0.1 is invalid"),
        ("momentum", 5.0, r"--momentum 5.0 is invalid; expected a value in \[0, 1\)"),
        ("momentum", 1.0, "--momentum 1.0 is invalid"),
        ("momentum", math.nan, "--momentum nan is invalid"),
        ("momentum", -0.5, "--momentum -0.5 is invalid"),
        ("weight_decay", math.inf, "--weight-decay inf is invalid; expected a finite value"),
        ("val_fraction", math.nan, "--val-fraction nan is invalid"),
        ("seed", 2**70, r"--seed 1180591620717411303424 is invalid; expected an integer in \[0"),
        ("seed", -1, "--seed -1 is invalid"),
        ("seed", 1.5, "--seed 1.5 is invalid"),
        ("epochs", 2.5, "--epochs 2.5 is invalid; expected an integer >= 1"),
        ("batch_size", True, "--batch-size True is invalid"),
        ("memory_size", "big", "--memory-size 'big' is invalid"),
        ("max_classes", 0, "--max-classes 0 is invalid"),
        ("threads", 100_000, r"--threads 100000 is invalid; expected an integer in \[1, 1024\]"),
        ("patience", 0.5, "--patience 0.5 is invalid"),
        ("hidden", (1.5,), "--hidden"),
        ("lr", "0.1", "--lr '0.1' is invalid"),
    ],
)
def test_numeric_options_are_checked_for_type_finiteness_and_range(
    option: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        UpdateConfig(**{option: value})


def test_edge_values_that_are_valid_stay_accepted() -> None:
    config = UpdateConfig(seed=2**63 - 1, momentum=0.99, weight_decay=0, lr=1, threads=1024)
    assert config.seed == 2**63 - 1
    assert UpdateConfig.from_dict(config.to_dict()) == config


# --------------------------------------------------------------------------- divergence


def test_a_diverging_loss_stops_the_update_without_nan(digits_scenario: Scenario) -> None:
    """SGD at lr 1000: the loss climbs from 2.2 to 1.5e8 within three steps, then stays finite
    (before the guard, the update finished and a broken state was saved)."""
    updater = Updater(method="er", memory_size=20, epochs=5, lr=1000.0, **FAST)
    with pytest.raises(TrainingDivergedError) as caught:
        updater.update(digits_scenario.train[0])
    message = str(caught.value)
    assert "\n" not in message
    assert "the loss diverged to" in message and "at update 0, epoch 0, step " in message
    assert "lower --lr (now 1000.0)" in message and "no state was written" in message
    assert updater.model is None and updater.updates == 0  # rolled back to before the update
    assert updater.memory is not None and len(updater.memory) == 0


def test_the_divergence_rule_needs_both_the_floor_and_the_factor() -> None:
    guard = DivergenceGuard(0, 0.05)
    for loss in (2.0, 3.0, 50.0, 9_000.0):  # 4500x the first loss, but under the 1e4 floor
        guard.check(loss, 0, 0)
    small = DivergenceGuard(0, 0.05)
    for loss in (20.0, 15_000.0):  # over the floor, but only 750x the first loss
        small.check(loss, 0, 0)
    with pytest.raises(TrainingDivergedError, match="diverged to 2.5e\\+04 .* lowest in the"):
        small.check(25_000.0, 1, 7)
    with pytest.raises(TrainingDivergedError, match="the loss became nan"):
        DivergenceGuard(0, 0.05).check(math.nan, 0, 0)


def test_normal_training_is_never_stopped(digits_scenario: Scenario) -> None:
    """Several methods and optimisers, including loss terms beyond cross-entropy."""
    for options in (
        {"method": "er", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9},
        {"method": "der++", "optimizer": "adam", "lr": 0.01},
        # Mammoth's lr for its λ 90 (the default); at lr 0.05 these 3-epoch updates truly diverge.
        {"method": "ewc", "lr": 0.03},
        {"method": "lwf"},
    ):
        updater = Updater(memory_size=50, epochs=3, **options, **FAST)
        for k in range(3):
            updater.update(digits_scenario.train[k])
        assert updater.updates == 3


# ---------------------------------------------------------------------------- models


def _spec(hidden: tuple[int, ...], model: str = "mlp", options: dict | None = None) -> dict:
    shape = (1, 8, 8)
    return make_spec(
        model=model,
        input_shape=shape,
        num_classes=10,
        hidden=hidden,
        config=None,
        options=options or {},
    )


def test_parameter_count_matches_the_built_model() -> None:
    for name, hidden in (("mlp", (32, 16)), ("mlp", ()), ("cnn", (4, 8))):
        model = build_model(_spec(hidden, name), generator_seed=0)
        expected = sum(p.numel() for p in model.parameters())
        assert parameter_count(name, (1, 8, 8), 10, hidden) == expected


def test_an_absurd_model_size_is_refused_before_allocating() -> None:
    with pytest.raises(ConfigError, match=r"would have 75,000,000,010 parameters, over the limit"):
        build_model(_spec((1_000_000_000,)), generator_seed=0)
    with pytest.raises(ConfigError, match="model 'cnn' .* parameters, over the limit"):
        build_model(_spec((1_000_000, 1_000_000), "cnn"), generator_seed=0)
    assert MAX_PARAMETERS == 2**31


def test_an_unknown_model_option_lists_the_accepted_ones(digits_scenario: Scenario) -> None:
    with pytest.raises(ConfigError, match=r"model 'mlp' has no option\(s\) \['foo'\]; its "):
        build_model(_spec((16,), options={"foo": 1}), generator_seed=0)
    updater = Updater(model="cnn", model_options={"bar": 2}, **FAST)
    with pytest.raises(ConfigError, match=r"model 'cnn' has no option\(s\) \['bar'\].*normalize"):
        updater.update(digits_scenario.train[0])
    assert updater.model is None


# ------------------------------------------------------------------------ evaluation


def test_evaluate_counts_rows_of_unseen_classes_apart(digits_scenario: Scenario) -> None:
    updater = Updater(method="er", memory_size=50, epochs=3, **FAST)
    updater.update(digits_scenario.train[0])
    test = digits_scenario.test_all()
    seen = torch.isin(test.y, torch.tensor(updater.seen_classes))
    result = updater.evaluate(test)
    assert result["samples"] == len(test)
    assert result["unseen_label_rows"] == int((~seen).sum()) > 0
    assert result["loss_samples"] == int(seen.sum())
    assert result["samples"] == result["loss_samples"] + result["unseen_label_rows"]
    # The loss is the mean over the seen rows only; the unseen rows count as wrong.
    on_seen = updater.evaluate(ArrayDataset(test.x[seen], test.y[seen]))
    assert result["loss"] == pytest.approx(on_seen["loss"], rel=1e-5)
    correct = on_seen["accuracy"] * on_seen["samples"]
    assert result["accuracy"] == pytest.approx(correct / len(test))


def test_evaluate_never_credits_an_untrained_output(digits_scenario: Scenario) -> None:
    """Classes below the largest seen one have outputs the model never trained; a row of such
    a class counts as unseen (wrong, out of the loss) even if its column wins the argmax."""
    updater = Updater(method="finetune", epochs=1, **FAST)
    chunk = digits_scenario.train[0]
    updater.update(chunk)
    assert updater.model is not None
    top = max(updater.seen_classes)
    untrained = next(c for c in range(top) if c not in updater.seen_classes)
    with torch.no_grad():  # make the untrained column win everywhere
        updater.model[-1].bias[untrained] = 1e4
    data = ArrayDataset(chunk.x[:10], torch.full((10,), untrained))
    result = updater.evaluate(data)
    assert updater.predict(data.x).eq(untrained).all()
    assert result["accuracy"] == 0.0 and result["unseen_label_rows"] == 10
    assert result["loss_samples"] == 0 and math.isnan(result["loss"])


# -------------------------------------------------------------------------------- DER


def _state_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_der_stores_logits_only_for_the_heads_columns(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    """--max-classes 100000 used to give every stored row 100000 logits (50 rows: 20 MB)."""
    sizes = {}
    for max_classes in (10, 100_000):
        updater = Updater(method="der", memory_size=50, epochs=1, max_classes=max_classes, **FAST)
        updater.update(digits_scenario.train[0])
        assert updater.memory is not None and updater.model is not None
        assert updater.memory.field_spec("logits")[0] == (num_outputs(updater.model),)
        updater.save(str(tmp_path / f"m{max_classes}"))
        sizes[max_classes] = _state_bytes(tmp_path / f"m{max_classes}")
        updater.update(digits_scenario.train[1])  # the head grows: so does the field
        assert updater.memory.field_spec("logits")[0] == (num_outputs(updater.model),)
    assert sizes[100_000] <= sizes[10] + 1024  # the same up to the config's digits
    assert sizes[100_000] < 200_000
