"""Each method's training loss on one fixed batch equals the paper's formula, computed by hand.

A tiny model with fixed weights, a fixed batch and explicitly set method state (memory rows,
stored logits, teacher models, Fisher, importances, targets); the reference is written out from
the formula with float64 tensor arithmetic (no torch.nn.functional) and compared with the
method's ``loss(batch, ctx)``. Each test also checks that its distinctive term is large enough
that deleting it would fail the comparison. Every hyperparameter that enters the loss is passed
explicitly, so a change of defaults does not change what these tests check.

POD-ER, Super-ER and A-GEM have their own formula tests (test_method_pod_er.py,
test_method_super_er.py, test_method_agem.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ricordo.config import UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.memory import TensorMemory
from ricordo.methods import METHODS, Batch, Method, UpdateContext
from ricordo.methods.base import parse_params

K = 5  # output columns
FEATURES = 6
HIDDEN = 7
SEEN = [0, 1, 2, 3]  # class 4 has a column but was never seen
OLD = [0, 1]  # classes of earlier updates
CHUNK = [2, 3]  # classes of the current update
RTOL = 1e-5  # float32 loss against a float64 reference
SIGNIFICANT = 0.01  # every distinctive term is at least this large (the tolerance is ~1e-5)


# -- fixtures built by hand -------------------------------------------------------------------
def tiny_model(seed: int, scale: float = 0.6) -> nn.Sequential:
    """flatten -> linear(6, 7) -> relu -> linear(7, K), weights drawn from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, K)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
    return model


def rows(seed: int, labels: list[int]) -> tuple[Tensor, Tensor]:
    """Inputs (len(labels), 1, 2, 3) drawn from a seeded generator, and the labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), 1, 2, 3, generator=generator)
    return x, torch.tensor(labels, dtype=torch.int64)


BATCH = rows(100, [2, 3, 3, 2])  # the new chunk's batch
MEMORY = rows(200, [0, 1, 0, 2])  # memory rows: two old classes and one of the chunk


def memory_of(fields: dict[str, Tensor]) -> TensorMemory:
    """A reservoir memory holding exactly ``fields`` (sampling all its rows returns them all)."""
    memory = TensorMemory(len(next(iter(fields.values()))), "reservoir", seed=0)
    memory.add(fields)
    return memory


def make_method(name: str, params: dict[str, Any], memory: TensorMemory | None = None) -> Any:
    cls: type[Method] = METHODS.get(name)
    return cls(parse_params(cls, params), memory)


def context(model: nn.Module, *, update_index: int = 1, seen: list[int] = SEEN) -> UpdateContext:
    return UpdateContext(
        model=model,
        config=UpdateConfig(batch_size=len(BATCH[1]), progress=False),
        update_index=update_index,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seen_classes=list(seen),
        chunk_classes=list(CHUNK),
    )


# -- the formulas' pieces, in float64 ---------------------------------------------------------
def logits_by_hand(model: nn.Module, x: Tensor) -> Tensor:
    """relu(x W1' + b1) W2' + b2 from the model's weights."""
    w1, b1, w2, b2 = (p.detach().double() for p in model.parameters())
    hidden = (x.double().flatten(1) @ w1.T + b1).clamp_min(0)
    return hidden @ w2.T + b2


def log_softmax(z: Tensor) -> Tensor:
    return z - z.logsumexp(1, keepdim=True)


def cross_entropy(z: Tensor, y: Tensor) -> Tensor:
    """-log softmax(z)_y, averaged over rows."""
    return -log_softmax(z).gather(1, y[:, None]).mean()


def log_sigmoid(z: Tensor) -> Tensor:
    return -torch.log1p(torch.exp(-z))


def assert_loss(method: Any, batch: Batch, ctx: UpdateContext, expected: Tensor) -> None:
    loss = method.loss(batch, ctx)
    assert loss.dim() == 0
    torch.testing.assert_close(loss.double(), expected, rtol=RTOL, atol=1e-7)


def new_batch() -> Batch:
    return Batch(BATCH[0].clone(), BATCH[1].clone())


# -- the methods ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["finetune", "joint", "gdumb"])
def test_plain_methods_train_on_the_cross_entropy(name: str) -> None:
    """finetune, joint and GDumb: cross-entropy -mean log softmax(z)_y on the batch; what sets
    joint and GDumb apart is the data they train on (tested below)."""
    model = tiny_model(0)
    params = {"fitting_epochs": 256, "schedule": "sgdr", "min_lr_ratio": 0.01, "reset": True}
    memory = memory_of({"x": MEMORY[0], "y": MEMORY[1]}) if name != "finetune" else None
    method = make_method(name, params if name == "gdumb" else {}, memory)
    assert_loss(
        method,
        new_batch(),
        context(model),
        cross_entropy(logits_by_hand(model, BATCH[0]), BATCH[1]),
    )


def test_joint_trains_on_every_stored_row_and_the_chunk() -> None:
    method = make_method("joint", {}, memory_of({"x": MEMORY[0], "y": MEMORY[1]}))
    data = method.training_data(ArrayDataset(*BATCH), context(tiny_model(0)))
    assert torch.equal(data.x, torch.cat([MEMORY[0], BATCH[0]]))
    assert torch.equal(data.y, torch.cat([MEMORY[1], BATCH[1]]))


def test_gdumb_trains_on_the_memory_only_for_its_own_epochs() -> None:
    """GDumb (Prabhu et al. 2020): the model is fitted to the memory alone, never the chunk."""
    params = {"fitting_epochs": 256, "schedule": "sgdr", "min_lr_ratio": 0.01, "reset": True}
    method = make_method("gdumb", params, memory_of({"x": MEMORY[0], "y": MEMORY[1]}))
    ctx = context(tiny_model(0))
    data = method.training_data(ArrayDataset(*BATCH), ctx)
    assert torch.equal(data.x, MEMORY[0]) and torch.equal(data.y, MEMORY[1])
    assert method.epochs(data, ctx) == 256


def test_er_loss_is_the_cross_entropy_of_new_and_replayed_rows() -> None:
    """ER (Chaudhry et al. 2019): CE over the new batch concatenated with a replayed batch."""
    model = tiny_model(0)
    method = make_method(
        "er", {"memory_batch_size": 4}, memory_of({"x": MEMORY[0], "y": MEMORY[1]})
    )
    x, y = torch.cat([BATCH[0], MEMORY[0]]), torch.cat([BATCH[1], MEMORY[1]])
    expected = cross_entropy(logits_by_hand(model, x), y)
    new_only = cross_entropy(logits_by_hand(model, BATCH[0]), BATCH[1])
    assert abs(float(expected - new_only)) > SIGNIFICANT  # the replayed rows matter
    assert_loss(method, new_batch(), context(model), expected)


def test_er_ace_masks_the_seen_classes_absent_from_the_incoming_batch() -> None:
    """ER-ACE (Caccia et al. 2022): the incoming rows' CE runs over the classes present in the
    batch plus the classes not seen yet (the authors' code unmasks those); the replayed rows get
    the full CE; in the first update nothing is masked."""
    model = tiny_model(0)
    memory = memory_of({"x": MEMORY[0], "y": MEMORY[1]})
    method = make_method("er-ace", {"memory_batch_size": 4}, memory)
    z_new, z_memory = logits_by_hand(model, BATCH[0]), logits_by_hand(model, MEMORY[0])
    allowed = [2, 3, 4]  # present in the batch (2, 3) and never seen (4); 0 and 1 are masked
    masked = torch.full_like(z_new, float("-inf"))
    masked[:, allowed] = z_new[:, allowed]
    asymmetric = cross_entropy(masked, BATCH[1])
    replay = cross_entropy(z_memory, MEMORY[1])
    assert float(cross_entropy(z_new, BATCH[1]) - asymmetric) > SIGNIFICANT  # the mask matters
    assert_loss(method, new_batch(), context(model), asymmetric + replay)
    first = cross_entropy(z_new, BATCH[1]) + replay
    assert_loss(method, new_batch(), context(model, update_index=0), first)


def _der_memory() -> TensorMemory:
    """Four rows with stored logits; rows stored before the head grew have fewer valid columns."""
    generator = torch.Generator().manual_seed(300)
    stored = torch.randn(len(MEMORY[1]), K, generator=generator)
    width = torch.tensor([K, 3, 4, K])
    stored[1, 3:] = 0.0  # columns past a row's width are zero-padded
    stored[2, 4:] = 0.0
    return memory_of({"x": MEMORY[0], "y": MEMORY[1], "logits": stored, "width": width})


def _stored_logit_term(model: nn.Module, memory: TensorMemory) -> Tensor:
    """Mean squared error between current and stored logits over each row's valid columns."""
    fields = memory.get()
    current = logits_by_hand(model, fields["x"])
    valid = torch.arange(K)[None, :] < fields["width"][:, None]
    error = (current - fields["logits"].double()).square()
    return error[valid].sum() / valid.sum()


@pytest.mark.parametrize("name", ["der", "der++"])
def test_der_adds_the_stored_logit_mse_and_derpp_a_replayed_cross_entropy(name: str) -> None:
    """DER (Buzzega et al. 2020): CE(new) + alpha * ||z(x') - stored z'||^2 (mean over valid
    entries); DER++ adds beta * CE on a second replayed batch."""
    model = tiny_model(0)
    memory = _der_memory()
    params: dict[str, Any] = {"alpha": 0.7, "memory_batch_size": 4, "new_columns": "clip"}
    if name == "der++":
        params["beta"] = 0.4
    method = make_method(name, params, memory)
    mse = _stored_logit_term(model, memory)
    assert float(mse) > SIGNIFICANT
    expected = cross_entropy(logits_by_hand(model, BATCH[0]), BATCH[1]) + 0.7 * mse
    if name == "der++":
        replay = cross_entropy(logits_by_hand(model, MEMORY[0]), MEMORY[1])
        assert float(replay) > SIGNIFICANT
        expected = expected + 0.4 * replay
    assert_loss(method, new_batch(), context(model), expected)


@pytest.mark.parametrize("weight", [None, 0.3])
def test_offline_er_weights_new_and_memory_rows_by_their_shares(weight: float | None) -> None:
    """Renate's offline ER: w * CE(new) + (1 - w) * CE(memory), w = N_t / (N_t + N_previous)
    unless loss_weight_new_data fixes it."""
    model = tiny_model(0)
    memory = memory_of({"x": MEMORY[0], "y": MEMORY[1]})
    params = {"memory_batch_size": 4, "loss_weight_new_data": weight}
    method = make_method("offline-er", params, memory)
    method.rows_seen = 10  # rows of the earlier chunks
    ctx = context(model)
    method.begin_update(ArrayDataset(*BATCH), ctx)  # this chunk: 4 rows
    w = 4 / (4 + 10) if weight is None else weight
    new = cross_entropy(logits_by_hand(model, BATCH[0]), BATCH[1])
    old = cross_entropy(logits_by_hand(model, MEMORY[0]), MEMORY[1])
    assert abs(float(new - old)) > SIGNIFICANT  # the weighting matters
    assert_loss(method, new_batch(), ctx, w * new + (1 - w) * old)


def test_icarl_distils_the_old_classes_through_sigmoid_targets() -> None:
    """iCaRL (Rebuffi et al. 2017): binary cross-entropy summed over the seen classes, targets
    one-hot for the new classes and the previous model's sigmoid outputs for the old ones."""
    model, teacher = tiny_model(0), tiny_model(1)
    method = make_method("icarl", {"nme": True}, memory_of({"x": MEMORY[0], "y": MEMORY[1]}))
    method.old_model, method.old_classes = teacher, list(OLD)
    x, y = torch.cat([BATCH[0], MEMORY[0]]), torch.cat([BATCH[1], MEMORY[1]])  # chunk + exemplars
    batch = Batch(x.clone(), y.clone())
    z = logits_by_hand(model, x)
    target = torch.zeros_like(z)
    target[torch.arange(len(y)), y] = 1.0
    distilled = target.clone()
    distilled[:, OLD] = 1 / (1 + torch.exp(-logits_by_hand(teacher, x)[:, OLD]))

    def bce(t: Tensor) -> Tensor:
        terms = t * log_sigmoid(z) + (1 - t) * log_sigmoid(-z)
        return -terms[:, SEEN].sum(1).mean()  # class 4 (unseen) takes no part

    expected = bce(distilled)
    assert abs(float(expected - bce(target))) > SIGNIFICANT  # the distillation matters
    assert_loss(method, batch, context(model), expected)


@pytest.mark.parametrize(
    ("weighting", "weights"),
    [("paper", (1 - 3 / 5, 3 / 5)), ("normalized", (1.0, 3 / 2))],
)
def test_bic_stage_one_is_cross_entropy_plus_distillation_of_corrected_logits(
    weighting: str, weights: tuple[float, float]
) -> None:
    """BiC (Wu et al. 2019) stage 1 with 3 old and 2 chunk classes: lambda = 3 / 5;
    "paper": (1 - lambda) * CE + lambda * KD; "normalized": that divided by 1 - lambda. CE over
    new and replayed rows; KD = -sum softmax(t_old / T) log softmax(z_old / T) over the old
    classes, with both models' logits passed through the earlier corrections."""
    model, teacher = tiny_model(0), tiny_model(1)
    old = [0, 1, 4]
    memory_y = torch.tensor([0, 1, 4, 2])
    memory = memory_of({"x": MEMORY[0], "y": memory_y})
    params = {
        "memory_batch_size": 4,
        "temperature": 2.0,
        "loss_weighting": weighting,
        "bias_min_val_rows": 1000,  # no validation hold-out here: every stored row is replayed
    }
    method = make_method("bic", params, memory)
    method.seen = list(old)
    ctx = context(model, seen=[0, 1, 2, 3, 4])
    method.begin_update(ArrayDataset(*BATCH), ctx)
    method.old_model = teacher
    # An earlier update's correction of classes 0 and 1: z -> 1.3 z - 0.4.
    method.bias, method.groups = torch.tensor([[1.3, -0.4]]), [[0, 1]]

    def corrected(z: Tensor) -> Tensor:
        z = z.clone()
        z[:, [0, 1]] = 1.3 * z[:, [0, 1]] - 0.4
        return z

    x, y = torch.cat([BATCH[0], MEMORY[0]]), torch.cat([BATCH[1], memory_y])
    z, t = corrected(logits_by_hand(model, x)), corrected(logits_by_hand(teacher, x))
    ce = cross_entropy(z, y)
    target = log_softmax(t[:, old] / 2.0).exp()
    kd = -(target * log_softmax(z[:, old] / 2.0)).sum(1).mean()
    assert float(kd) > SIGNIFICANT
    assert_loss(method, new_batch(), ctx, weights[0] * ce + weights[1] * kd)


def test_cls_er_adds_consistency_to_the_better_ema_model_per_row() -> None:
    """CLS-ER (Arani et al. 2022): CE over new and replayed rows plus lambda * MSE between the
    replayed rows' logits and, per row, those of the EMA model (plastic or stable) that gives the
    true class the higher probability. Prediction uses the stable model."""
    model, plastic, stable = tiny_model(0), tiny_model(1), tiny_model(6)
    memory = memory_of({"x": MEMORY[0], "y": MEMORY[1]})
    params = {
        "consistency_weight": 0.3,
        "memory_batch_size": 4,
        "plastic_rate": 0.9,
        "plastic_decay": 0.999,
        "stable_rate": 0.7,
        "stable_decay": 0.999,
    }
    method = make_method("cls-er", params, memory)
    method.ema.weights = {
        "plastic": {k: v.clone() for k, v in plastic.state_dict().items()},
        "stable": {k: v.clone() for k, v in stable.state_dict().items()},
    }
    x, y = torch.cat([BATCH[0], MEMORY[0]]), torch.cat([BATCH[1], MEMORY[1]])
    z_plastic, z_stable = logits_by_hand(plastic, MEMORY[0]), logits_by_hand(stable, MEMORY[0])
    rows_ = torch.arange(len(MEMORY[1]))
    p_plastic = log_softmax(z_plastic).exp()[rows_, MEMORY[1]]
    p_stable = log_softmax(z_stable).exp()[rows_, MEMORY[1]]
    use_stable = p_stable > p_plastic
    assert 0 < int(use_stable.sum()) < len(use_stable)  # both teachers are chosen for some row
    target = torch.where(use_stable[:, None], z_stable, z_plastic)
    consistency = (logits_by_hand(model, MEMORY[0]) - target).square().mean()
    assert float(consistency) > SIGNIFICANT
    expected = cross_entropy(logits_by_hand(model, x), y) + 0.3 * consistency
    ctx = context(model)
    assert_loss(method, new_batch(), ctx, expected)
    with torch.no_grad():
        predicted = method.predict(BATCH[0], ctx)
    torch.testing.assert_close(
        predicted.double(), logits_by_hand(stable, BATCH[0]), rtol=RTOL, atol=1e-6
    )


def test_lwf_adds_the_tempered_kl_to_the_previous_model_on_old_classes() -> None:
    """LwF (Li & Hoiem 2016): CE + alpha * KL(softmax(t_old / T) || softmax(z_old / T)) over
    the old classes, averaged over the batch (no T^2 factor, as the paper)."""
    model, teacher = tiny_model(0), tiny_model(1)
    method = make_method("lwf", {"alpha": 0.8, "temperature": 2.0})
    method.old_classes = list(OLD)
    ctx = context(model)
    method.begin_update(ArrayDataset(*BATCH), ctx)
    method.old_model = teacher
    z, t = logits_by_hand(model, BATCH[0]), logits_by_hand(teacher, BATCH[0])
    log_q, log_p = log_softmax(z[:, OLD] / 2.0), log_softmax(t[:, OLD] / 2.0)
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    assert float(kl) > SIGNIFICANT
    assert_loss(method, new_batch(), ctx, cross_entropy(z, BATCH[1]) + 0.8 * kl)


def _quadratic_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A positive per-parameter weight and an anchor for every parameter of ``model``."""
    generator = torch.Generator().manual_seed(400)
    weight, anchor = {}, {}
    for name, p in model.named_parameters():
        weight[name] = torch.rand(p.shape, generator=generator)
        anchor[name] = p.detach() + 0.5 * torch.randn(p.shape, generator=generator)
    return weight, anchor


def _quadratic(model: nn.Module, weight: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
    return sum(
        (weight[n].double() * (p.detach().double() - anchor[n].double()).square()).sum()
        for n, p in model.named_parameters()
    )  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("name", "params", "scale"),
    [
        ("ewc", {"ewc_lambda": 3.0, "fisher": "true", "fisher_samples": None}, 3.0),
        (
            "online-ewc",
            {"ewc_lambda": 3.0, "fisher": "true", "fisher_samples": None, "gamma": 0.9},
            3.0,
        ),
        ("si", {"c": 0.4, "xi": 1.0}, 0.4),
    ],
)
def test_quadratic_penalties_weight_each_parameter_by_its_importance(
    name: str, params: dict[str, Any], scale: float
) -> None:
    """EWC / online EWC (Kirkpatrick et al. 2017; Schwarz et al. 2018): CE + lambda * sum F
    (theta - theta*)^2; SI (Zenke et al. 2017): CE + c * sum Omega (theta - theta*)^2 (Mammoth's
    scale, without the papers' 1/2, as the modules document)."""
    model = tiny_model(0)
    method = make_method(name, params)
    weight, anchor = _quadratic_state(model)
    if name == "si":
        method.importance, method.anchor = weight, anchor
    else:
        method.fisher, method.anchor = weight, anchor
    penalty = _quadratic(model, weight, anchor)
    assert float(penalty) > SIGNIFICANT
    expected = cross_entropy(logits_by_hand(model, BATCH[0]), BATCH[1]) + scale * penalty
    assert_loss(method, new_batch(), context(model), expected)


def test_rd_regresses_the_logits_on_class_centred_targets() -> None:
    """RD (Renate's DMC-style consolidation): 0.5 * mean over rows and classes of
    (z - (t - mean_c t))^2, with each row's target found by its index in the training data."""
    model = tiny_model(0)
    params = {"fitting_epochs": 256, "schedule": "sgdr", "min_lr_ratio": 0.01}
    method = make_method("rd", params, memory_of({"x": MEMORY[0], "y": MEMORY[1]}))
    generator = torch.Generator().manual_seed(500)
    method.targets = 2.0 + torch.randn(6, K, generator=generator)  # 6 rows of training data
    index = torch.tensor([5, 0, 3, 1])
    batch = Batch(BATCH[0].clone(), BATCH[1].clone(), index)
    t = method.targets[index].double()
    centred = t - t.mean(1, keepdim=True)
    expected = 0.5 * (logits_by_hand(model, BATCH[0]) - centred).square().mean()
    uncentred = 0.5 * (logits_by_hand(model, BATCH[0]) - t).square().mean()
    assert abs(float(uncentred - expected)) > SIGNIFICANT  # the centring matters
    assert_loss(method, batch, context(model), expected)
