"""The key-retrieved LoRA pool "l2l" (L2P with LoRA adapters in place of prompts).

Learning runs on MiniLM with generated sentences; the mechanics (frozen backbone weights, the
key loss, round trips, per-sample grouping of a mixed batch) on the tiny random ViT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ricordo import Updater
from ricordo.data import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods.keyed_pool import KeyedPool
from ricordo.methods.lora_experts import adapter_name
from ricordo.methods.routed import find_encoder
from ricordo.models.head import output_layer
from ricordo.peft import lora
from test_method_l2p import (
    _keys_at_begin,
    _mean_selected_similarity,
    text_lineage,
    topics,
    vit_updater,
)
from test_peft_routing import images, reviews

# 10 adapters of rank 8 on query and value (384 x 384) of MiniLM's 6 layers, 10 keys, the head.
POOL = 10 * 6 * 2 * 8 * (384 + 384) + 10 * 384


@pytest.fixture(scope="module")
def lineages(minilm_path: str, topic_texts: Any) -> dict[str, tuple[Updater, list[ArrayDataset]]]:
    """As in test_method_l2p.py: reviews of two domains; topics 0, 1 then 2, 3."""
    names = ["movies", "food"]
    domains = [reviews(minilm_path, t, 24, seed=i) for i, t in enumerate(names)]
    domain_tests = [reviews(minilm_path, t, 40, seed=10 + i) for i, t in enumerate(names)]
    splits = [[0, 1], [2, 3]]
    classes = [topics(minilm_path, topic_texts, c, 24, seed=i) for i, c in enumerate(splits)]
    class_tests = [
        topics(minilm_path, topic_texts, c, 40, seed=10 + i) for i, c in enumerate(splits)
    ]
    return {
        "domain": (text_lineage("l2l", minilm_path, domains), domain_tests),
        "class": (text_lineage("l2l", minilm_path, classes), class_tests),
    }


@pytest.mark.parametrize("stream", ["domain", "class"])
def test_l2l_learns_every_task_with_one_shared_head(stream: str, lineages: Any) -> None:
    updater, tests = lineages[stream]
    results = [updater.evaluate(test, task=task) for task, test in enumerate(tests)]
    chance = 0.5 if stream == "domain" else 0.25
    for result in results:
        assert result["accuracy"] >= chance + 0.2, results
        assert 0.0 <= result["task_id_accuracy"] <= 1.0
    classes = 2 if stream == "domain" else 4
    assert updater.history[-1]["train"]["trainable_parameters"] == POOL + 384 * classes + classes


def test_a_saved_l2l_lineage_restores_bit_for_bit(lineages: Any, tmp_path: Path) -> None:
    updater, tests = lineages["class"]
    updater.save(str(tmp_path / "state"))
    loaded = Updater.load(str(tmp_path / "state"))
    saved, restored = updater.method.state_tensors(), loaded.method.state_tensors()
    assert saved.keys() == restored.keys() and "keys" in saved
    assert sum(k.startswith("lora.9.") for k in saved) == 6 * 2 * 2  # A and B of 12 layers
    for key, value in saved.items():
        assert torch.equal(value, restored[key]), key
    assert loaded.model is not None
    encoder = find_encoder(loaded.model)
    assert lora.adapter_names(encoder.model) == [adapter_name(i) for i in range(10)]
    for i in (0, 9):  # the adapters inside the reloaded backbone are the saved ones
        inside = lora.adapter_state(encoder.model, adapter_name(i))
        assert all(torch.equal(v, saved[f"lora.{i}.{k}"]) for k, v in inside.items())
    mixed = torch.cat([tests[0].x[:5], tests[1].x[:5]])
    logits, tasks = updater.predict_routed(mixed)
    again, tasks_again = loaded.predict_routed(mixed)
    assert tasks is not None and tasks_again is not None and torch.equal(tasks, tasks_again)
    assert torch.equal(logits, again)


def test_an_update_trains_the_adapters_and_keeps_the_backbone_weights(tiny_vit_path: str) -> None:
    updater = vit_updater("l2l", tiny_vit_path, pool_size=4, top_n=2)
    assert updater.model is None
    updater.update(images(0.1, 16, 0))
    encoder = find_encoder(updater.model)
    base = {k: v.clone() for k, v in encoder.state_dict().items() if "lora_" not in k}
    adapters = {k: v.clone() for k, v in updater.method.state_tensors().items()}
    updater.update(images(0.6, 16, 1, offset=2))
    now = find_encoder(updater.model).state_dict()
    assert all(torch.equal(v, now[k]) for k, v in base.items())  # the backbone: bit-identical
    assert not any(p.requires_grad for p in encoder.parameters())  # all frozen between updates
    assert lora.active_adapters(encoder.model) == []
    after = updater.method.state_tensors()
    moved = [
        k for k in adapters if k.startswith("lora.") and not torch.equal(adapters[k], after[k])
    ]
    assert moved and not torch.equal(adapters["keys"], after["keys"])
    assert updater.model is not None and output_layer(updater.model)[1].out_features == 4


def test_per_sample_selection_in_training_updates_every_selected_adapter(
    tiny_vit_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """batchwise never: rows of one batch select different adapters, run as separate groups;
    each group's adapters must still get their gradient (a later group's activation must not
    freeze an earlier group's adapters before backward)."""
    updater = vit_updater("l2l", tiny_vit_path, pool_size=4, top_n=1, batchwise="never")
    chunk = images(0.1, 8, 0)
    mixed = ArrayDataset(torch.cat([chunk.x, images(0.9, 8, 1).x]), torch.cat([chunk.y] * 2))
    original = KeyedPool.begin_update

    def begin(self: Any, data: Any, ctx: Any) -> None:
        # The random tiny ViT's queries are alike: start the keys at four rows' queries (two
        # dark, two bright) so that a batch's rows select different adapters.
        encoder = find_encoder(ctx.model)
        with torch.no_grad():
            self.keys.keys.copy_(self.query_features(encoder, mixed.x[[0, 8, 1, 9]]))
        original(self, data, ctx)

    monkeypatch.setattr(KeyedPool, "begin_update", begin)
    updater.update(mixed)
    method: Any = updater.method
    used = [i for i, n in enumerate(method.history.counts[0].tolist()) if n > 0]
    assert len(used) >= 2  # the batches were mixed
    for i in range(4):
        b = [v for k, v in method.adapters[i].items() if "lora_B" in k]
        assert bool(any(t.abs().sum() > 0 for t in b)) == (i in used), i  # B moved off 0


def test_a_mixed_batch_runs_each_selected_set_once_with_its_adapters_summed(
    tiny_vit_path: str,
) -> None:
    updater = vit_updater("l2l", tiny_vit_path, pool_size=4, top_n=2)
    updater.update(images(0.1, 16, 0))
    assert updater.model is not None
    method: Any = updater.method
    encoder = find_encoder(updater.model)
    dark, bright = images(0.1, 2, 5).x, images(0.7, 2, 6).x
    mixed = torch.stack([dark[0], bright[0], bright[1], dark[1]])
    with torch.no_grad():  # keys 0, 1 = the dark rows' queries, 2, 3 = the bright rows'
        queries = method.query_features(encoder, mixed)
        method.keys.keys.copy_(queries[[0, 3, 1, 2]] + 1e-3 * queries[[3, 0, 2, 1]])
        selected = method.keys.select(queries, 2).tolist()
    assert selected == [[0, 1], [2, 3], [2, 3], [0, 1]]
    calls: list[int] = []
    hook = encoder.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    try:
        logits, _ = updater.predict_routed(mixed)
    finally:
        hook.remove()
    assert calls == [4, 2, 2]  # the query pass, then one pass per selected set
    alone = torch.cat([updater.predict_routed(row.unsqueeze(0))[0] for row in mixed])
    torch.testing.assert_close(logits, alone, rtol=0, atol=1e-5)
    head = output_layer(updater.model)[1]
    with torch.no_grad(), lora.using_adapter(encoder.model, [adapter_name(2), adapter_name(3)]):
        summed = head(encoder(mixed[1:3]))
    torch.testing.assert_close(logits[1:3], summed, rtol=0, atol=1e-5)
    assert lora.active_adapters(encoder.model) == []  # prediction leaves none active


def test_the_l2l_key_loss_pulls_selected_keys_towards_the_queries(
    tiny_vit_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = _keys_at_begin(monkeypatch)
    chunk = images(0.3, 16, 0)
    plain = vit_updater("l2l", tiny_vit_path, key_loss_weight=0.0)
    plain.update(chunk)
    pulled = vit_updater("l2l", tiny_vit_path)
    pulled.update(chunk)
    assert torch.equal(snapshots[0], snapshots[1])
    assert torch.equal(plain.method.state_tensors()["keys"], snapshots[0])
    similarity = _mean_selected_similarity(pulled, chunk.x)
    assert similarity > _mean_selected_similarity(plain, chunk.x) + 0.05


def test_a_reloaded_l2l_lineage_continues_like_an_uninterrupted_one(
    tiny_vit_path: str, tmp_path: Path
) -> None:
    chunks = [images(0.1, 16, 0), images(0.6, 16, 1, offset=2)]
    straight = vit_updater("l2l", tiny_vit_path, pool_size=4, top_n=2)
    for chunk in chunks:
        straight.update(chunk)
    first = vit_updater("l2l", tiny_vit_path, pool_size=4, top_n=2)
    first.update(chunks[0])
    first.save(str(tmp_path / "v0"))
    resumed = Updater.load(str(tmp_path / "v0"))
    resumed.update(chunks[1])
    probe = torch.cat([images(0.1, 4, 7).x, images(0.6, 4, 8).x])
    assert torch.equal(straight.predict_logits(probe), resumed.predict_logits(probe))
    for key, value in straight.method.state_tensors().items():
        assert torch.equal(value, resumed.method.state_tensors()[key]), key


def test_the_lora_pool_shape_is_fixed_for_a_lineage(tiny_vit_path: str) -> None:
    updater = vit_updater("l2l", tiny_vit_path, pool_size=4, top_n=2)
    updater.update(images(0.1, 16, 0))
    with pytest.raises(ConfigError, match=r"^rank differ from this lineage's pool \("):
        updater.update(images(0.6, 16, 1), params={"rank": 4})
    assert updater.updates == 1
