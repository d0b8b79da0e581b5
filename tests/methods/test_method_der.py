"""der and der++: they learn, survive save/load (also in a new process, and from states older
than ``new_columns``), store logits at insertion, fill new output columns when the head grows
(clipped at each row's lowest stored logit), and reduce to simpler methods at zero weights."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_reload_continues_identically,
    assert_same_memory,
    assert_same_weights,
    make_context,
    save_and_reload,
)
from torch.nn import functional as F

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.methods import Batch, UpdateContext
from ricordo.models.head import grow_output_layer, num_outputs

METHODS = ["der", "der++"]


@pytest.mark.parametrize("method", METHODS)
def test_der_learns_the_new_chunk(method: str, digits_scenario: Scenario) -> None:
    # 5 epochs, not FAST's 3: in the first update DER also regresses onto logits stored along
    # the way, a third of them (at 3 epochs) from the first 9 steps, which at alpha=1 holds the
    # first chunk at 0.82-0.86 after 27 steps (0.90-0.94 at alpha=0.3; 0.99+ at 5 epochs).
    updater = Updater(method=method, **{**FAST, "epochs": 5})
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9  # chance: 0.5


@pytest.mark.parametrize("method", METHODS)
def test_der_reload_predicts_and_continues_identically(
    method: str, digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(method=method, **FAST)
    reloaded = save_and_reload(updater, digits_scenario, tmp_path)
    assert_reload_continues_identically(updater, reloaded, digits_scenario)
    assert set(updater.memory.fields) == {"x", "y", "logits", "width"}


def test_der_stores_the_logits_of_the_step_that_inserted_a_row(digits_scenario: Scenario) -> None:
    """Right after each step, the rows it stored hold the pre-step model's logits of those x,
    in a field as wide as the head, with ``width`` = the number of outputs at insertion."""
    updater = Updater(method="der", **FAST)
    method = updater.method
    assert method.memory is not None
    memory = method.memory
    checked: list[int] = []
    pre_step: dict[str, torch.nn.Module] = {}
    slots: list[torch.Tensor] = []
    loss, after_step, add = method.loss, method.after_step, memory.add

    def spy_loss(batch: Batch, ctx: UpdateContext) -> torch.Tensor:
        pre_step["model"] = copy.deepcopy(ctx.model)
        return loss(batch, ctx)

    def spy_add(rows: dict[str, torch.Tensor]) -> torch.Tensor:
        slots.append(add(rows))
        return slots[-1]

    def spy_after_step(batch: Batch, ctx: UpdateContext) -> None:
        after_step(batch, ctx)
        where = slots[-1]
        kept = where >= 0
        with torch.no_grad():
            expected = pre_step["model"](batch.x[kept])
        stored = memory.get(where[kept])
        k = expected.shape[1]
        torch.testing.assert_close(stored["logits"][:, :k], expected, rtol=1e-5, atol=1e-5)
        assert not stored["logits"][:, k:].any()
        assert (stored["width"] == k).all()
        checked.append(int(kept.sum()))

    method.loss, method.after_step, memory.add = spy_loss, spy_after_step, spy_add  # type: ignore[method-assign]
    updater.update(digits_scenario.train[0])
    assert len(checked) == updater.history[-1]["train"]["steps"] and sum(checked) > 100
    # As wide as the head, not max_classes: the state grows with the classes seen.
    assert memory.field_spec("logits")[0] == (num_outputs(updater.model),)


@pytest.mark.parametrize("new_columns", ["clip", "current"])
def test_der_gives_old_rows_targets_for_columns_added_later(
    new_columns: str, digits_scenario: Scenario
) -> None:
    """When the head grows, stored rows keep their logits and get targets for the new columns:
    the columns' current values, clipped from above by the row's lowest stored logit ("clip",
    the default: Mammoth's heads exist from the start and push unseen classes down) or as they
    are ("current", the previous rule)."""
    updater = Updater(method="der", params={"new_columns": new_columns}, **FAST)
    updater.update(digits_scenario.train[0])
    assert updater.memory is not None
    before = {k: v.clone() for k, v in updater.memory.get().items()}
    k0 = int(before["width"][0])
    assert (before["width"] == k0).all() and k0 == max(digits_scenario.chunk_classes[0]) + 1
    seen: dict[str, object] = {}
    begin = updater.method.begin_update

    def spy_begin(data, ctx):  # type: ignore[no-untyped-def]
        begin(data, ctx)
        with torch.no_grad():
            seen["logits"] = ctx.model(before["x"])
        seen["rows"] = {k: v.clone() for k, v in updater.memory.get().items()}

    updater.method.begin_update = spy_begin  # type: ignore[method-assign]
    updater.update(digits_scenario.train[1])
    rows, logits = seen["rows"], seen["logits"]
    k1 = logits.shape[1]
    assert k1 > k0
    assert torch.equal(rows["x"], before["x"])
    assert (rows["width"] == k1).all()
    assert torch.equal(rows["logits"][:, :k0], before["logits"][:, :k0])
    current = logits[:, k0:]
    lowest = before["logits"][:, :k0].amin(1, keepdim=True)
    expected = torch.minimum(current, lowest) if new_columns == "clip" else current
    torch.testing.assert_close(rows["logits"][:, k0:k1], expected, rtol=1e-5, atol=1e-5)
    assert (current > lowest).any()  # the two rules differ on these rows
    assert not rows["logits"][:, k1:].any()


def test_der_clip_uses_only_each_rows_valid_stored_columns(digits_scenario: Scenario) -> None:
    """The lowest stored logit of a row ignores its zero padding and the columns it lacks; a new
    column already below it keeps its current value."""
    updater = Updater(method="der", **FAST)
    updater.update(digits_scenario.train[0])
    memory, model = updater.memory, updater.model
    assert memory is not None and model is not None
    n, k0 = len(memory), num_outputs(model)
    everything = torch.arange(n)
    # Half the rows were stored one column narrower; stored logits are +5 except one +1 (high
    # rows) or -9 (low rows) in column 0, and a -50 in the last column that narrow rows lack.
    width = torch.full((n,), k0)
    width[::2] = k0 - 1
    logits = torch.zeros(n, memory.field_spec("logits")[0][0])
    logits[:, :k0] = 5.0
    logits[:, 0] = torch.where(torch.arange(n) % 4 < 2, 1.0, -9.0)
    logits[::2, k0 - 1] = -50.0  # invalid for the narrow rows: must not count
    logits[1::2, k0 - 1] = 5.0
    memory.update_field("logits", everything, logits)
    memory.update_field("width", everything, width)
    k1 = k0 + 2
    grow_output_layer(model, k1, torch.Generator().manual_seed(0))
    ctx = make_context(updater, 1)
    updater.method.begin_update(digits_scenario.train[1], ctx)
    rows = memory.get()
    with torch.no_grad():
        current = model(rows["x"])
    lowest = logits[:, :1]
    assert (rows["width"] == k1).all()
    torch.testing.assert_close(
        rows["logits"][:, k0:k1], torch.minimum(current[:, k0:k1], lowest), rtol=1e-5, atol=1e-5
    )
    # The narrow rows' missing column is new too: clipped at their lowest valid logit.
    torch.testing.assert_close(
        rows["logits"][::2, k0 - 1],
        torch.minimum(current[::2, k0 - 1], lowest[::2, 0]),
        rtol=1e-5,
        atol=1e-5,
    )
    assert torch.equal(rows["logits"][1::2, : k0 - 1], logits[1::2, : k0 - 1])
    assert torch.equal(rows["logits"][1::2, k0 - 1], logits[1::2, k0 - 1])
    # Both sides of the clip occur: fresh columns (~0) lie below +1 and above -9.
    high = torch.arange(n) % 4 < 2
    assert torch.equal(
        rows["logits"][~high, k0:k1], torch.full_like(rows["logits"][~high, k0:k1], -9)
    )
    assert (rows["logits"][high, k0:k1] < 1.0).all()
    assert (rows["logits"][high, k0:k1] == current[high, k0:k1]).any()


def test_der_defaults_keep_old_classes_class_incremental(digits_scenario: Scenario) -> None:
    """With its defaults (alpha=1, clipped new-column targets) DER keeps most of every chunk;
    the previous defaults (alpha=0.3, unclipped) lost a third of it in this short setting."""
    final = {}
    for name, params in (("new", {}), ("old", {"alpha": 0.3, "new_columns": "current"})):
        updater = Updater(
            method="der",
            params=params,
            epochs=10,
            lr=0.1,
            memory_size=200,
            hidden=(64,),
            progress=False,
        )
        for chunk in digits_scenario.train:
            updater.update(chunk)
        accuracies = [updater.evaluate(test)["accuracy"] for test in digits_scenario.test]
        final[name] = sum(accuracies) / len(accuracies)
        assert min(accuracies) > (0.6 if name == "new" else 0.0)
    assert final["new"] > 0.78  # measured 0.86; finetune: 0.19
    assert final["new"] > final["old"] + 0.1  # measured 0.64


def test_der_loads_states_saved_before_new_columns_existed(
    digits_scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state whose params lack ``new_columns`` (older versions) loads, keeps its alpha, and
    continues with the default rule."""
    import ricordo.updater

    def without_new_columns(params: object) -> dict[str, object]:
        values = dataclasses.asdict(params)  # type: ignore[call-overload]
        values.pop("new_columns", None)
        return values

    with monkeypatch.context() as patch:
        patch.setattr(ricordo.updater, "params_to_dict", without_new_columns)
        old = Updater(method="der", params={"alpha": 0.3}, **FAST)
        old.update(digits_scenario.train[0])
        old.save(str(tmp_path / "old"))
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert manifest["meta"]["params"] == {"alpha": 0.3, "memory_batch_size": None}
    loaded = Updater.load(str(tmp_path / "old"))
    assert loaded.params.alpha == 0.3 and loaded.params.new_columns == "clip"
    x = digits_scenario.test_all().x
    assert torch.equal(loaded.predict_logits(x), old.predict_logits(x))
    loaded.update(digits_scenario.train[1])
    assert loaded.evaluate(digits_scenario.test[1])["accuracy"] > 0.9


def test_der_term_is_zero_when_the_model_has_not_changed_since_insertion(
    digits_scenario: Scenario,
) -> None:
    updater = Updater(method="der", params={"alpha": 1.0}, **FAST)
    updater.update(digits_scenario.train[0])
    memory = updater.memory
    assert memory is not None and updater.model is not None
    rows = memory.get()
    with torch.no_grad():
        logits = updater.model(rows["x"])
    everything = torch.arange(len(memory))
    padded = torch.zeros_like(rows["logits"])
    padded[:, : logits.shape[1]] = logits
    batch = Batch(digits_scenario.train[0].x[:32], digits_scenario.train[0].y[:32])
    ctx = make_context(updater, 1)
    memory.update_field("logits", everything, padded)
    state = memory.generator.get_state()
    der = updater.method.loss(batch, ctx).detach()
    ce = F.cross_entropy(updater.model(batch.x), batch.y).detach()
    torch.testing.assert_close(der, ce, rtol=1e-6, atol=1e-6)
    # The same rows with perturbed targets do give a positive term.
    memory.update_field("logits", everything, padded + 1.0)
    memory.generator.set_state(state)
    perturbed = updater.method.loss(batch, ctx).detach()
    assert float(perturbed) == pytest.approx(float(ce) + 1.0, rel=1e-5)


def test_der_with_alpha_zero_trains_like_finetune(digits_scenario: Scenario) -> None:
    models = []
    for method, params in (("der", {"alpha": 0.0}), ("finetune", {})):
        updater = Updater(method=method, params=params, **FAST)
        for chunk in digits_scenario.train[:2]:
            updater.update(chunk)
        models.append(updater.model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_derpp_with_beta_zero_is_der(digits_scenario: Scenario) -> None:
    updaters = [
        Updater(method="der++", params={"alpha": 0.3, "beta": 0.0}, **FAST),
        Updater(method="der", params={"alpha": 0.3}, **FAST),
    ]
    for updater in updaters:
        for chunk in digits_scenario.train[:3]:
            updater.update(chunk)
    pp, der = updaters
    assert_same_weights(pp, der)
    assert_same_memory(pp, der)
    # beta > 0 changes training (a second replayed batch with its cross-entropy).
    other = Updater(method="der++", params={"alpha": 0.3, "beta": 0.5}, **FAST)
    for chunk in digits_scenario.train[:3]:
        other.update(chunk)
    assert not torch.equal(
        other.predict_logits(digits_scenario.test_all().x),
        der.predict_logits(digits_scenario.test_all().x),
    )


def test_derpp_beats_finetune_by_a_wide_margin_class_incremental(
    digits_scenario: Scenario,
) -> None:
    final = {}
    for method in ("finetune", "der++"):
        updater = Updater(
            method=method, epochs=5, lr=0.1, memory_size=200, hidden=(64,), progress=False
        )
        for chunk in digits_scenario.train:
            updater.update(chunk)
        accuracies = [updater.evaluate(test)["accuracy"] for test in digits_scenario.test]
        final[method] = sum(accuracies) / len(accuracies)
    assert final["finetune"] < 0.25  # class-IL: finetune knows only the last chunk
    assert final["der++"] > final["finetune"] + 0.3


def test_der_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        Updater(method="der", params={"alpha": -1})
    with pytest.raises(ConfigError, match="new_columns='zero' must be one of"):
        Updater(method="der", params={"new_columns": "zero"})
    with pytest.raises(ConfigError, match="new_columns"):
        Updater(method="der++", params={"new_columns": ""})
    with pytest.raises(ConfigError, match="beta"):
        Updater(method="der++", params={"beta": float("nan")})
    with pytest.raises(ConfigError, match="memory_batch_size"):
        Updater(method="der++", params={"memory_batch_size": 0})
    with pytest.raises(ConfigError, match="--memory-size"):
        Updater(method="der++", memory_size=0)
    with pytest.raises(ConfigError, match="no parameter.*beta"):
        Updater(method="der", params={"beta": 0.5})
