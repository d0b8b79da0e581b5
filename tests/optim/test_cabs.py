"""CABS (--batch-size-schedule cabs): the rule by hand, the gradient variance against a direct
computation, growing batches as the loss falls on a noisy quadratic and on digits, epochs that
cover the chunk once, checkpoints, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ricordo import UpdateConfig, Updater
from ricordo.data import ArrayDataset, LazyDataset, Scenario
from ricordo.engine.checkpoint import EpochEnd
from ricordo.errors import ConfigError
from ricordo.optim.cabs import CABSSchedule, gradient_variance_trace


def test_rule_by_hand_two_steps() -> None:
    schedule = CABSSchedule(min_batch=4, max_batch=100, smoothing=0.5, next_batch=4)
    # xi~ = 0.5 * 0 + 0.5 * 10 = 5; L~ = 0.5 * 1 + 0.5 * 0.2 = 0.6; m = 0.1 * 5 / 0.6 = 0.83 -> 4
    assert schedule.observe(variance=10.0, loss=0.2, lr=0.1) == 4
    # xi~ = 0.5 * 5 + 0.5 * 30 = 17.5; L~ = 0.5 * 0.6 + 0.5 * 0.02 = 0.31; m = 17.5/0.31 = 56.45
    assert schedule.observe(variance=30.0, loss=0.02, lr=1.0) == 56
    assert schedule.variance == pytest.approx(17.5) and schedule.loss == pytest.approx(0.31)
    # coupled to the learning rate: the same averages at lr 0.5 give half the batch
    half = CABSSchedule(min_batch=4, max_batch=100, smoothing=0.0)
    assert half.observe(20.0, 0.1, lr=1.0) == 100  # 200, clipped to max
    assert half.observe(2.0, 0.1, lr=1.0) == 20
    assert half.observe(2.0, 0.1, lr=0.5) == 10
    assert half.observe(0.0, 0.0, lr=1.0) == 4  # no noise: the smallest batch
    restored = CABSSchedule(min_batch=4, max_batch=100, smoothing=0.5)
    restored.load_state_dict(schedule.state_dict())
    assert restored.observe(1.0, 0.1, 1.0) == schedule.observe(1.0, 0.1, 1.0)


class NoisyQuadratic(nn.Module):
    """The noisy quadratic model: row i's loss is 0.5 theta' H theta + x_i' theta, x_i ~ N(0, I),
    so its gradient is H theta + x_i: a constant noise (tr Sigma = 10) around the gradient of a
    loss whose minimum is 0 at theta = 0 (the paper's assumption L* = 0). The output is each
    row's loss."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.clone())

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (CURVATURE * self.theta**2).sum() + x @ self.theta


CURVATURE = torch.linspace(0.5, 2.0, 10)


def mean_loss(rows: Tensor, _target: Tensor) -> Tensor:
    return rows.mean()


def test_variance_trace_matches_a_direct_computation_in_chunks() -> None:
    generator = torch.Generator().manual_seed(0)
    model = NoisyQuadratic(torch.full((10,), 3.0))
    x = torch.randn(50, 10, generator=generator)
    got = gradient_variance_trace(model, x, torch.zeros(50), loss_fn=mean_loss, chunk_size=7)
    grads = CURVATURE * model.theta.detach() + x  # row i's gradient
    want = grads.var(dim=0, unbiased=False).sum().item()
    assert got == pytest.approx(want, rel=1e-5)


def test_batches_grow_as_the_loss_falls_on_a_noisy_quadratic() -> None:
    """SGD from theta = 3 in CABS's batches (the paper's smoothing 0.95): the gradient noise
    stays, the loss falls towards 0, so m = lr tr(Sigma) / L grows from the smallest batch to
    the largest."""
    generator = torch.Generator().manual_seed(0)
    model = NoisyQuadratic(torch.full((10,), 3.0))
    schedule = CABSSchedule(min_batch=4, max_batch=128, next_batch=4)
    lr, sizes, losses = 0.2, [], []
    for _ in range(220):
        x = torch.randn(schedule.next_batch, 10, generator=generator)
        sizes.append(len(x))
        variance = gradient_variance_trace(model, x, torch.zeros(len(x)), loss_fn=mean_loss)
        loss = model(x).mean()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            model.theta -= lr * model.theta.grad
        losses.append(loss.item())
        schedule.observe(variance, loss.item(), lr)
    assert losses[0] > 50 and abs(sum(losses[-20:]) / 20) < 0.1
    assert sizes[:50] == [4] * 50  # while the loss is large, the smallest batch
    assert sizes[-20:] == [128] * 20  # near the minimum, the largest
    windows = [sum(sizes[i : i + 40]) / 40 for i in range(40, 200, 40)]
    assert windows == sorted(windows) and windows[-1] > 4 * windows[0], windows


def _cabs_options(**extra: object) -> dict[str, object]:
    options = dict(
        method="finetune",
        batch_size_schedule="cabs",
        cabs_min_batch=2,
        cabs_max_batch=64,
        lr=0.5,
        hidden=(16,),
        progress=False,
        threads=1,
    )
    options.update(extra)
    return options


def test_update_records_growing_batches_that_cover_each_epoch(digits_scenario: Scenario) -> None:
    chunk = digits_scenario.train[0]
    updater = Updater(**_cabs_options(epochs=4))
    updater.update(chunk)
    train = updater.history[-1]["train"]
    sizes = train["batch_sizes"]
    assert len(sizes) == train["steps"] and sizes[0] == 2
    assert sum(sizes) == 4 * len(chunk.y)  # every epoch reads every row once
    assert all(2 <= s <= 64 for s in sizes)
    first, last = sizes[:20], sizes[-20:]
    assert sum(last) / 20 > 3 * sum(first) / 20  # the loss fell, the batches grew
    assert set(train["batch_schedule"]) == {"variance", "loss", "next_batch"}
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.9
    fixed = Updater(method="finetune", hidden=(16,), epochs=1, progress=False, threads=1)
    fixed.update(chunk)
    assert fixed.history[-1]["train"]["batch_sizes"] == []


def test_resume_continues_the_schedule(digits_scenario: Scenario, tmp_path: Path) -> None:
    chunk = digits_scenario.train[0]
    straight = Updater(**_cabs_options(epochs=2))
    straight.update(chunk)

    class Interrupt(Exception):
        pass

    def stop(end: EpochEnd) -> None:
        end.save(tmp_path / "ckpt")
        raise Interrupt

    with pytest.raises(Interrupt):
        Updater(**_cabs_options(epochs=2)).update(chunk, on_epoch_end=stop)
    resumed = Updater(**_cabs_options(epochs=2))
    resumed.update(chunk, resume_from=tmp_path / "ckpt")
    want, got = straight.history[-1]["train"], resumed.history[-1]["train"]
    assert got["batch_sizes"] == want["batch_sizes"]
    assert got["batch_schedule"] == want["batch_schedule"]
    assert straight.model is not None and resumed.model is not None
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"^--batch-size-schedule 'cabs' is invalid; expected "):
        UpdateConfig(batch_size_schedule="cabs", optimizer="adam")
    with pytest.raises(ConfigError, match=r"plain SGD \(--optimizer sgd --momentum 0\)"):
        UpdateConfig(batch_size_schedule="cabs", momentum=0.9)
    with pytest.raises(ConfigError, match=r"^--batch-size-schedule 'adaptive' is invalid"):
        UpdateConfig(batch_size_schedule="adaptive")
    with pytest.raises(ConfigError, match=r"^--cabs-max-batch 8 is invalid; expected at least"):
        UpdateConfig(cabs_min_batch=16, cabs_max_batch=8)
    with pytest.raises(ConfigError, match=r"^--cabs-smoothing 1 is invalid"):
        UpdateConfig(cabs_smoothing=1)
    with pytest.raises(ConfigError, match=r"^CABS batch sizes min=1, max=8: need 2 <="):
        CABSSchedule(min_batch=1, max_batch=8)


class Rows(Dataset):
    """A map-style Dataset of (x, y) pairs, read as a lazy chunk."""

    def __init__(self, chunk: ArrayDataset) -> None:
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.chunk)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.chunk.x[i], int(self.chunk.y[i])


def test_a_lazy_chunk_is_refused_and_nothing_changes(digits_scenario: Scenario) -> None:
    updater = Updater(**_cabs_options(epochs=1))
    with pytest.raises(ConfigError, match=r"^--batch-size-schedule cabs needs the chunk in memory"):
        updater.update(LazyDataset(Rows(digits_scenario.train[0])))
    assert updater.updates == 0
