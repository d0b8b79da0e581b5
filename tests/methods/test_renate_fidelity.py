"""pod-er and super-er as Renate defines them (awslabs/Renate, updaters/experimental/er.py and
learner_components/): each loss computed by hand on one fixed batch from Renate's formula and
compared with the method's ``loss``; every term shown to count as the formula says (its weight
set to zero removes exactly it); features cached at insertion; shrink-and-perturb before every
update with POD's features taken after it; states without cached features continue."""

from __future__ import annotations

import pytest
import torch
from helpers import FAST, make_context
from torch import Tensor, nn
from torch.func import functional_call

from ricordo import Updater
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.memory import TensorMemory
from ricordo.methods import Batch, UpdateContext
from ricordo.methods.pod_er import PODERParams, PODExperienceReplay
from ricordo.methods.super_er import SuperERParams, SuperExperienceReplay


# -- a tiny model with fixed weights and the hand-written pieces of the formulas
def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _ctx(model: nn.Module, batch_size: int = 4) -> UpdateContext:
    model.train()
    return UpdateContext(
        model=model,
        config=UpdateConfig(batch_size=batch_size, progress=False),
        update_index=1,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seen_classes=[0, 1, 2],
        chunk_classes=[2],
    )


def _hidden(model: nn.Sequential, x: Tensor) -> Tensor:
    """The ReLU layer's output: the one feature POD compares in this model."""
    return torch.relu(x @ model[1].weight.T + model[1].bias)


def _logits(model: nn.Sequential, x: Tensor) -> Tensor:
    return _hidden(model, x) @ model[3].weight.T + model[3].bias


def _ce(z: Tensor, y: Tensor) -> Tensor:
    return (torch.logsumexp(z, 1) - z.gather(1, y[:, None]).squeeze(1)).mean()


def _pod(current: Tensor, cached: Tensor) -> Tensor:
    """PODNet on flat features: rows L2-normalised, their L2 distance, mean over rows."""
    a = current / current.norm(dim=1, keepdim=True)
    b = cached / cached.norm(dim=1, keepdim=True)
    return (a - b).square().sum(1).sqrt().mean()


X_NEW = torch.tensor([[1.0, 0.5, -0.2, 0.3], [0.1, -0.4, 0.8, 0.6], [0.7, 0.7, 0.2, -0.5]])
Y_NEW = torch.tensor([2, 2, 1])
X_MEM = torch.tensor(
    [
        [0.9, -0.3, 0.4, 0.2],
        [-0.2, 0.6, 0.5, 0.9],
        [0.3, 0.3, -0.7, 0.8],
        [0.5, 0.1, 0.6, -0.4],
        [0.8, 0.9, 0.1, 0.3],
        [-0.6, 0.2, 0.9, 0.4],
    ]
)
Y_MEM = torch.tensor([0, 1, 0, 1, 1, 0])


def _memory(model: nn.Sequential, *, logits: bool) -> TensorMemory:
    """Six stored rows with cached features (and logits) set explicitly: the current model's
    values plus fixed offsets, so every distance is clearly non-zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cached = (_hidden(model, X_MEM) + torch.rand(6, 5, generator=gen)).clamp_min(0.05)
        stored = _logits(model, X_MEM) + torch.randn(6, 3, generator=gen)
    memory = TensorMemory(100, "reservoir", seed=0)
    rows = {"x": X_MEM, "y": Y_MEM}
    if logits:
        rows |= {"logits": stored, "width": torch.full((6,), 3, dtype=torch.int64)}
    memory.add(rows | {"pod_0": cached})
    return memory


def _draws(memory: TensorMemory, batches: list[list[int]]) -> list[list[int]]:
    """Make the memory hand out these slot lists, one per draw, and record the draws."""
    queue, drawn = list(batches), []

    def sample_indices(n: int) -> Tensor:
        drawn.append(queue.pop(0))
        assert len(drawn[-1]) == n
        return torch.tensor(drawn[-1])

    memory.sample_indices = sample_indices  # type: ignore[method-assign]
    return drawn


# -- POD-ER
@pytest.mark.parametrize("weight", [1.0, 0.3, 0.0])
def test_pod_er_loss_is_renates_formula_on_a_fixed_batch(weight: float) -> None:
    """Renate: (1 * CE(new) + alpha * POD(memory batch)) / (1 + alpha); POD against the features
    cached with the rows; no cross-entropy on the replayed rows."""
    model = _model()
    memory = _memory(model, logits=False)
    method = PODExperienceReplay(PODERParams(pod_weight=weight, memory_batch_size=4), memory)
    ctx = _ctx(model)
    method.begin_update(None, ctx)  # type: ignore[arg-type]
    drawn = _draws(memory, [[4, 1, 3, 0]])
    loss = method.loss(Batch(X_NEW, Y_NEW), ctx)
    ce = _ce(_logits(model, X_NEW), Y_NEW)
    rows = torch.tensor([4, 1, 3, 0])
    pod = _pod(_hidden(model, X_MEM[rows]), memory.get(rows)["pod_0"])
    assert float(pod.detach()) > 0.05  # deleting the term would change the loss visibly
    torch.testing.assert_close(loss, (ce + weight * pod) / (1 + weight))
    assert drawn == ([] if weight == 0 else [[4, 1, 3, 0]])  # a zero weight draws nothing


def test_pod_er_gives_replayed_rows_no_cross_entropy() -> None:
    """Swapping the stored labels changes nothing: the memory only serves the distillation."""
    model = _model()
    losses = []
    for labels in (Y_MEM, 1 - Y_MEM):
        memory = _memory(model, logits=False)
        memory.update_field("y", torch.arange(6), labels)
        method = PODExperienceReplay(PODERParams(memory_batch_size=6), memory)
        ctx = _ctx(model)
        method.begin_update(None, ctx)  # type: ignore[arg-type]
        losses.append(method.loss(Batch(X_NEW, Y_NEW), ctx))
    assert torch.equal(losses[0], losses[1])


def test_pod_er_stores_each_new_row_with_the_features_of_its_training_step() -> None:
    model = _model()
    memory = TensorMemory(100, "reservoir", seed=0)
    method = PODExperienceReplay(PODERParams(), memory)
    ctx = _ctx(model)
    method.begin_update(None, ctx)  # type: ignore[arg-type]
    batch = Batch(X_NEW, Y_NEW)
    method.loss(batch, ctx)
    expected = _hidden(model, X_NEW).detach()
    with torch.no_grad():  # the optimizer step happens before after_step: features are older
        model[1].weight.add_(1.0)
    method.after_step(batch, ctx)
    torch.testing.assert_close(memory.get()["pod_0"], expected)


# -- Super-ER
ALL = {"logit_weight": 0.7, "replay_weight": 0.9, "consistency_weight": 0.4, "pod_weight": 0.6}


def _ema(model: nn.Sequential) -> dict[str, dict[str, Tensor]]:
    """Plastic and stable weights: the model's plus different fixed offsets."""
    gen = torch.Generator().manual_seed(2)
    return {
        name: {
            k: v.detach() + scale * torch.randn(v.shape, generator=gen)
            for k, v in model.state_dict().items()
        }
        for name, scale in (("plastic", 0.3), ("stable", 0.5))
    }


def _super_er_by_hand(
    model: nn.Sequential, memory: TensorMemory, ema: dict, weights: dict, batches: dict
) -> Tensor:
    """Renate's Super-ER step: CE(new) + der_alpha * MSE(batch 1) + der_beta * CE(batch 2) +
    cls_alpha * consistency(batch 2) + pod_alpha * POD(batch 3), over 1 + sum of weights."""
    terms = {"new": _ce(_logits(model, X_NEW), Y_NEW)}
    if "mse" in batches:
        rows = memory.get(torch.tensor(batches["mse"]))
        terms["mse"] = (_logits(model, rows["x"]) - rows["logits"]).square().mean()
    if "ce" in batches:
        rows = memory.get(torch.tensor(batches["ce"]))
        z = _logits(model, rows["x"])
        terms["ce"] = _ce(z, rows["y"])
        with torch.no_grad():
            plastic = functional_call(model, ema["plastic"], (rows["x"],))
            stable = functional_call(model, ema["stable"], (rows["x"],))
            pick = lambda z: z.softmax(1).gather(1, rows["y"][:, None])  # noqa: E731
            target = torch.where(pick(stable) > pick(plastic), stable, plastic)
        terms["cls"] = (z - target).square().mean()
    if "pod" in batches:
        rows = memory.get(torch.tensor(batches["pod"]))
        terms["pod"] = _pod(_hidden(model, rows["x"]), rows["pod_0"])
    w = {
        "new": 1.0,
        "mse": weights["logit_weight"],
        "ce": weights["replay_weight"],
        "cls": weights["consistency_weight"],
        "pod": weights["pod_weight"],
    }
    for name, value in terms.items():  # each term is clearly non-zero: deleting one shows
        assert float(value.detach()) > 0.01, name
    return sum(w[k] * v for k, v in terms.items()) / sum(w.values())


@pytest.mark.parametrize(
    "off", [None, "logit_weight", "replay_weight", "consistency_weight", "pod_weight"]
)
def test_super_er_loss_is_renates_formula_on_a_fixed_batch(off: str | None) -> None:
    """Each term on its own batch (CLS-ER's consistency reuses the replay batch), normalised by
    1 + the sum of the weights; a zero weight removes exactly its term and its draw."""
    weights = {**ALL, **({off: 0.0} if off else {})}
    model = _model()
    memory = _memory(model, logits=True)
    method = SuperExperienceReplay(SuperERParams(**weights, memory_batch_size=3), memory)
    ema = _ema(model)
    method.ema.weights = {n: dict(w) for n, w in ema.items()}
    method.pod.begin(model, memory, "spatial", 64)
    order = {"mse": [0, 2, 4], "ce": [1, 3, 5], "pod": [5, 0, 3]}
    wanted = {
        "mse": weights["logit_weight"] > 0,
        "ce": weights["replay_weight"] > 0 or weights["consistency_weight"] > 0,
        "pod": weights["pod_weight"] > 0,
    }
    batches = {k: v for k, v in order.items() if wanted[k]}
    drawn = _draws(memory, list(batches.values()))
    loss = method.loss(Batch(X_NEW, Y_NEW), _ctx(model))
    assert drawn == list(batches.values())  # independent batches, in Renate's order
    hand = _super_er_by_hand(model, memory, ema, weights, batches)
    if off == "replay_weight":  # the batch stays (consistency uses it), its CE does not count
        hand = _super_er_by_hand(model, memory, ema, {**weights, "replay_weight": 0.0}, batches)
    torch.testing.assert_close(loss, hand)


def test_super_er_is_plain_cross_entropy_while_the_memory_is_empty() -> None:
    model = _model()
    method = SuperExperienceReplay(SuperERParams(), TensorMemory(100, "reservoir", seed=0))
    method.pod.begin(model, method.memory, "spatial", 64)
    loss = method.loss(Batch(X_NEW, Y_NEW), _ctx(model))
    torch.testing.assert_close(loss, _ce(_logits(model, X_NEW), Y_NEW))


def test_super_er_shrinks_and_perturbs_before_every_update_then_caches_pod_features(
    digits_scenario: Scenario,
) -> None:
    """p <- 0.95 p + 0.001 N(0, 1) at the start of every update (the first too: Renate's
    on_train_start); rows stored without POD features (older states) get the features of the
    shrunk model, as if inserted after shrinking."""
    updater = Updater(method="super-er", **FAST)
    chunk = digits_scenario.train[0]
    model = updater.initialize(chunk)
    params = [p.detach().clone() for p in model.parameters()]
    ctx = make_context(updater, 0)
    noise_gen = torch.Generator().manual_seed(0)
    updater.method.begin_update(chunk, ctx)
    for old, new in zip(params, model.parameters(), strict=True):
        noise = torch.randn(old.shape, generator=noise_gen)
        torch.testing.assert_close(new.detach(), 0.95 * old + 0.001 * noise)
    # A memory from before features were cached: x, y, logits, width only.
    updater.update(chunk)
    memory = updater.memory
    old_rows = {k: v.clone() for k, v in memory.get().items() if not k.startswith("pod_")}
    fresh = TensorMemory(100, "reservoir", seed=0)
    fresh.add(old_rows)
    updater.method.memory = fresh
    before = [p.detach().clone() for p in updater.model.parameters()]
    updater.method.begin_update(digits_scenario.train[1], make_context(updater, 1))
    assert not torch.equal(before[0], next(updater.model.parameters()))  # it shrank
    assert sorted(fresh.fields) == ["logits", "pod_0", "width", "x", "y"]
    net = updater.model.eval()
    with torch.no_grad():
        expected = torch.relu(net[1](net[0](old_rows["x"])))  # Flatten, Linear, ReLU, ...
    torch.testing.assert_close(fresh.get()["pod_0"], expected)


# -- states and policies
def test_a_pod_er_memory_without_cached_features_continues(digits_scenario: Scenario) -> None:
    """A state written before features were cached holds x and y only: the next update gives
    the stored rows the current model's features, and training goes on."""
    updater = Updater(method="pod-er", **FAST)
    updater.update(digits_scenario.train[0])
    rows = {k: v.clone() for k, v in updater.memory.get().items() if k in ("x", "y")}
    old = TensorMemory(100, "reservoir", seed=0)
    old.add(rows)
    updater.method.memory = old
    model = updater.model
    with torch.no_grad():
        expected = torch.relu(model[1](model[0](rows["x"])))
    ctx = make_context(updater, 1)
    updater.method.begin_update(digits_scenario.train[1], ctx)
    torch.testing.assert_close(old.get()["pod_0"], expected)
    updater.method.end_update(digits_scenario.train[1], ctx)
    updater.update(digits_scenario.train[1])
    assert sorted(updater.memory.fields) == ["pod_0", "x", "y"]


def test_changing_pod_pooling_within_a_lineage_is_refused(digits_scenario: Scenario) -> None:
    updater = Updater(method="pod-er", **{**FAST, "model": "cnn", "hidden": (4, 4)})
    updater.update(digits_scenario.train[0])
    before = {k: v.clone() for k, v in updater.memory.get().items()}
    with pytest.raises(ConfigError, match="pod_pooling='width' differs from 'spatial'.*keep"):
        updater.update(digits_scenario.train[1], params={"pod_pooling": "width"})
    assert updater.updates == 1  # the failed update left the updater as it was
    assert all(torch.equal(v, updater.memory.get()[k]) for k, v in before.items())


def test_pod_er_with_herding_stores_features_of_the_trained_model(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="pod-er", memory_policy="herding", **FAST)
    updater.update(digits_scenario.train[0])
    rows = updater.memory.get()
    assert len(rows["x"]) == 100 and sorted(rows) == ["pod_0", "x", "y"]
    model = updater.model.eval()
    with torch.no_grad():
        expected = torch.relu(model[1](model[0](rows["x"])))
    torch.testing.assert_close(rows["pod_0"], expected)
    updater.update(digits_scenario.train[1])
    assert len(updater.memory) == 100
