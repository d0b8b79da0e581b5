"""The built-in ``resnet18``: Mammoth's reduced ResNet-18 for small images."""

from pathlib import Path

import pytest
import torch
from torch import nn

from ricordo import Updater
from ricordo.errors import ConfigError
from ricordo.models import build_model, features_and_logits, grow_output_layer, make_spec
from ricordo.models.builtin import parameter_count
from ricordo.models.head import output_layer


def resnet(input_shape=(3, 32, 32), num_classes=10, **options) -> nn.Module:
    spec = make_spec(
        model="resnet18",
        input_shape=input_shape,
        num_classes=num_classes,
        hidden=(256, 128),
        config=None,
        options=options,
    )
    return build_model(spec, 0)


def test_parameter_count_equals_mammoths_resnet18_for_ten_classes() -> None:
    # Mammoth's resnet18(10, nf=64): stem 1,728 + BN 128; stages 147,968 / 525,568 / 2,099,712 /
    # 8,393,728 (BasicBlocks with BN, 1x1 conv + BN shortcuts at the stride-2 stages); head
    # 512*10 + 10 = 5,130. Total 11,173,962.
    model = resnet()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert parameter_count("resnet18", (3, 32, 32), 10, (), {}) == 11_173_962
    # The computed count follows the width and the class count as the built model does.
    small = resnet(num_classes=7, width=8)
    assert parameter_count("resnet18", (3, 32, 32), 7, (), {"width": 8}) == sum(
        p.numel() for p in small.parameters()
    )


def test_forward_shapes_features_and_a_growable_linear_head() -> None:
    model = resnet(width=8).eval()
    x = torch.randn(4, 3, 32, 32)
    features, logits = features_and_logits(model, x)
    assert logits.shape == (4, 10)
    assert features.shape == (4, 64)  # 8 * width after global average pooling
    name, head = output_layer(model)
    assert name == "classifier" and head.in_features == 64
    assert grow_output_layer(model, 12, torch.Generator().manual_seed(0))
    assert model(x).shape == (4, 12)
    # No max-pool in the stem: 64x64 inputs (Tiny ImageNet) pool to the same feature width.
    assert resnet(input_shape=(3, 64, 64), width=8)(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_width_and_normalize_options_and_flat_inputs_are_checked() -> None:
    model = resnet(width=4, normalize="cifar10")
    assert "inputs.0.mean" in dict(model.named_buffers())
    with pytest.raises(ConfigError, match=r"resnet18 width=0 must be a positive integer"):
        resnet(width=0)
    with pytest.raises(ConfigError, match=r"no option\(s\) \['depth'\].*width"):
        resnet(depth=34)
    with pytest.raises(ConfigError, match=r"'resnet18' needs images shaped .*--model mlp"):
        resnet(input_shape=(64,))


def test_tiny_resnet_learns_a_small_synthetic_task_above_chance() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # class = sign of the red channel's mean
    model = resnet(input_shape=(3, 8, 8), num_classes=2, width=4)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8


def test_save_and_load_round_trip_is_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 4
    updater = Updater(
        model="resnet18",
        model_options={"width": 4},
        method="er",
        memory_size=8,
        epochs=1,
        batch_size=16,
    )
    updater.update((x, y))
    updater.save(str(tmp_path / "v0"))
    loaded = Updater.load(str(tmp_path / "v0"))
    before = updater.model.state_dict()
    after = loaded.model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key].cpu(), after[key].cpu()), key
    assert torch.equal(updater.predict(x), loaded.predict(x))


@pytest.mark.parametrize("method", ["icarl", "pod-er"])
def test_feature_methods_train_resnet18_while_its_head_grows(method: str) -> None:
    # iCaRL reads the pooled features (the classifier's input), POD the stages' outputs.
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 2
    updater = Updater(
        model="resnet18",
        model_options={"width": 4},
        method=method,
        memory_size=8,
        epochs=1,
        batch_size=16,
        progress=False,
    )
    updater.update((x[:20], y[:20]))
    updater.update((x[20:], y[20:] + 2))  # two new classes: the head grows from 2 to 4
    assert output_layer(updater.model)[1].out_features == 4
    assert set(updater.predict(x).tolist()) <= {0, 1, 2, 3}


def test_an_absurd_width_is_refused_before_anything_is_allocated() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^model 'resnet18' with width=100000 on inputs \(3, 32, 32\) would have "
        r"27,240,025,700,010 parameters, over the limit",
    ):
        resnet(width=100_000)
