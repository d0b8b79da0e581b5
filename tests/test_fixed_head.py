"""A known class count (``num_classes``): the output layer has N columns from the start and never
grows, and every method decides old and new classes from the classes it has seen, never from
the head's width (which, with a fixed head, counts future classes too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ricordo import Updater
from ricordo.bench.experiment import Experiment, ScenarioSpec, load_experiment, save_experiment
from ricordo.bench.runner import _accuracy, head_config, run_benchmark, scenario_num_classes
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.data.dataset import ArrayDataset
from ricordo.errors import ConfigError, DataError
from ricordo.methods import Batch, UpdateContext
from ricordo.models.head import num_outputs, output_layer

N = 10
TINY = dict(epochs=1, lr=0.1, memory_size=40, progress=False, hidden=(16,))


def chunk(classes: list[int], rows: int = 40, seed: int = 0) -> ArrayDataset:
    """``rows`` rows of 8 features, labels cycling through ``classes``, separable by class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([classes[i % len(classes)] for i in range(rows)])
    x = torch.randn(rows, 8, generator=g) + F.one_hot(y % 8, 8).float() * 3
    return ArrayDataset(x, y)


def context(updater: Updater, index: int, seen: list[int], chunk_classes: list[int]):  # type: ignore[no-untyped-def]
    assert updater.model is not None
    return UpdateContext(
        model=updater.model,
        config=updater.config,
        update_index=index,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seen_classes=seen,
        chunk_classes=chunk_classes,
    )


# -- the Updater -----------------------------------------------------------------------------


def test_known_class_count_sizes_the_head_from_the_start() -> None:
    fixed = Updater(method="er", num_classes=N, **TINY)
    fixed.initialize(chunk([0, 1]).x, chunk([0, 1]).y)
    assert num_outputs(fixed.model) == N
    for classes in ([0, 1], [2, 3]):
        fixed.update(chunk(classes))
        assert num_outputs(fixed.model) == N and fixed.model_spec["num_classes"] == N
    assert fixed.seen_classes == [0, 1, 2, 3]
    assert fixed.history[-1]["config"]["num_classes"] == N


def test_without_a_class_count_the_head_still_grows() -> None:
    growing = Updater(method="er", **TINY)
    growing.update(chunk([0, 1]))
    assert num_outputs(growing.model) == 2
    growing.update(chunk([2, 3]))
    assert num_outputs(growing.model) == 4 and growing.config.num_classes is None


def test_a_label_beyond_the_fixed_head_is_refused_and_nothing_changes() -> None:
    updater = Updater(method="er", num_classes=4, **TINY)
    updater.update(chunk([0, 1]))
    weights = {k: v.clone() for k, v in updater.model.state_dict().items()}
    memory = updater.memory.get()["x"].clone()
    with pytest.raises(DataError, match=r"label 5 .*num_classes=4 .*\(CLI: --num-classes\)"):
        updater.update(chunk([4, 5]))
    assert updater.updates == 1 and updater.seen_classes == [0, 1]
    assert all(torch.equal(weights[k], v) for k, v in updater.model.state_dict().items())
    assert torch.equal(updater.memory.get()["x"], memory)
    # The first model is checked too: a fixed head is never built for labels it cannot hold.
    fresh = Updater(method="er", num_classes=4, **TINY)
    with pytest.raises(DataError, match="label 5"):
        fresh.initialize(chunk([4, 5]).x, chunk([4, 5]).y)
    assert fresh.model is None


def test_num_classes_is_validated_and_fixed_for_the_lineage() -> None:
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ConfigError, match=r"--num-classes .* is invalid; expected an integer"):
            UpdateConfig(num_classes=bad)  # type: ignore[arg-type]
    assert type(UpdateConfig(num_classes=np.int64(7)).num_classes) is int  # JSON-able
    updater = Updater(method="er", num_classes=N, **TINY)
    updater.update(chunk([0, 1]))
    with pytest.raises(ConfigError, match=r"\['num_classes'\] are fixed for this lineage"):
        updater.update(chunk([2, 3]), num_classes=12)
    assert num_outputs(updater.model) == N and updater.config.num_classes == N


def test_states_without_the_field_load_as_growing_heads() -> None:
    old = UpdateConfig().to_dict()
    del old["num_classes"]  # a state written before the field existed
    assert UpdateConfig.from_dict(old).num_classes is None


def test_a_fixed_head_state_round_trips(tmp_path: Path) -> None:
    config = dict(method="der", num_classes=N, seed=3, **TINY)
    uninterrupted = Updater(**config)
    for classes in ([0, 1], [2, 3]):
        uninterrupted.update(chunk(classes, seed=classes[0]))
    saved = Updater(**config)
    saved.update(chunk([0, 1], seed=0))
    saved.save(str(tmp_path / "v0"))
    loaded = Updater.load(str(tmp_path / "v0"))
    assert loaded.config.num_classes == N and num_outputs(loaded.model) == N
    manifest = json.loads((tmp_path / "v0" / "manifest.json").read_text())
    assert manifest["meta"]["config"]["num_classes"] == N
    loaded.update(chunk([2, 3], seed=2))
    for p, q in zip(uninterrupted.model.parameters(), loaded.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(uninterrupted.memory.get()["logits"], loaded.memory.get()["logits"])


def test_model_code_must_give_the_fixed_width(tmp_path: Path) -> None:
    wide = tmp_path / "wide.py"
    wide.write_text(
        "from torch import nn\n\n"
        "def model_fn(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12))\n"
    )
    updater = Updater(config=str(wide), method="er", num_classes=N, **TINY)
    with pytest.raises(ConfigError, match=r"wide\.py has 12 outputs but num_classes=10"):
        updater.update(chunk([0, 1]))
    assert updater.model is None
    narrow = tmp_path / "narrow.py"  # ignores num_classes: widened to N, as a growing head is
    narrow.write_text(wide.read_text().replace("nn.Linear(16, 12)", "nn.Linear(16, 2)"))
    updater = Updater(config=str(narrow), method="er", num_classes=N, **TINY)
    updater.update(chunk([0, 1]))
    assert num_outputs(updater.model) == N


# -- methods: old and new classes come from the seen classes, not the head's width ----------


def test_der_stores_and_matches_every_column_of_a_fixed_head() -> None:
    for method in ("der", "der++", "super-er"):
        updater = Updater(method=method, num_classes=N, **TINY)
        updater.update(chunk([0, 1]))
        rows = updater.memory.get()
        assert rows["logits"].shape == (40, N), method
        assert bool((rows["width"] == N).all()), method
        # Future classes' columns hold the logits the model gave them (pushed down by the
        # softmax), not padding: they are what the MSE matches.
        assert bool((rows["logits"][:, 2:] != 0).all()), method
        before = {k: v.clone() for k, v in rows.items()}
        updater.method.begin_update(chunk([2, 3]), context(updater, 1, [0, 1, 2, 3], [2, 3]))
        after = updater.memory.get()  # no column was added, so no target was rewritten
        assert all(torch.equal(before[k], after[k]) for k in before), method


def test_lwf_distils_the_seen_classes_only() -> None:
    updater = Updater(method="lwf", num_classes=N, **TINY)
    updater.update(chunk([0, 1]))
    lwf = updater.method
    assert lwf.old_classes == [0, 1]
    data = chunk([2, 3])
    ctx = context(updater, 1, [0, 1, 2, 3], [2, 3])
    lwf.begin_update(data, ctx)
    with torch.no_grad():  # perturb the working model so the two outputs differ
        output_layer(updater.model)[1].bias.add_(torch.arange(N, dtype=torch.float32))
    x = data.x[:8]
    t = lwf.params.temperature
    old = lwf.old_model(x)[:, [0, 1]] / t
    new = updater.model(x)[:, [0, 1]] / t
    expected = (old.softmax(1) * (old.log_softmax(1) - new.log_softmax(1))).sum(1).mean()
    assert torch.allclose(lwf.distillation(updater.model(x), x), expected, atol=1e-6)


def test_icarl_sigmoid_targets_cover_the_seen_classes_only() -> None:
    updater = Updater(method="icarl", num_classes=N, **TINY)
    updater.update(chunk([0, 1]))
    icarl = updater.method
    data = chunk([2, 3])
    ctx = context(updater, 1, [0, 1, 2, 3], [2, 3])
    icarl.begin_update(data, ctx)
    assert icarl.old_classes == [0, 1]
    batch = Batch(data.x[:8], data.y[:8])
    logits = updater.model(batch.x)
    target = F.one_hot(batch.y, N).float()
    target[:, [0, 1]] = torch.sigmoid(icarl.old_model(batch.x)[:, [0, 1]])
    seen = [0, 1, 2, 3]  # the paper's sum over classes 1..t: the 6 future columns stay out
    expected = (
        F.binary_cross_entropy_with_logits(logits[:, seen], target[:, seen], reduction="none")
        .sum(1)
        .mean()
    )
    assert torch.allclose(icarl.loss(batch, ctx), expected, atol=1e-6)


def test_bic_corrects_the_chunks_new_classes_not_the_unseen_columns() -> None:
    updater = Updater(method="bic", num_classes=N, **{**TINY, "memory_size": 80})
    updater.update(chunk([0, 1], rows=80))
    bic = updater.method
    data = chunk([2, 3], rows=80, seed=1)
    bic.begin_update(data, context(updater, 1, [0, 1, 2, 3], [2, 3]))
    assert (bic.old, bic.new) == ([0, 1], [2, 3])
    updater.update(data)
    assert bic.groups == [[2, 3]] and bic.seen == [0, 1, 2, 3]


def test_er_ace_keeps_unseen_classes_in_the_incoming_cross_entropy() -> None:
    """As the authors' code ("unmask unseen classes"): only seen classes absent from the
    incoming batch are masked; a fixed head's future columns stay in its softmax."""
    updater = Updater(method="er-ace", num_classes=N, **TINY)
    updater.update(chunk([0, 1]))
    ace = updater.method
    ace.replay_batch = lambda b, c: None  # type: ignore[method-assign]  # the incoming term only
    ctx = context(updater, 1, [0, 1, 2, 3], [2, 3])
    data = chunk([2, 3])
    batch = Batch(data.x[:8], data.y[:8])
    logits = updater.model(batch.x)
    masked = logits.clone()
    masked[:, [0, 1]] = torch.finfo(logits.dtype).min  # seen, absent from the batch
    expected = F.cross_entropy(masked, batch.y)
    assert not torch.allclose(expected, F.cross_entropy(logits[:, [2, 3]], batch.y - 2))
    assert torch.allclose(ace.loss(batch, ctx), expected, atol=1e-6)


def test_mask_unseen_masks_the_future_columns_of_a_fixed_head() -> None:
    updater = Updater(method="finetune", num_classes=N, mask_unseen=True, **TINY)
    updater.initialize(chunk([0, 1]).x, chunk([0, 1]).y)
    head = output_layer(updater.model)[1]
    before = head.weight.detach().clone(), head.bias.detach().clone()
    updater.update(chunk([0, 1]))
    head = output_layer(updater.model)[1]
    # Columns 2..9 were -inf in every step: no gradient reached them (plain SGD, no decay).
    assert torch.equal(head.weight[2:], before[0][2:]) and torch.equal(head.bias[2:], before[1][2:])
    assert not torch.equal(head.weight[:2], before[0][:2])


@pytest.mark.parametrize(
    "method",
    ["a-gem", "cls-er", "ewc", "gdumb", "joint", "offline-er", "online-ewc", "pod-er", "rd", "si"],
)
def test_every_other_method_keeps_a_fixed_head(method: str, tmp_path: Path) -> None:
    params = {"fitting_epochs": 2} if method in ("gdumb", "rd") else {}
    updater = Updater(method=method, num_classes=N, params=params, **TINY)
    for classes in ([0, 1], [2, 3]):
        updater.update(chunk(classes, seed=classes[0]))
        assert num_outputs(updater.model) == N
    for tensor in updater.method.state_tensors().values():  # EMA copies, Fisher, anchors
        if tensor.dim() >= 1 and tensor.shape[0] in (2, 4):
            pytest.fail(f"{method} keeps a tensor sized to the seen classes: {tensor.shape}")
    updater.save(str(tmp_path / "s"))
    assert num_outputs(Updater.load(str(tmp_path / "s")).model) == N


def test_evaluation_counts_unseen_classes_wrong_whatever_their_column_says() -> None:
    updater = Updater(method="er", num_classes=N, **TINY)
    updater.update(chunk([0, 1]))
    with torch.no_grad():  # an untrained column that wins every row
        output_layer(updater.model)[1].bias[5] = 1e4
    result = updater.evaluate(chunk([5]))
    assert result["accuracy"] == 0.0 and result["unseen_label_rows"] == 40


# -- benchmarks ------------------------------------------------------------------------------


def test_bench_accuracy_takes_the_argmax_among_learnt_classes() -> None:
    logits = torch.tensor([[5.0, 1.0, 0.0, 9.0], [0.0, 2.0, 0.0, 9.0], [0.0, 0.0, 0.0, 9.0]])
    y = torch.tensor([0, 1, 3])
    # Column 3 is untrained and wins every row: among the learnt classes 0 and 1 the first two
    # rows are right, and a row of class 3, never learnt, is wrong.
    assert _accuracy(logits, y, learnt=[0, 1]) == pytest.approx(2 / 3)
    assert _accuracy(logits, y, [1, 3], learnt=[0, 1]) == pytest.approx(1 / 3)
    assert _accuracy(logits, y) == pytest.approx(1 / 3)  # before any update: every output


def tiny_scenario(classes: list[list[int]], extra: int | None = None) -> Scenario:
    train = [chunk(c, seed=i) for i, c in enumerate(classes)]
    test = [chunk(c, rows=10, seed=10 + i) for i, c in enumerate(classes)]
    chunk_classes = [list(c) for c in classes]
    if extra is not None:
        chunk_classes[-1].append(extra)
    return Scenario(name="tiny", train=train, test=test, chunk_classes=chunk_classes)


def test_scenario_class_count_comes_from_chunk_classes_and_labels() -> None:
    assert scenario_num_classes(tiny_scenario([[0, 1], [2, 3]])) == 4
    # A class named in chunk_classes (a chunk folder's scenario.json) without rows yet counts.
    assert scenario_num_classes(tiny_scenario([[0, 1], [2, 3]], extra=6)) == 7


def test_benchmark_records_a_fixed_head_by_default_and_can_grow(tmp_path: Path) -> None:
    scenario = tiny_scenario([[0, 1], [2, 3]], extra=5)
    config = UpdateConfig(method="der", **TINY)
    fixed = run_benchmark(scenario, config, tmp_path / "fixed")
    assert fixed["head"] == "fixed" and fixed["config"]["num_classes"] == 6
    stored = json.loads((tmp_path / "fixed" / "results.json").read_text())
    assert stored["head"] == "fixed" and stored["config"]["num_classes"] == 6
    growing = run_benchmark(scenario, config, head="growing")
    assert growing["head"] == "growing" and growing["config"]["num_classes"] is None
    assert fixed["accuracy_matrix"] != growing["accuracy_matrix"]


def test_benchmark_head_errors_are_one_line() -> None:
    scenario = tiny_scenario([[0, 1], [2, 3]])
    with pytest.raises(ConfigError, match=r"growing \(CLI: --growing-head\) conflicts"):
        head_config(UpdateConfig(num_classes=4), "growing", scenario)
    with pytest.raises(ConfigError, match=r"num_classes=3 .* too small .* labels go up to 3"):
        head_config(UpdateConfig(num_classes=3), "fixed", scenario)
    assert head_config(UpdateConfig(num_classes=8), "fixed", scenario).num_classes == 8
    with pytest.raises(ConfigError, match="head 'wide' is invalid"):
        Experiment(head="wide")
    with pytest.raises(ConfigError, match="conflicts with num_classes set for er"):
        Experiment(methods=("er",), head="growing", options={"num_classes": 10})


def test_experiment_files_keep_the_head(tmp_path: Path) -> None:
    experiment = Experiment(spec=ScenarioSpec(updates=2), methods=("er",), head="growing")
    path = save_experiment(experiment, tmp_path / "experiment.yaml")
    assert "head: growing" in path.read_text()
    assert load_experiment(path).head == "growing"
    assert Experiment.from_dict({"methods": "er"}).head == "fixed"
