"""Built-in models, model specs (rebuild from JSON), user config files and head growth."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ricordo.errors import ConfigError
from ricordo.models import (
    build_model,
    grow_output_layer,
    make_spec,
    num_outputs,
    output_layer,
    resolve_code,
)


def spec(**overrides: object) -> dict:
    options = dict(
        model="mlp", input_shape=(1, 8, 8), num_classes=3, hidden=(16,), config=None, options={}
    )
    options.update(overrides)
    return make_spec(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_builtin_models_map_inputs_to_class_logits(name: str) -> None:
    model = build_model(spec(model=name), generator_seed=0)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 3)


def test_same_seed_builds_the_same_weights_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(spec(), generator_seed=7)
    after = torch.rand(1)
    b = build_model(spec(), generator_seed=7)
    assert before == after
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet'.*mlp"):
        spec(model="resnet")


def test_cnn_rejects_flat_features() -> None:
    with pytest.raises(ConfigError, match="--model mlp"):
        build_model(spec(model="cnn", input_shape=(64,)), generator_seed=0)


def test_growing_the_head_keeps_old_rows() -> None:
    model = build_model(spec(), generator_seed=0)
    _, old = output_layer(model)
    weight, bias = old.weight.detach().clone(), old.bias.detach().clone()
    assert grow_output_layer(model, 5, torch.Generator().manual_seed(0))
    _, new = output_layer(model)
    assert num_outputs(model) == 5
    assert torch.equal(new.weight[:3], weight) and torch.equal(new.bias[:3], bias)
    assert not grow_output_layer(model, 4, torch.Generator())


def test_bare_linear_cannot_grow() -> None:
    with pytest.raises(ConfigError, match="wrap it"):
        grow_output_layer(nn.Linear(3, 2), 4, torch.Generator())


def test_model_without_linear_is_rejected() -> None:
    with pytest.raises(ConfigError, match="no nn.Linear"):
        output_layer(nn.Sequential(nn.ReLU()))


CONFIG = """
from torch import nn

def model_fn(input_shape, num_classes, width: int = 8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 2))
"""


def test_config_file_model_is_rebuilt_from_its_spec(tmp_path: Path) -> None:
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG)
    code = resolve_code(str(path))
    described = spec(config=code, options={"width": 4}, num_classes=3)
    # A portable reference: the file's name and hash, never this machine's path.
    assert described["kind"] == "code" and described["source"] == "cfg.py"
    assert described["sha256"] == hashlib.sha256(CONFIG.encode()).hexdigest()
    assert str(tmp_path) not in json.dumps(described)
    model = build_model(described, generator_seed=0, code=code)
    assert num_outputs(model) == 3  # grown from the 2 outputs model_fn built
    assert output_layer(model)[1].in_features == 4


def test_config_file_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        spec(config=str(tmp_path / "missing.py"))
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    code = resolve_code(str(path))
    with pytest.raises(ConfigError, match="no function model_fn"):
        build_model(spec(config=code), generator_seed=0, code=code)
    good = tmp_path / "cfg.py"
    good.write_text(CONFIG)
    code = resolve_code(str(good))
    with pytest.raises(ConfigError, match="does not accept option"):
        build_model(spec(config=code, options={"depth": 3}), generator_seed=0, code=code)


def test_normalize_option_standardises_inputs_inside_the_model() -> None:
    from ricordo.models.builtin import Normalize

    layer = Normalize("cifar10", channels=3)
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), (x - mean) / std)
    model = build_model(spec(model="cnn", options={"normalize": "0.5,0.25"}), generator_seed=0)
    assert isinstance(model[0], Normalize)
    assert torch.equal(model[0](torch.full((1, 1, 8, 8), 0.75)), torch.ones(1, 1, 8, 8))
    assert "0.mean" in dict(model.named_buffers())  # saved in model.safetensors with the weights


def test_normalize_option_rejects_bad_specs() -> None:
    with pytest.raises(ConfigError, match="not a preset"):
        build_model(spec(options={"normalize": "bright"}), generator_seed=0)


def test_growing_the_head_leaves_the_global_rng_alone() -> None:
    model = build_model(spec(), generator_seed=0)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    grow_output_layer(model, 6, torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(3), expected)
