"""pod-er: zero against the features cached at insertion, positive after a step, never NaN, and
it holds features in place. Its loss by hand and old states: test_renate_fidelity.py.

Learning and reloading (in process and in a new process) are checked for the whole ER family in
test_method_cls_er.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FAST, make_context
from torch import nn
from torch.nn import functional as F

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods import Batch
from ricordo.methods.components import captured, pod_layers, pod_loss
from ricordo.models import MODELS


@pytest.mark.parametrize(("model", "hidden"), [("mlp", (64, 32)), ("cnn", (8, 16))])
def test_pod_is_zero_against_features_cached_at_insertion_and_positive_after_a_step(
    model: str, hidden: tuple[int, ...], digits_scenario: Scenario
) -> None:
    """A row enters the memory with the features of its training step's forward pass: at the
    same weights POD on it is 0; after an optimizer step it is positive."""
    updater = Updater(method="pod-er", **{**FAST, "model": model, "hidden": hidden})
    chunk = digits_scenario.train[0]
    net = updater.initialize(chunk)
    method, ctx = updater.method, make_context(updater, 0)
    method.begin_update(chunk, ctx)
    assert len(method.pod.layers) == 2
    net.train()  # as in training: batch-norm layers use batch statistics
    batch = Batch(chunk.x[:32], chunk.y[:32])
    method.loss(batch, ctx)  # the memory is empty: plain cross-entropy, features kept
    method.after_step(batch, ctx)
    rows = method.memory.get()
    assert sorted(rows) == ["pod_0", "pod_1", "x", "y"] and len(rows["x"]) == 32
    _, features = method.pod.forward(net, rows["x"])
    assert float(method.pod.loss(features, rows, True).detach()) == 0.0
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(chunk.x[48:80]), chunk.y[48:80]).backward()
    optimizer.step()
    _, features = method.pod.forward(net, rows["x"])
    assert 0 < float(method.pod.loss(features, rows, True).detach()) < 2


def test_pod_is_finite_for_dead_features_and_refuses_an_empty_layer_list() -> None:
    zero = torch.zeros(4, 3, 5, 5, requires_grad=True)
    for pooling in ("spatial", "width", "height", "channel", "gap", "pixel"):
        loss = pod_loss(
            [zero, torch.zeros(4, 7)], [torch.zeros(4, 3, 5, 5), torch.ones(4, 7)], pooling, True
        )
        loss.backward()
        assert math.isfinite(float(loss.detach())) and torch.isfinite(zero.grad).all()
    # Renate divided by the number of cached features (zero) and logged NaN.
    with pytest.raises(ConfigError, match="need >= 1"):
        pod_loss([], [], "spatial", True)


def test_a_model_without_intermediate_layers_is_rejected_at_begin_update(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="pod-er", **{**FAST, "hidden": ()})
    with pytest.raises(ConfigError, match="POD needs intermediate layers.*--hidden"):
        updater.update(digits_scenario.train[0])
    assert updater.updates == 0  # the failed update left nothing behind


def test_pod_hooks_activations_of_sequential_models_and_top_level_blocks_otherwise() -> None:
    mlp = MODELS.get("mlp")((1, 8, 8), 3, hidden=(16, 8))
    assert pod_layers(mlp) == [mlp[2], mlp[4]]  # Flatten, Linear, ReLU, Linear, ReLU, Linear
    cnn = MODELS.get("cnn")((1, 8, 8), 3, hidden=(4, 4))
    assert [type(m) for m in pod_layers(cnn)] == [nn.ReLU, nn.ReLU]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.drop = nn.Dropout(0.0)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.drop(self.body(x)))

    net = Net()
    assert pod_layers(net) == [net.body]
    with captured(pod_layers(net)) as features:
        net(torch.ones(3, 4))
    assert [f.shape for f in features] == [(3, 8)]


def test_pod_er_holds_features_of_replayed_rows_in_place(digits_scenario: Scenario) -> None:
    """With the POD term, the features of the first chunk's rows move less in the second update
    than without it (pod_weight=0: cross-entropy on the new rows only). The loss is divided by
    1 + pod_weight, so the run without the term takes steps that much smaller, and only the
    term itself separates the two."""
    drift = {}
    old = digits_scenario.test[0].x
    for weight in (0.0, 10.0):
        lr = FAST["lr"] / (1 + 10.0 - weight)
        options = {**FAST, "lr": lr}
        updater = Updater(method="pod-er", params={"pod_weight": weight}, **options)
        updater.update(digits_scenario.train[0])
        before = {k: v.clone() for k, v in updater.model.state_dict().items()}
        updater.update(digits_scenario.train[1])
        net = updater.model.eval()
        layers = pod_layers(net)
        with torch.no_grad(), captured(layers) as new:
            net(old)
        with torch.no_grad(), captured(layers) as previous:
            torch.func.functional_call(net, before, (old,))
        drift[weight] = float(pod_loss(new, previous, "spatial", True))
    assert drift[10.0] < 0.7 * drift[0.0]


def test_pod_er_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match="pod_pooling='max' must be one of"):
        Updater(method="pod-er", memory_size=10, params={"pod_pooling": "max"})
    with pytest.raises(ConfigError, match="pod_weight=-0.5"):
        Updater(method="pod-er", memory_size=10, params={"pod_weight": -0.5})
