"""Feature sources of the shift tests on a pretrained backbone: the model's penultimate layer
and the published encoder's CLS feature (a trained encoder read again, LoRA adapters off)."""

from __future__ import annotations

import torch

from ricordo.shift import detect_shift, shift_features
from ricordo.updater import Updater


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(24, 3, 32, 32, generator=generator), torch.arange(24) % 2


def test_encoder_features_of_a_backbone_state(tiny_vit_path: str) -> None:
    """A frozen backbone's CLS feature is the head's input: encoder and model features agree.
    With --train-backbone the model's encoder moves; encoder features stay the published
    encoder's."""
    from ricordo.models.transformer import load_encoder

    images, labels = _images()
    frozen = Updater(method="finetune", backbone=tiny_vit_path, epochs=1, progress=False)
    frozen.update(images, labels)
    encoder = shift_features("encoder", frozen, images)
    assert encoder.shape == (24, 32)
    torch.testing.assert_close(encoder, shift_features("model", frozen, images))
    darker = detect_shift(frozen, images, images * 0.3, features="encoder", permutations=50)
    assert darker.shifted and darker.details["features"] == 32

    trained = Updater(
        method="finetune",
        backbone=tiny_vit_path,
        train_backbone=True,
        epochs=2,
        lr=0.5,
        progress=False,
    )
    trained.update(images, labels)
    published = load_encoder(tiny_vit_path).eval()
    with torch.no_grad():
        expected = published(images)
    torch.testing.assert_close(shift_features("encoder", trained, images), expected)
    assert not torch.allclose(shift_features("model", trained, images), expected)


def test_encoder_features_switch_lora_adapters_off(tiny_vit_path: str) -> None:
    """s-lora's trained adapter, made active, changes the encoder's output; the encoder
    features are the published encoder's all the same, and the adapter is active again after."""
    from ricordo.models.transformer import load_encoder
    from ricordo.peft.lora import activate, active_adapters, adapter_names

    images, labels = _images()
    updater = Updater(method="s-lora", backbone=tiny_vit_path, epochs=2, lr=0.5, progress=False)
    updater.update(images, labels)
    encoder = updater.model.encoder
    (name,) = adapter_names(encoder.model)
    activate(encoder.model, name)
    with torch.no_grad():
        published = load_encoder(tiny_vit_path).eval()(images)
        adapted = encoder(images)
    assert not torch.allclose(adapted, published)  # the adapter does change the features
    torch.testing.assert_close(shift_features("encoder", updater, images), published)
    assert active_adapters(encoder.model) == [name]
