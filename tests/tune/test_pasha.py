"""PASHA's rules on scripted learning curves (no Ray), and PASHAScheduler under Ray Tune."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ricordo.errors import ConfigError
from ricordo.tune.pasha import PASHA, Decision, noisy_pair_distances, rung_levels

Curve = Callable[[int], float]


def run_one_worker(pasha: PASHA, curves: dict[str, Curve]) -> dict[str, list[int]]:
    """ASHA's free worker, one at a time: promote a paused trial if one is promotable, else start
    the next new trial; stop when neither is possible. Returns each trial's epochs trained."""
    new = list(curves)
    trained: dict[str, list[int]] = {}
    while True:
        promotion = pasha.promote()
        if promotion is not None:
            trial, epoch = promotion.trial_id, promotion.resume_from + 1
        elif new:
            trial, epoch = new.pop(0), 1
            pasha.add_trial(trial)
        else:
            return trained
        while True:
            trained.setdefault(trial, []).append(epoch)
            decision = pasha.report(trial, epoch, curves[trial](epoch))
            if decision is not Decision.CONTINUE:
                break
            epoch += 1


def parallel(offsets: list[float]) -> dict[str, Curve]:
    """Curves that never cross: trial i improves at the same rate from its own offset."""
    return {f"t{i}": (lambda e, o=o: o + 0.01 * e) for i, o in enumerate(offsets)}


def test_rung_levels_are_r_min_times_eta_powers_below_max_t() -> None:
    assert rung_levels(27) == [1, 3, 9]
    assert rung_levels(28) == [1, 3, 9, 27]
    assert rung_levels(20, r_min=2, eta=2) == [2, 4, 8, 16]
    assert rung_levels(1) == []


def test_max_resource_starts_at_the_second_rung() -> None:
    assert PASHA(max_t=27).current_max_t == 3
    assert PASHA(max_t=100, r_min=2, eta=4).current_max_t == 8
    assert PASHA(max_t=3).current_max_t == 3  # a single rung (1): max_t, i.e. ASHA


def test_stable_ranking_keeps_the_max_resource() -> None:
    pasha = PASHA(max_t=27, mode="max")
    trained = run_one_worker(pasha, parallel([0.1 * i for i in range(9)]))
    assert pasha.history == [3]
    assert max(max(epochs) for epochs in trained.values()) == 3
    # Promoted trials resume where they paused: epochs 1, 2, 3 once each, never from scratch.
    assert trained["t8"] == [1, 2, 3]
    assert pasha.restarts_from_scratch == 0
    assert len(pasha.rung(3)) >= 2


def test_unstable_ranking_grows_the_max_resource_by_one_rung() -> None:
    # At epoch 1 t0 < t1 < ... < t8; from epoch 2 on the order is reversed, and no pair crosses
    # twice, so epsilon stays 0 and the first two trials reaching rung 3 disagree with rung 1.
    curves = {f"t{i}": (lambda e, i=i: 0.1 * i if e == 1 else 1.0 - 0.1 * i) for i in range(9)}
    pasha = PASHA(max_t=27, mode="max")
    trained = run_one_worker(pasha, curves)
    assert pasha.current_epsilon == 0.0
    assert pasha.history[:2] == [3, 9]
    assert max(max(epochs) for epochs in trained.values()) >= 4


def test_growth_is_capped_at_max_t() -> None:
    # Every rung reverses the previous ranking: PASHA unlocks all rungs, then max_t, no more.
    def flip(i: int) -> Curve:
        return lambda e: (0.1 * i) if (e < 3 or e >= 9) else (1.0 - 0.1 * i)

    pasha = PASHA(max_t=9, mode="max")  # rungs 1, 3; then max_t 9
    trained = run_one_worker(pasha, {f"t{i}": flip(i) for i in range(9)})
    assert pasha.history == [3, 9]
    assert pasha.current_max_t == 9
    assert max(max(epochs) for epochs in trained.values()) == 9  # reached, never passed
    reached = [t for t, epochs in trained.items() if epochs[-1] == 9]
    assert reached  # those trials were stopped at max_t
    # a further unstable report does not raise the resource beyond max_t
    pasha._grow()
    assert pasha.current_max_t == 9


def test_soft_ranking_ties_changes_within_epsilon() -> None:
    # Two trials swap places between rung 1 and rung 3, but were 0.05 apart at rung 1.
    def script(epsilon: float) -> PASHA:
        pasha = PASHA(max_t=27, mode="max", epsilon=epsilon)
        values = {"a": [0.60, 0.7, 0.70], "b": [0.55, 0.7, 0.80], "c": [0.1], "d": [0.1]}
        for trial in values:
            pasha.add_trial(trial)
            assert pasha.report(trial, 1, values[trial][0]) is Decision.PAUSE
        for expected in ("a", "b"):
            promotion = pasha.promote()
            assert promotion is not None and promotion.trial_id == expected
            assert (promotion.resume_from, promotion.milestone) == (1, 3)
            for epoch in (2, 3):
                pasha.report(expected, epoch, values[expected][epoch - 1])
        return pasha

    assert script(epsilon=0.1).current_max_t == 3  # |0.60 - 0.55| <= 0.1: same group
    assert script(epsilon=0.0).current_max_t == 9  # hard ranking: the swap grows the resource


def test_epsilon_is_the_90th_percentile_of_twice_crossing_pairs() -> None:
    curves = {
        "A": {1: 0.50, 2: 0.60, 3: 0.70},
        "B": {1: 0.60, 2: 0.50, 3: 0.80},  # vs A: B>A at 3, A>B at 2, B>A at 1: noisy, 0.10
        "C": {1: 0.10, 2: 0.20, 3: 0.30},  # never crosses anyone
        "D": {1: 0.65, 2: 0.40, 3: 0.75},  # vs A: noisy, 0.05; vs B: crosses once only
    }
    epoch_trials = {e: list(curves) for e in (1, 2, 3)}
    distances = noisy_pair_distances(curves, epoch_trials, bottom_epoch=1, top_epoch=3)
    assert sorted(distances) == pytest.approx([0.05, 0.10])
    # np.percentile([0.05, 0.10], 90) = 0.05 + 0.9 * 0.05
    assert float(np.percentile(distances, 90)) == pytest.approx(0.095)
    # epoch 1 is outside the window (prev rung level, top rung level] = (1, 3]
    assert noisy_pair_distances(curves, epoch_trials, bottom_epoch=3, top_epoch=3) == []


def test_pasha_estimates_epsilon_from_the_reported_curves() -> None:
    pasha = PASHA(max_t=27, mode="max")
    for trial, value in (("A", 0.5), ("B", 0.6), ("C", 0.1), ("D", 0.2)):
        pasha.add_trial(trial)
        pasha.report(trial, 1, value)
    assert pasha.current_epsilon == 0.0  # the authors' starting value
    for trial, tail in (("B", [0.5, 0.8]), ("A", [0.6, 0.7])):
        promotion = pasha.promote()
        assert promotion is not None and promotion.trial_id == trial
        pasha.report(trial, 2, tail[0])
        pasha.report(trial, 3, tail[1])
    # A and B crossed twice (B>A at 1, A>B at 2, B>A at 3): epsilon = |0.8 - 0.7|
    assert pasha.current_epsilon == pytest.approx(0.1)
    assert pasha.current_max_t == 3


def test_promotion_takes_the_best_paused_trial_within_the_top_third() -> None:
    pasha = PASHA(max_t=27, mode="min")  # minimise: lower is better
    for trial, loss in zip("abcdef", [0.9, 0.1, 0.5, 0.3, 0.7, 0.2], strict=True):
        pasha.add_trial(trial)
        assert pasha.report(trial, 1, loss) is Decision.PAUSE
    # cutoff = np.quantile(losses, 1/3) = 0.2 + (5/3 - 1) * (0.3 - 0.2): b and f qualify
    assert [pasha.promote().trial_id for _ in range(2)] == ["b", "f"]
    assert pasha.promote() is None  # d (0.3) is outside the top third
    assert pasha.milestone("b") == 3
    # rungs at or above the current maximum resource never promote
    pasha.report("b", 2, 0.1)
    pasha.report("b", 3, 0.05)
    pasha.report("f", 2, 0.1)
    pasha.report("f", 3, 0.06)  # same order as at rung 1: no growth
    assert pasha.current_max_t == 3 and pasha.promote() is None


def test_a_resumed_trial_that_restarts_from_scratch_is_counted_and_ignored() -> None:
    pasha = PASHA(max_t=27, mode="max")
    for trial, value in (("a", 0.9), ("b", 0.1), ("c", 0.2)):
        pasha.add_trial(trial)
        pasha.report(trial, 1, value)
    assert pasha.promote().trial_id == "a"
    assert pasha.report("a", 1, 0.3) is Decision.CONTINUE  # epoch 1 again: no checkpoint used
    assert pasha.restarts_from_scratch == 1
    assert pasha.rung(1)["a"] == 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_t": 0}, "max_epochs must be a whole number >= 1, got 0"),
        ({"max_t": 9, "r_min": 10}, "min_epochs must be a whole number from 1 to max_epochs"),
        ({"max_t": 9, "eta": 1}, "reduction_factor must be a whole number >= 2, got 1"),
        ({"max_t": 9, "mode": "up"}, "mode must be 'min' or 'max', got 'up'"),
        ({"max_t": 9, "epsilon": -1.0}, "epsilon must be a number >= 0 or None"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PASHA(**kwargs)


def test_skipping_an_epoch_is_refused() -> None:
    pasha = PASHA(max_t=27)
    pasha.add_trial("a")
    with pytest.raises(ConfigError, match="reported epoch 2 past its milestone 1"):
        pasha.report("a", 2, 0.5)


# -- Ray Tune -------------------------------------------------------------------------------


def _trainable(config: dict) -> None:
    """Scores follow a fixed curve per config; a checkpoint holds the last epoch. Every start is
    logged (trial id, epoch it starts from) so the test can count restarts from scratch."""
    import tempfile

    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["epoch"]
    with open(config["log"], "a") as log:
        log.write(json.dumps({"trial": trial_id, "start": start}) + "\n")
    for epoch in range(start + 1, 10):
        x = config["x"]
        score = x * (1 - 0.5**epoch) + (0.3 if epoch < 3 and x < 0.5 else 0.0)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(
                {"score": score, "epoch": epoch},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def test_pasha_scheduler_pauses_and_resumes_trials_under_ray_tune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    import ray.cloudpickle
    from ray import tune

    from ricordo.tune.pasha import PASHAScheduler
    from ricordo.tune.schedulers import make_scheduler

    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "1")  # promote before starting new ones
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    # Ray's workers cannot import this test module: ship _trainable by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    log = tmp_path / "starts.jsonl"
    scheduler = make_scheduler("pasha", metric="score", mode="max", max_epochs=9)
    assert isinstance(scheduler, PASHAScheduler)
    xs = [0.1, 0.9, 0.4, 0.8, 0.2, 0.7]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": 1}),
            param_space={"x": tune.grid_search(xs), "log": str(log)},
            tune_config=tune.TuneConfig(
                scheduler=scheduler, metric="score", mode="max", reuse_actors=True
            ),
            run_config=tune.RunConfig(
                storage_path=str(tmp_path / "ray"), verbose=0, log_to_file=False
            ),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    from_scratch: dict[str, int] = {}
    for start in starts:
        if start["start"] == 0:
            from_scratch[start["trial"]] = from_scratch.get(start["trial"], 0) + 1
    assert len(from_scratch) == len(xs)  # every trial started once ...
    assert all(count == 1 for count in from_scratch.values())  # ... and never again from 0
    resumed = [s for s in starts if s["start"] > 0]
    assert resumed and all(s["start"] in (1, 3) for s in resumed)  # from the rung it paused at
    epochs = {r.metrics["trial_id"]: r.metrics["training_iteration"] for r in results}
    assert sorted(epochs.values())[-1] >= 3  # promotions happened
    assert all(r.metrics["training_iteration"] == r.metrics["epoch"] for r in results)
    assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "1"
