"""optbench (issue 15 item 5): the test problems, one run's curves, the DeepOBS protocol, the
measures, the files written and the CLI's refusals."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo.optbench.measures import (
    best_index,
    convergence_performance,
    epochs_to_threshold,
    final_performance,
    speed,
    tuneability,
)
from ricordo.optbench.output import MARKER, prepare_output, read_run, run_path
from ricordo.optbench.problems import PROBLEMS, get_problem, zen_of_python
from ricordo.optbench.protocol import lr_grid, tune_setting
from ricordo.optbench.training import RunRecord, train_run


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread, as optbench runs (these models are too small to gain from more)."""
    from ricordo.engine.loop import cpu_threads

    with cpu_threads(1):
        yield


# ------------------------------------------------------------------------------------ problems


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_each_problem_builds_and_one_step_reduces_its_loss(name: str) -> None:
    problem = get_problem(name)
    train, test = problem.data()
    assert len(train) > problem.batch_size and len(test) > 0
    torch.manual_seed(0)
    model = problem.model()
    batch = train.rows(torch.arange(problem.batch_size))
    before = problem.evaluate(model, *batch)
    before.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-3 * p.grad
    after = problem.evaluate(model, *batch)
    assert after.loss.item() < before.loss.item()
    assert (before.correct is None) == (problem.metric == "loss")


def test_zen_text_is_read_from_this_py_without_importing_it() -> None:
    text = zen_of_python()
    assert text.startswith("The Zen of Python, by Tim Peters\n\nBeautiful is better than ugly.")
    assert "Namespaces are one honking great idea" in text
    train, test = get_problem("zen_char_rnn").data()
    # Inputs shifted by one character are the targets.
    assert torch.equal(train.inputs[1, :], train.targets[0, :])
    assert train.inputs.shape[1] == 32 and len(test) > 0


def test_quadratic_has_deepobs_spectrum_and_data() -> None:
    problem = get_problem("quadratic_deep")
    hessian = problem.hessian.double()
    assert torch.allclose(hessian, hessian.T)
    rng = np.random.RandomState(42)
    expected = np.sort(np.concatenate([rng.uniform(0, 1, 90), rng.uniform(30, 60, 10)]))
    assert np.allclose(np.sort(torch.linalg.eigvalsh(hessian).numpy()), expected, atol=1e-4)
    train, test = problem.data()
    assert torch.equal(
        train.inputs,
        torch.from_numpy(np.random.RandomState(42).normal(0, 0.6, (1000, 100))).float(),
    )
    assert not torch.equal(train.inputs, test.inputs)
    model = problem.model()
    assert torch.equal(model.theta.detach(), torch.ones(100))  # DeepOBS starts at ones


# ------------------------------------------------------------------------------------ one run


def test_run_is_deterministic_and_leaves_global_rng_alone() -> None:
    problem = get_problem("digits_ae")  # the seed sets both its initialisation and batch order
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = train_run(problem, "adam", 0.01, 42, 1)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_run(problem, "adam", 0.01, 42, 1)
    c = train_run(problem, "adam", 0.01, 43, 1)
    assert a.test_losses == b.test_losses and a.train_losses == b.train_losses
    assert a.train_losses[0] != c.train_losses[0]  # another initialisation
    assert len(a.curve) == 2 and a.curve[-1] < a.curve[0]  # epochs + 1 evaluations, it learns
    assert a.steps_per_epoch == 1437 // 64


def test_diverged_run_is_padded_with_the_untrained_values() -> None:
    record = train_run(get_problem("quadratic_deep"), "sgd", 100.0, 42, 5)
    assert record.diverged_at_epoch is not None
    first = record.diverged_at_epoch
    assert len(record.test_losses) == 6
    assert record.test_losses[first:] == [record.test_losses[0]] * (6 - first)
    assert all(math.isfinite(v) for v in record.test_losses)


def test_run_json_round_trip_uses_deepobs_keys(tmp_path: Path) -> None:
    from ricordo.optbench.output import write_run

    record = train_run(get_problem("digits_mlp"), "sgd", 0.1, 42, 1)
    path = write_run(tmp_path, record)
    assert path == run_path(tmp_path, record)
    assert path.relative_to(tmp_path).as_posix() == (
        "digits_mlp/sgd/num_epochs__1__batch_size__128__lr__0.1/random_seed__42.json"
    )
    data = json.loads(path.read_text())
    assert data["optimizer_hyperparams"] == {"lr": 0.1} and data["random_seed"] == 42
    assert len(data["test_accuracies"]) == 2 and data["testproblem"] == "digits_mlp"
    assert read_run(path) == record


# ------------------------------------------------------------------------------------ protocol


def _scripted(best_lr: float, metric: str, calls: list[tuple[float, int, str]]):
    """A run whose final metric is best at ``best_lr`` and worsens with the log-distance."""

    def execute(problem: str, optimizer: str, lr: float, seed: int, epochs: int, phase: str):
        calls.append((lr, seed, phase))
        distance = abs(math.log10(lr) - math.log10(best_lr))
        final = 0.9 - 0.1 * distance + 0.001 * (seed - 42)
        if metric == "loss":
            final = 1.0 - final
        start = 0.1 if metric == "accuracy" else 0.9
        if lr > 10:
            final = math.nan  # a diverged grid point never wins
        curve = list(np.linspace(start, final, epochs + 1))
        return RunRecord(
            problem, optimizer, lr, seed, epochs, 8, 4, metric,
            train_losses=curve, test_losses=curve,
            train_accuracies=curve if metric == "accuracy" else None,
            test_accuracies=curve if metric == "accuracy" else None,
            phase=phase,
        )  # fmt: skip

    return execute


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_protocol_picks_the_grid_best_and_reruns_it_over_seeds(metric: str) -> None:
    calls: list[tuple[float, int, str]] = []
    grid = lr_grid(8)
    result = tune_setting("p", "sgd", grid, [42, 43, 44], 4, _scripted(1e-2, metric, calls))
    assert result.best_lr == 1e-2
    # Every grid value with the first seed, then the best with the other seeds only.
    assert calls[: len(grid)] == [(lr, 42, "grid") for lr in grid]
    assert calls[len(grid) :] == [(1e-2, 43, "seeds"), (1e-2, 44, "seeds")]
    assert [r.seed for r in result.runs] == [42, 43, 44]
    assert result.runs[0] is result.grid[grid.index(1e-2)]
    assert result.performance.n == 3
    assert result.tuneability.good == [1e-2]


def test_deepobs_grid() -> None:
    grid = lr_grid(36)
    assert len(grid) == 36 and grid[0] == 1e-5 and grid[-1] == 100.0
    assert np.allclose(np.diff(np.log10(grid)), 0.2, atol=1e-5)
    assert lr_grid(8) == [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]


# ------------------------------------------------------------------------------------ measures


def test_measures_on_hand_made_curves() -> None:
    acc = [[0.1, 0.5, 0.8, 0.9], [0.1, 0.4, 0.6, 0.7]]
    assert epochs_to_threshold(acc[0], 0.8, True) == 2
    assert epochs_to_threshold(acc[1], 0.8, True) is None
    s = speed(acc, 0.8, True)
    assert (s.epochs, s.reached, s.n) == (2.5, 1, 2)  # a miss counts as the 3 epochs run
    losses = [[3.0, 2.0, 1.0], [3.0, 1.5, 1.4]]
    assert speed(losses, 1.5, False).epochs == 1.5
    perf = final_performance(acc)
    assert perf.mean == pytest.approx(0.8) and perf.std == pytest.approx(math.sqrt(0.02))
    assert final_performance([acc[0]]).std is None
    t = tuneability([1e-3, 1e-2, 1e-1, 1.0], [0.5, 0.91, 0.95, math.nan], 0.1, True)
    assert t.good == [1e-2, 1e-1]  # 0.81 / 0.85 >= 90 % of the best improvement; 0.4 / 0.85 not
    assert t.decades == pytest.approx(1.0)
    assert best_index([0.3, math.nan, 0.2], False) == 2
    assert best_index([0.5, 0.5], True) == 0
    finals = {"sgd": 0.8, "adam": 0.9, "m-svag": 0.6}
    assert convergence_performance(finals, True, ("sgd", "momentum", "adam")) == 0.8
    assert convergence_performance({"m-svag": 0.6, "signum": 0.7}, True, ("sgd",)) == 0.6
    assert convergence_performance({"sgd": 2.0, "adam": 1.0}, False, ("sgd", "adam")) == 2.0


# ------------------------------------------------------------------------------------ CLI


def test_cli_writes_runs_plots_and_table(cli, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["optbench", "--problems", "digits_ae,quadratic_deep", "--optimizers", "sgd,adam"]
    args += ["--seeds", "2", "--epochs", "1", "--lrs", "0.001,0.01", "--output", out]
    result = cli(*args)
    assert result.code == 0, result.err
    runs = sorted(out.rglob("random_seed__*.json"))
    assert len(runs) == 2 * 2 * 3  # 2 problems x 2 optimizers x (2 grid values + 1 seed)
    assert (out / MARKER).is_file()
    for name in ("learning-curves.png", "lr-sensitivity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tex = (out / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and "digits\\_ae" in tex and "adam" in tex
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["settings"]) == 4 and set(summary["thresholds"]) == {
        "digits_ae",
        "quadratic_deep",
    }
    assert "digits_ae" in result.out and "Tuneability" in result.out
    # A folder optbench made may be written again.
    assert prepare_output(out) == out


def test_list_shows_problems_and_optimizers(cli) -> None:
    result = cli("optbench", "--list")
    assert result.code == 0
    for name in [*PROBLEMS, "sgd", "momentum", "adam", "m-svag", "signum", "quick", "full"]:
        assert name in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--problems", "mnist"], "unknown optbench problem 'mnist'; choose from quadratic_deep,"),
        (["--optimizers", "sgd,lion"], "unknown optimizer 'lion' for optbench; choose from sgd,"),
        (["--budget", "huge"], "unknown optbench budget 'huge'; choose from quick, medium, full"),
        (["--lrs", "0.1,fast"], "--lrs '0.1,fast' must be comma-separated numbers"),
        (["--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["--threshold", "digits_mlp=0.9"], "--threshold names 'digits_mlp', which is not among"),
    ],
)
def test_refusals_are_one_line(cli, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "new"
    result = cli("optbench", "--problems", "digits_ae", "--output", out, *args)
    assert result.code == 1
    assert result.err.startswith(f"ricordo: error: {message}")
    assert len(result.err.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything is written


def test_refuses_a_folder_it_did_not_create_and_deletes_nothing(cli, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = cli("optbench", "--quick", "--output", mine)
    assert result.code == 1
    assert result.err.strip() == (
        f"ricordo: error: --output {mine} is a non-empty folder that ricordo optbench did not "
        "create; name a new or empty folder (nothing in it is replaced or deleted)"
    )
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert cli("optbench", "--quick").err.strip() == (
        "ricordo: error: ricordo optbench needs --output DIR (a new or empty folder)"
    )
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file" in cli("optbench", "--quick", "--output", afile).err
