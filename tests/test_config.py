"""UpdateConfig validation: every bad value names the option and what is expected."""

import pytest

from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lr", 0.0, "--lr 0.0 is invalid"),
        ("optimizer", "rmsprop", "--optimizer 'rmsprop' is invalid"),
        ("batch_size", 0, "--batch-size 0"),
        ("epochs", 0, "--epochs 0"),
        ("val_fraction", 1.0, "--val-fraction"),
        ("memory_size", -1, "--memory-size"),
        ("precision", "8-bit", "--precision"),
        ("backend", "jax", "--backend"),
        ("hidden", (0,), "--hidden"),
    ],
)
def test_invalid_values_are_rejected(option: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UpdateConfig(**{option: value})


def test_patience_needs_a_validation_split() -> None:
    with pytest.raises(ConfigError, match="--val-fraction"):
        UpdateConfig(patience=2)
    assert UpdateConfig(patience=2, val_fraction=0.1).patience == 2


def test_round_trip_through_a_dict() -> None:
    config = UpdateConfig(method="joint", hidden=(32,), lr=0.1, params={"a": 1})
    assert UpdateConfig.from_dict(config.to_dict()) == config


def test_unknown_options_are_named() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        UpdateConfig().replace(learning_rate=0.1)
    with pytest.raises(ConfigError, match="colour"):
        UpdateConfig.from_dict({"colour": "red"})
