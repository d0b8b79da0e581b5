"""--selective-backprop: the method's loss and the gradients see exactly ceil(F * B) of each new
batch; loss keeps the highest-loss rows, gradient-matching a weighted subset whose last-layer
gradient is closer to the batch mean than random subsets, random is seeded; with er and finetune;
one-line errors; the counts in the history and the update line."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch import nn
from torch.nn import functional as F

from ricordo import Updater
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.engine.selective import (
    SelectiveBackprop,
    gradient_matching,
    kept_count,
    omp_nnls,
    top_loss,
)
from ricordo.errors import ConfigError
from ricordo.methods.base import Batch, Method, UpdateContext
from ricordo.optim.per_example import last_layer_grads

FAST = dict(epochs=1, lr=0.1, memory_size=30, progress=False, hidden=(32,), num_classes=10)
LEARN = {**FAST, "epochs": 3}  # 10 steps of one epoch are too few to learn a chunk
STRATEGIES = ("loss", "gradient-matching", "random")


def test_kept_rows_are_the_ceiling_of_the_fraction_and_at_least_one() -> None:
    assert [kept_count(32, f) for f in (0.25, 0.5, 1.0)] == [8, 16, 32]
    assert kept_count(10, 0.25) == 3  # 2.5 rounds up
    assert kept_count(10, 0.3) == 3  # 0.3 * 10 = 3.0000000000000004 in floating point: still 3
    assert kept_count(3, 0.1) == 1


def record_steps(monkeypatch: pytest.MonkeyPatch, method: type[Method]) -> dict[str, list]:
    """Rows that reach each step's loss, forwarded with gradients, and offered to after_step."""
    seen: dict[str, list] = {"loss": [], "after": [], "index": [], "grad_rows": []}
    loss, after = method.loss, method.after_step

    def spy_loss(self: Method, batch: Batch, ctx: UpdateContext) -> torch.Tensor:
        seen["loss"].append(len(batch.y))
        seen["index"].append(batch.index.tolist())
        return loss(self, batch, ctx)

    def spy_after(self: Method, batch: Batch, ctx: UpdateContext) -> None:
        seen["after"].append(len(batch.y))
        after(self, batch, ctx)

    monkeypatch.setattr(method, "loss", spy_loss)
    monkeypatch.setattr(method, "after_step", spy_after)
    return seen


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_finetune_trains_on_exactly_the_kept_rows(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    chunk = digits_scenario.train[0]  # 290 rows: 9 batches of 32 and one of 2
    updater = Updater(method="finetune", selective_backprop=strategy, keep_fraction=0.25, **FAST)
    seen = record_steps(monkeypatch, type(updater.method))
    grad_rows: list[int] = []
    updater.initialize(chunk)  # builds the model
    updater.model.register_forward_hook(
        lambda _m, x, _o: grad_rows.append(len(x[0])) if torch.is_grad_enabled() else None
    )
    record = updater.update(chunk)
    full = [32] * (len(chunk) // 32) + [len(chunk) % 32]
    kept = [math.ceil(0.25 * rows) for rows in full]
    assert seen["loss"] == kept == [8] * 9 + [1]
    assert grad_rows == kept  # the only forward passes that build a graph
    assert seen["after"] == full  # memories see every row
    counts = record["train"]["selective_backprop"]
    forwarded = 0 if strategy == "random" else len(chunk)
    weight_sum = counts.pop("mean_weight_sum")
    assert (weight_sum is None) == (strategy != "gradient-matching")
    if weight_sum is not None:
        assert 0 < weight_sum <= 1.5
    assert counts == {
        "strategy": strategy,
        "keep_fraction": 0.25,
        "steps": len(full),
        "seen_rows": len(chunk),
        "forward_only_rows": forwarded,
        "kept_rows": sum(kept),
        "estimated_saved_flops_fraction": round(
            1 - (forwarded + 3 * sum(kept)) / (3 * len(chunk)), 4
        ),
    }


def test_er_replays_its_memory_beside_the_kept_rows(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    updater = Updater(
        method="er", selective_backprop="gradient-matching", keep_fraction=0.5, **LEARN
    )
    updater.update(digits_scenario.train[0])
    seen: list[tuple[int, int]] = []
    replay = type(updater.method).replay_batch

    def spy(self: Method, batch: Batch, ctx: UpdateContext) -> Batch | None:
        rows = replay(self, batch, ctx)  # type: ignore[arg-type]
        seen.append((len(batch.y), len(rows.y)))
        assert batch.weight is not None and len(batch.weight) == len(batch.y)
        return rows

    monkeypatch.setattr(type(updater.method), "replay_batch", spy)
    updater.update(digits_scenario.train[1])
    assert seen[0] == (16, 30)  # half of the new batch, a whole replayed batch (the memory)
    accuracy = [updater.evaluate(digits_scenario.test[k])["accuracy"] for k in (0, 1)]
    assert min(accuracy) > 0.6, accuracy  # both chunks well above chance (0.1)


@pytest.mark.parametrize("method", ["finetune", "er"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_learns_the_chunk_with_each_strategy(
    digits_scenario: Scenario, method: str, strategy: str
) -> None:
    updater = Updater(method=method, selective_backprop=strategy, keep_fraction=0.5, **LEARN)
    updater.update(digits_scenario.train[0])
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.8  # chance: 0.5


def test_loss_strategy_keeps_the_highest_loss_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(20, 6, generator=gen), torch.randint(0, 4, (20,), generator=gen)
    ctx = context(model, gen)
    selector = SelectiveBackprop("loss", 0.25)
    batch = Batch(x, y, torch.arange(20))
    kept, raw = selector.subset(batch, batch, ctx)
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
    highest = set(torch.argsort(losses, descending=True)[:5].tolist())
    assert set(kept.index.tolist()) == highest
    assert torch.equal(kept.x, x[kept.index]) and torch.equal(raw.y, y[kept.index])
    assert kept.weight is None
    assert losses[kept.index].min() >= losses[[i for i in range(20) if i not in highest]].max()
    assert set(top_loss(model(x), y, 5).rows.tolist()) == highest


def context(model: nn.Module, generator: torch.Generator) -> UpdateContext:
    return UpdateContext(
        model=model,
        config=UpdateConfig(progress=False),
        update_index=0,
        device=torch.device("cpu"),
        generator=generator,
        seen_classes=[0, 1, 2, 3],
        chunk_classes=[0, 1, 2, 3],
    )


def test_gradient_matching_is_closer_to_the_batch_mean_than_random_subsets() -> None:
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(24, 5, generator=gen)
    logits = torch.randn(24, 3, generator=gen)
    y = torch.randint(0, 3, (24,), generator=gen)
    grads = last_layer_grads(features.double(), logits.double(), y)  # (24, 3 * 6)
    target = grads.mean(0)
    k = 6
    chosen = gradient_matching(features, logits, y, k)
    assert len(chosen.rows) == k == len(set(chosen.rows.tolist()))
    w = chosen.weight.double() / k  # the loss weighs row j by k * w_j in a mean over k rows
    matched = (w @ grads[chosen.rows] - target).norm()
    # Random subsets, weighted uniformly (what --selective-backprop random trains on).
    errors = [
        (grads[torch.randperm(24, generator=gen)[:k]].mean(0) - target).norm() for _ in range(200)
    ]
    assert matched < min(errors)
    assert matched < 0.5 * float(np.median(errors))
    # The weights are the non-negative least-squares fit on the chosen rows (brute force).
    best, _ = nnls(grads[chosen.rows].T.numpy(), target.numpy())
    assert np.allclose(w.numpy(), best, atol=1e-6)


def test_omp_adds_the_row_most_correlated_with_the_residual() -> None:
    # Orthogonal unit gradients: the mean is matched exactly by every row, weight 1/n each, in
    # the order of their correlation with it (all equal here: the lowest index wins the tie).
    grads = torch.eye(4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]
    target = grads.mean(0)
    rows, weights = omp_nnls(grads @ grads.T, grads @ target, 2)
    assert rows.tolist() == [3, 2]  # <g_i, mean> = i^2 / 4: largest first
    assert torch.allclose(weights, torch.tensor([0.25, 0.25], dtype=torch.float64))


def test_random_strategy_draws_from_the_seed(
    digits_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kept(seed: int) -> list[list[int]]:
        updater = Updater(
            method="finetune", selective_backprop="random", keep_fraction=0.5, seed=seed, **FAST
        )
        seen = record_steps(monkeypatch, type(updater.method))
        updater.update(digits_scenario.train[0])
        monkeypatch.undo()
        return seen["index"]

    first = kept(0)
    assert first == kept(0)
    assert first != kept(1)


def test_the_selection_forward_leaves_batchnorm_statistics_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = Batch(torch.randn(16, 4, generator=gen) + 3, torch.randint(0, 3, (16,), generator=gen))
    SelectiveBackprop("gradient-matching", 0.5).subset(batch, batch, context(model, gen))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"selective_backprop": "top-loss"},
            "--selective-backprop 'top-loss' is invalid; expected loss, gradient-matching or "
            "random (or leave it out to train on every row)",
        ),
        (
            {"selective_backprop": "loss", "keep_fraction": 0.0},
            "--keep-fraction 0.0 is invalid; expected a share of each batch in (0, 1], such as 0.5",
        ),
        (
            {"selective_backprop": "loss", "keep_fraction": 1.5},
            "--keep-fraction 1.5 is invalid; expected a share of each batch in (0, 1], such as 0.5",
        ),
        (
            {"keep_fraction": 0.25},
            "--keep-fraction 0.25 is invalid; expected --selective-backprop loss, "
            "gradient-matching or random as well (it chooses the rows kept)",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        UpdateConfig(**options)
    assert str(error.value) == message


def test_gradient_matching_needs_a_loss_that_reads_row_weights() -> None:
    with pytest.raises(ConfigError) as error:
        Updater(method="der", selective_backprop="gradient-matching", **FAST)
    text = str(error.value)
    assert text.startswith(
        "--selective-backprop gradient-matching weights the rows it keeps, but method 'der''s "
        "loss does not read row weights; use it with a method whose loss does ("
    )
    assert "er, " in text and "finetune" in text and "der," not in text
    assert text.endswith(") or choose --selective-backprop loss or random")
    Updater(method="der", selective_backprop="loss", **FAST)  # the unweighted ones run


def test_cli_update_line_reports_the_rows(
    digits_scenario: Scenario,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ricordo.cli import main

    chunk = digits_scenario.train[0]
    data = tmp_path / "chunk.npz"
    np.savez(data, x=chunk.x.numpy(), y=chunk.y.numpy())
    argv = ["ricordo", "update", "--data", data, "--method", "finetune", "--epochs", "1"]
    argv += ["--hidden", "16", "--no-progress", "--next-state"]
    monkeypatch.setattr(
        sys, "argv", [*map(str, argv), tmp_path / "s1", "--selective-backprop", "loss"]
    )
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert len(chunk) == 290  # 9 batches of 32 (16 kept each) and one of 2 (1 kept)
    assert (
        "selective backprop loss: 145 of 290 new rows back-propagated, 290 forwarded to choose "
        "them (~17% of their training compute saved) ->" in out
    ), out
    monkeypatch.setattr(sys, "argv", [*map(str, argv), tmp_path / "s2", "--keep-fraction", "2"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ricordo: error: --keep-fraction 2.0 is invalid; expected a share of each batch in "
        "(0, 1], such as 0.5"
    ]


def test_a_resumed_update_continues_the_counts(digits_scenario: Scenario, tmp_path: Path) -> None:
    from ricordo.engine.checkpoint import EpochEnd

    chunk = digits_scenario.train[0]
    options = {**FAST, "epochs": 2, "selective_backprop": "gradient-matching"}
    straight = Updater(method="finetune", **options)
    straight.update(chunk)

    class Interrupt(Exception):
        pass

    def stop(end: EpochEnd) -> None:
        end.save(tmp_path / "ckpt")
        raise Interrupt

    with pytest.raises(Interrupt):
        Updater(method="finetune", **options).update(chunk, on_epoch_end=stop)
    resumed = Updater(method="finetune", **options)
    resumed.update(chunk, resume_from=tmp_path / "ckpt")
    want = straight.history[-1]["train"]["selective_backprop"]
    assert resumed.history[-1]["train"]["selective_backprop"] == want
    assert want["seen_rows"] == 2 * len(chunk)
