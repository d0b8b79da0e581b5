"""Pretrained transformer backbones: the encoder (CLS feature, prompts, masks, frozen-ness),
loading and fingerprints."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from ricordo.errors import ConfigError, DataError, StateError
from ricordo.models import features_and_logits, output_layer
from ricordo.models.backbone import BackboneClassifier, load_saved_weights, saved_weights
from ricordo.models.transformer import (
    TransformerEncoder,
    backbone_fingerprint,
    load_encoder,
    tokenize,
)
from ricordo.updater import Updater

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


# --------------------------------------------------------------------- --backbone for every method


def _text_updater(minilm_path: str, method: str = "er", **options: object) -> Updater:
    settings: dict[str, object] = dict(
        method=method,
        backbone=minilm_path,
        max_length=16,
        epochs=3,
        lr=0.1,
        batch_size=16,
        memory_size=40,
        progress=False,
        threads=1,
    )
    settings.update(options)
    return Updater(**settings)


def test_er_update_trains_the_head_only(minilm_path: str, topic_texts) -> None:
    updater = _text_updater(minilm_path)
    texts, labels = topic_texts([0, 1], 32, 0)
    updater.initialize(texts, labels)
    model = updater.model
    assert isinstance(model, BackboneClassifier)
    backbone = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    updater.update(texts, labels)
    after = updater.model.encoder.state_dict()
    assert all(torch.equal(backbone[k], after[k]) for k in backbone)  # bit-identical
    assert not torch.equal(head["weight"], updater.model.head.weight)
    # The CLS feature is what feature methods (iCaRL, herding) see.
    ids = tokenize(list(texts[:4]), minilm_path, 16)
    features, logits = features_and_logits(updater.model, ids)
    assert torch.equal(features, updater.model.encoder(ids))
    assert logits.shape == (4, 2)


def test_text_memory_keeps_int64_token_ids(minilm_path: str, topic_texts) -> None:
    updater = _text_updater(minilm_path, epochs=1)
    updater.update(*topic_texts([0, 1], 16, 0))
    shape, dtype = updater.memory.field_spec("x")
    assert shape == (16,) and dtype == torch.int64
    stored = updater.memory.get()["x"]
    assert stored.dtype == torch.int64 and int(stored[:, 0].unique()) == 101  # [CLS]


def test_finetune_on_minilm_learns_a_text_task(minilm_path: str, topic_texts) -> None:
    updater = _text_updater(minilm_path, method="finetune")
    updater.update(*topic_texts([0, 1, 2, 3], 48, 0))
    result = updater.evaluate(*topic_texts([0, 1, 2, 3], 40, 1))
    assert result["accuracy"] > 0.6  # chance: 0.25


def test_state_round_trip_leaves_out_the_backbone(
    minilm_path: str, topic_texts, tmp_path: Path
) -> None:
    updater = _text_updater(minilm_path, epochs=1)
    updater.update(*topic_texts([0, 1], 16, 0))
    texts, _ = topic_texts([0, 1], 8, 5)
    updater.save(str(tmp_path / "s0"))
    weights = tmp_path / "s0" / "model.safetensors"
    assert weights.stat().st_size < 1_000_000  # MiniLM itself is 90 MB
    assert sorted(load_file(str(weights))) == ["head.bias", "head.weight"]
    spec = json.loads((tmp_path / "s0" / "manifest.json").read_text())["meta"]["model_spec"]
    assert spec["backbone"] == minilm_path
    assert spec["backbone_fingerprint"] == backbone_fingerprint(minilm_path)
    loaded = Updater.load(str(tmp_path / "s0"))
    assert torch.equal(loaded.predict_logits(texts), updater.predict_logits(texts))
    # The lineage goes on identically from the reloaded state.
    chunk = topic_texts([2, 3], 16, 2)
    updater.update(*chunk)
    loaded.update(*chunk)
    assert torch.equal(loaded.predict_logits(texts), updater.predict_logits(texts))


def test_a_different_backbone_is_refused_unless_accepted(
    minilm_path: str, topic_texts, tmp_path: Path
) -> None:
    updater = _text_updater(minilm_path, epochs=1)
    updater.update(*topic_texts([0, 1], 16, 0))
    updater.save(str(tmp_path / "s0"))
    # Same weights (linked), another config.json: another fingerprint.
    other = tmp_path / "other"
    other.mkdir()
    for item in Path(minilm_path).iterdir():
        if item.name != "config.json":
            (other / item.name).symlink_to(item)
    config = json.loads((Path(minilm_path) / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "note": "changed"}))
    with pytest.raises(StateError, match=r"has sha256 [0-9a-f]{12} but the state at .* was "):
        Updater.load(str(tmp_path / "s0"), backbone=str(other))
    accepted = Updater.load(str(tmp_path / "s0"), backbone=str(other), accept_model_change=True)
    assert accepted.config.backbone == str(other)
    assert accepted.model_spec["backbone_fingerprint"] == backbone_fingerprint(str(other))
    texts, _ = topic_texts([0, 1], 8, 5)
    assert torch.equal(accepted.predict_logits(texts), updater.predict_logits(texts))


def test_a_missing_recorded_backbone_names_the_fix(
    minilm_path: str, topic_texts, tmp_path: Path
) -> None:
    folder = tmp_path / "minilm"
    folder.mkdir()
    for item in Path(minilm_path).iterdir():
        (folder / item.name).symlink_to(item)
    updater = _text_updater(str(folder), epochs=1)
    updater.update(*topic_texts([0, 1], 16, 0))
    updater.save(str(tmp_path / "s0"))
    shutil.rmtree(folder)
    with pytest.raises(ConfigError, match=r"needs its backbone .* pass where it is: .*--backbone"):
        Updater.load(str(tmp_path / "s0"))
    moved = Updater.load(str(tmp_path / "s0"), backbone=minilm_path)  # same files elsewhere
    assert moved.config.backbone == minilm_path


def test_text_needs_a_backbone_and_takes_no_augmentation(
    minilm_path: str, topic_texts, tmp_path: Path
) -> None:
    texts, labels = topic_texts([0, 1], 8, 0)
    np.savez(tmp_path / "chunk.npz", text=texts, y=labels)
    with pytest.raises(DataError, match=r"is text .* pass --backbone NAME_OR_PATH"):
        Updater(progress=False).update(str(tmp_path / "chunk.npz"))
    with pytest.raises(ConfigError, match=r"--augment 'flip' .* int64 token ids \(text\)"):
        _text_updater(minilm_path, augment="flip").update(texts, labels)
    with pytest.raises(ConfigError, match="--backbone and --config"):
        Updater(backbone=minilm_path, config="my_models:make_model")


def test_a_vision_backbone_learns_under_its_head(tiny_vit_path: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    # Class 0 dark, class 1 bright images, at 16x16: resized to the ViT's 32x32.
    images = torch.rand(40, 3, 16, 16, generator=generator) * 0.5 + labels.view(-1, 1, 1, 1) * 0.5
    updater = Updater(
        method="er", backbone=tiny_vit_path, epochs=5, lr=0.1, progress=False, threads=1
    )
    updater.update(images, labels)
    assert updater.evaluate(images, labels)["accuracy"] > 0.9
    updater.save(str(tmp_path / "s0"))
    loaded = Updater.load(str(tmp_path / "s0"))
    assert torch.equal(loaded.predict_logits(images), updater.predict_logits(images))
    assert loaded.model_spec["input_shape"] == [3, 16, 16]


def test_text_backbone_example_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "text_backbone.py"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    accuracy = float(out.split("accuracy on all four topics:")[1].split()[0])
    assert accuracy > 0.6  # chance: 0.25
    assert (tmp_path / "text-state" / "v1" / "model.safetensors").stat().st_size < 1_000_000


def test_saved_weights_skip_adapters_injected_into_the_encoder(tiny_vit_path: str) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    model = BackboneClassifier(load_encoder(tiny_vit_path), 3)
    inject_adapter_in_model(
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), model.encoder.model
    )
    assert any("lora_" in k for k in model.state_dict())
    assert output_layer(model)[0] == "head"  # still the layer that grows
    weights = saved_weights(model, model.state_dict())
    assert sorted(weights) == ["head.bias", "head.weight"]
    fresh = BackboneClassifier(load_encoder(tiny_vit_path), 3)
    load_saved_weights(fresh, weights)
    assert torch.equal(fresh.head.weight, model.head.weight)
    with pytest.raises(RuntimeError, match="missing \\['head.bias'\\]"):
        load_saved_weights(fresh, {"head.weight": weights["head.weight"]})


def test_train_backbone_trains_and_saves_the_encoder(tiny_vit_path: str, tmp_path: Path) -> None:
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 2
    updater = Updater(
        method="finetune",
        backbone=tiny_vit_path,
        train_backbone=True,
        epochs=1,
        progress=False,
        threads=1,
    )
    updater.initialize(images, labels)
    before = {k: v.clone() for k, v in updater.model.encoder.state_dict().items()}
    updater.update(images, labels)
    after = updater.model.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    updater.save(str(tmp_path / "s0"))
    saved = load_file(str(tmp_path / "s0" / "model.safetensors"))
    assert any(k.startswith("encoder.model.") for k in saved)
    loaded = Updater.load(str(tmp_path / "s0"))
    assert torch.equal(loaded.predict_logits(images), updater.predict_logits(images))


# vmap over sdpa on the CPU falls back to a slower loop, with a warning: expected here.
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("method", ["ewc", "icarl", "der++", "a-gem", "lwf"])
def test_methods_run_on_a_text_backbone(method: str, minilm_path: str, topic_texts) -> None:
    # Per-example gradients (EWC's Fisher through torch.func.vmap), class means of CLS features
    # (iCaRL), stored logits (DER++), gradient projection (A-GEM), a frozen copy (LwF).
    updater = _text_updater(
        minilm_path, method=method, max_length=8, epochs=1, batch_size=8, memory_size=8
    )
    for k, classes in enumerate(([0, 1], [2, 3])):
        updater.update(*topic_texts(classes, 8, k))
    assert updater.seen_classes == [0, 1, 2, 3]
    assert updater.predict_logits(topic_texts([0, 1, 2, 3], 4, 9)[0]).shape == (4, 4)


def test_a_hub_name_is_read_from_the_hub_cache_offline(
    minilm_path: str, topic_texts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    from ricordo.models import transformer

    # A snapshot of "ricordo-tests/minilm" in a Hugging Face cache, as a download leaves it.
    repo = tmp_path / "hub" / "models--ricordo-tests--minilm"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for item in Path(minilm_path).iterdir():
        if item.is_file():
            (snapshot / item.name).symlink_to(item)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the network
    transformer._hub_snapshot.cache_clear()
    try:
        updater = _text_updater("ricordo-tests/minilm", epochs=1)
        updater.update(*topic_texts([0, 1], 8, 0))
        assert updater.model.encoder.name_or_path == "ricordo-tests/minilm"
        updater.save(str(tmp_path / "s0"))
        loaded = Updater.load(str(tmp_path / "s0"))
        assert loaded.model_spec["backbone"] == "ricordo-tests/minilm"
        assert loaded.model_spec["backbone_fingerprint"] == backbone_fingerprint(minilm_path)
    finally:
        transformer._hub_snapshot.cache_clear()
