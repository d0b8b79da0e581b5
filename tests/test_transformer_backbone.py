"""Pretrained transformer backbones: the encoder (CLS feature, prompts, masks, frozen-ness),
loading and fingerprints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers

from ricordo.errors import ConfigError, DataError
from ricordo.models.transformer import (
    TransformerEncoder,
    backbone_fingerprint,
    load_encoder,
    tokenize,
)

SENTENCES = ["the cat sat on the mat", "stocks fell sharply today", "rain is expected tonight"]


@pytest.fixture(scope="module")
def minilm(minilm_path: str) -> TransformerEncoder:
    return load_encoder(minilm_path)


@pytest.fixture(scope="module")
def tiny_vit(tiny_vit_path: str) -> TransformerEncoder:
    return load_encoder(tiny_vit_path)


def test_text_encoder_equals_hf_cls_output(minilm: TransformerEncoder, minilm_path: str) -> None:
    ids = tokenize(SENTENCES, minilm_path, max_length=16)
    assert ids.dtype == torch.int64 and ids.shape == (3, 16)
    reference = transformers.AutoModel.from_pretrained(minilm_path)
    reference.eval()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert minilm.kind == "text" and minilm.hidden_size == 384
    assert torch.equal(minilm(ids), expected[:, 0])


def test_vision_encoder_resizes_normalises_and_equals_hf_cls_output(
    tiny_vit: TransformerEncoder, tiny_vit_path: str
) -> None:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1)
    reference = transformers.ViTModel.from_pretrained(tiny_vit_path)
    reference.eval()
    with torch.no_grad():
        expected = reference(pixel_values=(images - mean) / std).last_hidden_state[:, 0]
    assert tiny_vit.kind == "vision" and tiny_vit.hidden_size == 32
    assert torch.equal(tiny_vit(images), expected)
    # Any size and grey images: resized to 32x32, the grey channel repeated.
    grey = torch.rand(2, 1, 20, 24)
    assert tiny_vit(grey).shape == (2, 32)
    assert torch.equal(tiny_vit(grey), tiny_vit(grey.expand(-1, 3, -1, -1)))


def test_padding_does_not_change_the_cls_feature(
    minilm: TransformerEncoder, minilm_path: str
) -> None:
    short = tokenize(SENTENCES, minilm_path, max_length=16)
    long = tokenize(SENTENCES, minilm_path, max_length=40)
    assert torch.allclose(minilm(short), minilm(long), atol=1e-5)
    prompts = torch.randn(3, 4, 384, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(minilm(short, prompts), minilm(long, prompts), atol=1e-5)


def test_prompts_change_the_output_and_are_attended(
    minilm: TransformerEncoder, tiny_vit: TransformerEncoder, minilm_path: str
) -> None:
    ids = tokenize(SENTENCES, minilm_path, max_length=16)
    prompts = torch.randn(3, 4, 384, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with_prompts = minilm(ids, prompts)
    assert with_prompts.shape == (3, 384)
    assert not torch.allclose(with_prompts, minilm(ids), atol=1e-3)
    # Gradients reach the prompts (prompt tuning) but not the frozen backbone.
    with_prompts.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in minilm.parameters())
    images = torch.rand(2, 3, 32, 32)
    vit_prompts = torch.randn(2, 3, 32)
    assert not torch.allclose(tiny_vit(images, vit_prompts), tiny_vit(images), atol=1e-4)
    with pytest.raises(ConfigError, match=r"prompts must be \(N=3, P, D=384\), got \(3, 4, 32\)"):
        minilm(ids, torch.zeros(3, 4, 32))


def test_frozen_encoder_has_no_trainable_weights_and_stays_in_eval(
    minilm: TransformerEncoder,
) -> None:
    assert not any(p.requires_grad for p in minilm.parameters())
    parent = torch.nn.Sequential(minilm, torch.nn.Linear(384, 2))
    parent.train()
    assert parent[1].training and minilm.training and not minilm.model.training
    assert not any(m.training for m in minilm.model.modules())  # dropout off
    parent.eval()


def test_trainable_encoder_trains(minilm_path: str) -> None:
    encoder = load_encoder(minilm_path, trainable=True)
    assert all(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert encoder.model.training


def test_wrong_inputs_are_one_line_errors(
    minilm: TransformerEncoder, tiny_vit: TransformerEncoder
) -> None:
    with pytest.raises(DataError, match=r"text backbone takes token ids \(N, L\) of an integer"):
        minilm(torch.rand(2, 8))
    with pytest.raises(DataError, match=r"vision backbone takes float images \(N, C, H, W\)"):
        tiny_vit(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(DataError, match="takes 3-channel images, got 2 channels"):
        tiny_vit(torch.rand(2, 2, 32, 32))


def test_missing_backbone_is_one_line(tmp_path: Path) -> None:
    # Not a folder and (offline here) not on the hub: one line naming both ways out.
    with pytest.raises(ConfigError, match="is not a local folder and could not be fetched"):
        load_encoder("ricordo-tests/no-such-model")
    with pytest.raises(ConfigError, match=r"backbone '\./missing' is not a folder"):
        load_encoder("./missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no \\*.safetensors weights"):
        load_encoder(str(tmp_path))


def test_vision_backbone_without_processor_config_is_refused(
    tiny_vit_path: str, tmp_path: Path
) -> None:
    folder = tmp_path / "vit"
    shutil.copytree(tiny_vit_path, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="has no preprocessor_config.json"):
        load_encoder(str(folder))


def test_fingerprint_covers_weights_and_config(tiny_vit_path: str, tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    shutil.copytree(tiny_vit_path, folder)
    original = backbone_fingerprint(str(folder))
    assert original == backbone_fingerprint(tiny_vit_path)  # content, not location
    assert len(original) == 64
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed = backbone_fingerprint(str(folder))
    assert changed != original
    config = folder / "config.json"
    config.write_text(config.read_text().replace("32", "33", 1))
    assert backbone_fingerprint(str(folder)) not in (original, changed)


def test_tokenize_pads_every_text_to_max_length(minilm_path: str) -> None:
    ids = tokenize(["a", "a much longer sentence than the first one is"], minilm_path, 8)
    assert ids.shape == (2, 8) and ids.dtype == torch.int64
    assert ids[0, 0] == 101 and (ids[0, 3:] == 0).all()  # [CLS] a [SEP] then padding
    assert ids[1, -1] == 102  # truncated, still ends with [SEP]
    with pytest.raises(DataError, match="not one string"):
        tokenize("a", minilm_path)
