"""gradient-matching memory policy: the matching objective, brute-force checks, budgets, ER."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ricordo import Updater
from ricordo.config import UpdateConfig
from ricordo.data import Scenario
from ricordo.errors import ConfigError
from ricordo.memory import POLICIES, GradientMatchingPolicy, TensorMemory
from ricordo.memory.gradient_matching import (
    GradientMatchingOptions,
    InitialisationEmbedding,
    count_sketch,
    gradient_features,
    matching_objective,
    reinitialise,
)
from ricordo.memory.policies import balanced_quota
from ricordo.optim import per_example_grads

FAST = dict(epochs=2, lr=0.1, memory_size=100, progress=False, hidden=(64,))


def _digits_rows(digits_scenario: Scenario, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = digits_scenario.train[0]
    return chunk.x[:n], chunk.y[:n]


def _mlp(classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))


def test_objective_decreases_as_the_memory_grows(digits_scenario: Scenario) -> None:
    x, y = _digits_rows(digits_scenario, 200)
    options = GradientMatchingOptions(initialisations=4, balanced=False)
    phi = InitialisationEmbedding(_mlp(), options, seed=0, device=torch.device("cpu"))(x, y)
    assert phi.shape == (200, 4 * 10 * 17)  # S blocks of C * (D + 1), no sketch needed
    policy = GradientMatchingPolicy(80)
    policy.configure({"balanced": False})
    order = policy.select(phi, y)
    objective = [matching_objective(phi, order[:k]) for k in (1, 5, 20, 80)]
    assert all(a > b for a, b in itertools.pairwise(objective)), objective
    # Better than the best of 50 random subsets of the same size.
    gen = torch.Generator().manual_seed(0)
    randoms = [matching_objective(phi, torch.randperm(200, generator=gen)[:20]) for _ in range(50)]
    assert objective[2] < min(randoms), (objective[2], min(randoms))


def test_one_initialisation_linear_model_greedy_steps_match_brute_force() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=gen)
    torch.manual_seed(5)
    linear = nn.Sequential(nn.Linear(4, 3)).double()
    options = GradientMatchingOptions(initialisations=1, projection=0, balanced=False)
    phi = gradient_features([linear], x, y, options, sketch_seeds=[0]).double()
    # With S = 1 and no sketch, phi is the exact per-example gradient (weight then bias blocks
    # interleaved per class; compare inner products, which do not depend on the layout).
    exact = per_example_grads(linear, F.cross_entropy, x, y)
    flat = torch.cat([exact["0.weight"].flatten(1), exact["0.bias"]], dim=1)
    torch.testing.assert_close(phi @ phi.T, (flat @ flat.T).float().double(), rtol=1e-5, atol=1e-6)
    # layers=all (vmap) gives the same features as the closed form for a lone Linear.
    vmapped = gradient_features(
        [linear], x, y, GradientMatchingOptions(1, "all", 0, 0, False), sketch_seeds=[0]
    ).double()
    torch.testing.assert_close(vmapped @ vmapped.T, phi @ phi.T, rtol=1e-5, atol=1e-6)
    policy = GradientMatchingPolicy(5)
    policy.configure({"balanced": False})
    order = policy.select(phi, y).tolist()
    # The first pick is the best single row of all (brute force over the pool)...
    singles = [matching_objective(phi, torch.tensor([j])) for j in range(9)]
    assert order[0] == min(range(9), key=lambda j: singles[j])
    # ... and each later pick the row that, added, minimises J(C) (ties: lowest index).
    for k in range(1, 5):
        chosen = order[:k]
        scores = {
            j: matching_objective(phi, torch.tensor([*chosen, j]))
            for j in range(9)
            if j not in chosen
        }
        assert order[k] == min(scores, key=lambda j: (round(scores[j], 12), j))
    # Greedy after 2 picks is within the best pair's objective (brute force over all pairs) x 2.
    best_pair = min(
        matching_objective(phi, torch.tensor(p)) for p in itertools.combinations(range(9), 2)
    )
    assert matching_objective(phi, torch.tensor(order[:2])) <= 2 * best_pair + 1e-12


def test_class_budgets_and_pool_subsample_keep_small_classes() -> None:
    labels = torch.tensor([0] * 3 + [1] * 50 + [2] * 40)
    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(len(labels), 6, generator=gen)
    policy = GradientMatchingPolicy(30)
    picks = policy.select(phi, labels)
    counts = torch.bincount(labels[picks], minlength=3).tolist()
    assert counts == [3, 14, 13] == [balanced_quota({0: 3, 1: 50, 2: 40}, 30)[c] for c in range(3)]
    assert picks.unique().numel() == 30
    policy.configure({"pool": 20})
    rows = policy.subsample(labels, torch.Generator().manual_seed(1))
    assert rows is not None and torch.equal(rows, rows.sort().values)
    assert torch.bincount(labels[rows], minlength=3).tolist() == [3, 9, 8]  # all 3 of class 0
    policy.configure({"pool": 0})
    assert policy.subsample(labels, torch.Generator()) is None


def test_embedding_ignores_the_trained_weights_and_leaves_them_alone(
    digits_scenario: Scenario,
) -> None:
    x, y = _digits_rows(digits_scenario, 20)
    a, b = _mlp(), _mlp()
    before = [p.clone() for p in a.parameters()]
    options = GradientMatchingOptions(initialisations=2)
    phi_a = InitialisationEmbedding(a, options, seed=7, device=torch.device("cpu"))(x, y)
    phi_b = InitialisationEmbedding(b, options, seed=7, device=torch.device("cpu"))(x, y)
    assert torch.equal(phi_a, phi_b)  # same architecture and seeds: same features
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before, strict=True))
    other = InitialisationEmbedding(a, options, seed=8, device=torch.device("cpu"))(x, y)
    assert not torch.allclose(phi_a, other)
    reinitialise(a, 3)
    first = [p.clone() for p in a.parameters()]
    reinitialise(a, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), first, strict=True))


def test_count_sketch_preserves_inner_products_in_expectation() -> None:
    gen = torch.Generator().manual_seed(0)
    g = [
        torch.randn(3, 40, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 30, generator=gen, dtype=torch.float64),
    ]
    flat = torch.cat([p.flatten(1) for p in g], dim=1)
    exact = flat @ flat.T
    sketches = [count_sketch(g, 16, seed) for seed in range(400)]
    mean = torch.stack([s @ s.T for s in sketches]).mean(0)
    assert sketches[0].shape == (3, 16)
    torch.testing.assert_close(mean, exact, rtol=0.0, atol=0.1 * float(exact.diagonal().mean()))
    # Large gradients get sketched to `projection` coordinates per initialisation.
    options = GradientMatchingOptions(initialisations=2, projection=16)
    phi = gradient_features(
        [_mlp(), _mlp()], torch.randn(4, 64), torch.tensor([0, 1, 2, 3]), options, [1, 2]
    )
    assert phi.shape == (4, 32)


def test_options_are_validated_in_one_line() -> None:
    with pytest.raises(
        ConfigError, match="memory policy 'gradient-matching' has no option 'layer';"
    ):
        UpdateConfig(memory_policy="gradient-matching", memory_options={"layer": "last"})
    with pytest.raises(ConfigError, match="option layers must be 'last' or 'all', got 'first'"):
        UpdateConfig(memory_policy="gradient-matching", memory_options={"layers": "first"})
    with pytest.raises(ConfigError, match="option initialisations must be an integer >= 1, got 0"):
        UpdateConfig(memory_policy="gradient-matching", memory_options={"initialisations": 0})
    with pytest.raises(ConfigError, match="memory policy 'reservoir' takes no --memory-option"):
        UpdateConfig(memory_options={"pool": 10})
    assert "gradient-matching" in POLICIES.names()


def test_er_learns_and_a_saved_memory_round_trips(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    updater = Updater(
        method="er",
        memory_policy="gradient-matching",
        memory_options={"initialisations": 3, "pool": 200},
        **FAST,
    )
    updater.update(digits_scenario.train[0])
    updater.update(digits_scenario.train[1])
    memory = updater.memory
    assert memory is not None and len(memory) == 100
    assert torch.bincount(memory.get()["y"]).tolist().count(25) == 4  # 4 classes, 25 each
    assert updater.evaluate(digits_scenario.test[1])["accuracy"] > 0.8  # chance: 0.5
    assert updater.evaluate(digits_scenario.test[0])["accuracy"] > 0.8  # replay keeps chunk 0
    updater.save(str(tmp_path / "v1"))
    reloaded = Updater.load(str(tmp_path / "v1"))
    assert reloaded.memory is not None and reloaded.memory.policy_name == "gradient-matching"
    for name, value in memory.get().items():
        assert torch.equal(reloaded.memory.get()[name], value), name
    assert torch.equal(reloaded.memory.generator.get_state(), memory.generator.get_state())
    updater.update(digits_scenario.train[2])
    reloaded.update(digits_scenario.train[2])
    for name, value in updater.memory.get().items():
        assert torch.equal(reloaded.memory.get()[name], value), name


def test_memory_reselect_embeds_only_the_subsample() -> None:
    memory = TensorMemory(4, "gradient-matching")
    memory.policy.configure({"pool": 6, "balanced": False})
    seen: list[int] = []

    def embed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x.float()

    x = torch.arange(20, dtype=torch.float32)[:, None]
    picks = memory.reselect(embed, {"x": x, "y": torch.zeros(20, dtype=torch.long)}, batch_size=4)
    assert sum(seen) == 6 and len(memory) == 4 and picks.numel() == 4


def test_cli_memory_option_reaches_the_policy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from ricordo.cli import main

    argv = ["ricordo", "benchmark", "--methods", "er", "--output", str(tmp_path / "out")]
    argv += ["--memory-policy", "gradient-matching", "--memory-option", "layers=first"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "ricordo: error: gradient-matching option layers must be 'last' or 'all', got 'first'"
    )
    assert not (tmp_path / "out").exists()
