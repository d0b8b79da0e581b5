"""PASHA (Progressive ASHA; Bohdal et al., ICLR 2023): the rules, and a Ray Tune scheduler for them.

:class:`PASHA` is the algorithm alone, in plain Python (no Ray): promotion-type asynchronous
successive halving whose maximum resource starts at the second rung and grows by one rung whenever
the ranking of the trials in the top two rungs is not stable under a soft ranking. It follows the
authors' code (``ondrejbohdal/pasha`` ``hyperband_pasha.py``; Syne Tune's
``legacy_hyperband_pasha.py``; Syne Tune's ``PromotionRungSystem`` for the ASHA part), rule by
rule; the notes in ``shared/reference/methods.md`` section 5 summarise them:

* rungs at ``r_min * eta**k < max_t``; a trial pauses at every rung it reaches; a free worker
  promotes the best not-yet-promoted paused trial of the highest rung (below the current maximum
  resource) whose metric lies within the rung's top ``1/eta`` quantile, else starts a new trial;
* the current maximum resource starts at the second rung; after every report the trials of the
  current top rung are ranked by their metric there and, again, by their metric at the rung
  below; when one of them left its soft-ranking group (the trials within ``epsilon`` of the one at
  that position below), the maximum resource grows by one rung (``max_t`` after the last rung),
  never shrinking;
* ``epsilon`` (the paper's main variant, ``soft_ranking_auto``): the 90th percentile of
  ``|metric_1(e) - metric_2(e)|`` over the pairs of trials whose learning curves crossed at least
  twice (walking back from epoch ``e`` in the top rung's window ``(prev level, top level]``); kept
  from the last estimate when no pair crossed twice; 0 at the start (the authors' setting).

Departures, each deliberate:

* ``epsilon=<float>`` fixes epsilon instead of estimating it (the code's ``soft_ranking``
  criterion); the default ``None`` estimates it as above.
* Ties: the authors rank with ``numpy.argsort`` (not stable); we sort stably (ties keep the order
  trials were added), so a run is reproducible.
* Pairs of trials are taken in the order they were added (the authors iterate a Python set), and a
  pair whose curves lack an earlier epoch is skipped at that epoch instead of raising ``KeyError``.
* With a single rung there is no second rung to start at: the maximum resource is ``max_t`` from
  the start (the authors' code would fail there); PASHA is then ASHA.
* Ending: Syne Tune stops the whole experiment after a number of trials and leaves the rest
  paused; Ray waits for every trial, so :class:`PASHAScheduler` stops the paused trials once
  nothing runs, nothing is pending and none can be promoted.

:class:`PASHAScheduler` adapts it to Ray Tune (it refuses in one line without Ray): each result
is CONTINUE (between milestones), PAUSE (at a rung; Ray checkpoints the trial) or STOP (at
``max_t``), and ``choose_trial_to_run`` resumes a promotable paused trial first, then a new
(PENDING) trial, like ASHA's free worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ricordo.errors import ConfigError

try:  # Ray is the optional 'hpo' extra; PASHA (the logic) works without it
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
except ImportError:  # pragma: no cover - exercised only without the extra
    Trial = None
    TrialScheduler = object

#: The message when Ray Tune is missing.
MISSING_RAY = 'tuning with Ray Tune needs the hpo extra; pip install "ricordo[hpo]"'

TrialId = Hashable

#: The percentile of the noisy pairs' distances that becomes epsilon (``soft_ranking_auto``).
EPSILON_PERCENTILE = 90.0


class Decision(str, Enum):
    """What a trial does after a report."""

    CONTINUE = "CONTINUE"
    PAUSE = "PAUSE"
    STOP = "STOP"


@dataclass
class _Entry:
    """A trial's metric at a rung, and whether it was promoted from there (or may no longer be)."""

    value: float
    closed: bool = False


@dataclass
class _Running:
    """Where a running trial is heading: its next milestone, and the rung it resumed from."""

    milestone: int
    resume_from: int | None = None


@dataclass
class Promotion:
    """A paused trial to resume: from the rung it sits at to its next milestone."""

    trial_id: TrialId
    resume_from: int
    milestone: int


def rung_levels(max_t: int, r_min: int = 1, eta: int = 3) -> list[int]:
    """The rung levels ``r_min * eta**k`` below ``max_t`` (``max_t`` itself is no rung)."""
    _check_resources(max_t, r_min, eta)
    levels, level = [], r_min
    while level < max_t:
        levels.append(level)
        level *= eta
    return levels


def _check_resources(max_t: int, r_min: int, eta: int) -> None:
    if isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 1:
        raise ConfigError(f"max_epochs must be a whole number >= 1, got {max_t!r}")
    if isinstance(r_min, bool) or not isinstance(r_min, int) or not 1 <= r_min <= max_t:
        raise ConfigError(
            f"min_epochs must be a whole number from 1 to max_epochs ({max_t}), got {r_min!r}"
        )
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"reduction_factor must be a whole number >= 2, got {eta!r}")


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")


@dataclass
class PASHA:
    """The PASHA rung system (see the module docstring for the rules and their sources).

    Drive it with :meth:`add_trial` (a new configuration starts), :meth:`report` (a trial
    finished epoch ``epoch``; every epoch must be reported, in order) and :meth:`promote` (a
    worker is free: which paused trial resumes, if any).
    """

    max_t: int
    r_min: int = 1
    eta: int = 3
    mode: str = "max"
    epsilon: float | None = None
    levels: list[int] = field(init=False)
    current_max_t: int = field(init=False)
    #: Reports of a resumed trial at or below the rung it resumed from: it restarted from scratch
    #: instead of from its checkpoint (Syne Tune's ``ignore_data``); their metrics are ignored.
    restarts_from_scratch: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        _check_resources(self.max_t, self.r_min, self.eta)
        _check_mode(self.mode)
        if self.epsilon is not None and not (np.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ConfigError(
                f"epsilon must be a number >= 0 or None (estimate it), got {self.epsilon!r}"
            )
        self.levels = rung_levels(self.max_t, self.r_min, self.eta)
        self._estimate_epsilon = self.epsilon is None
        self._epsilon = 0.0 if self.epsilon is None else float(self.epsilon)
        # Index into levels + [max_t] of the current maximum resource: the second rung.
        self._top = min(1, len(self.levels))
        self.current_max_t = self._resources()[self._top]
        self._rungs: dict[int, dict[TrialId, _Entry]] = {level: {} for level in self.levels}
        self._running: dict[TrialId, _Running] = {}
        self._curves: dict[TrialId, dict[int, float]] = {}
        self._epoch_trials: dict[int, list[TrialId]] = {}
        self._max_epoch = 0
        self.history: list[int] = [self.current_max_t]

    # -- public state --------------------------------------------------------------------

    @property
    def current_epsilon(self) -> float:
        """The epsilon of the soft ranking now (estimated, or the fixed one)."""
        return self._epsilon

    def rung(self, level: int) -> dict[TrialId, float]:
        """The metric of every trial that reached rung ``level``."""
        return {trial: entry.value for trial, entry in self._rungs[level].items()}

    def milestone(self, trial_id: TrialId) -> int | None:
        """The epoch a running trial pauses (or stops) at next; None when it is not running."""
        running = self._running.get(trial_id)
        return None if running is None else running.milestone

    # -- events --------------------------------------------------------------------------

    def add_trial(self, trial_id: TrialId) -> None:
        """A new configuration starts from scratch; it runs until the first rung."""
        if trial_id in self._curves or trial_id in self._running:
            raise ConfigError(f"trial {trial_id!r} was already added")
        self._running[trial_id] = _Running(milestone=self._resources()[0])
        self._curves[trial_id] = {}

    def report(self, trial_id: TrialId, epoch: int, value: float) -> Decision:
        """Record ``value`` at ``epoch`` for a running trial; say whether it continues, pauses at
        a rung or stops at ``max_t``. The maximum resource may grow afterwards."""
        running = self._running.get(trial_id)
        if running is None:
            raise ConfigError(f"trial {trial_id!r} reported but is not running (add or promote it)")
        if not np.isfinite(value):
            raise ConfigError(f"trial {trial_id!r} reported a non-finite metric {value!r}")
        if running.resume_from is not None and epoch <= running.resume_from:
            # Resumed, but training restarted at epoch 1: count it and keep the first results.
            if epoch == 1:
                self.restarts_from_scratch += 1
            return Decision.CONTINUE
        if epoch > running.milestone:
            raise ConfigError(
                f"trial {trial_id!r} reported epoch {epoch} past its milestone "
                f"{running.milestone}; report once per epoch"
            )
        curve = self._curves[trial_id]
        if curve and epoch != max(curve) + 1:
            raise ConfigError(
                f"trial {trial_id!r} reported epoch {epoch} after epoch {max(curve)}; "
                "report once per epoch, in order"
            )
        curve[epoch] = float(value)
        self._epoch_trials.setdefault(epoch, []).append(trial_id)
        self._max_epoch = max(self._max_epoch, epoch)

        decision = Decision.CONTINUE
        if epoch == running.milestone:
            if epoch in self._rungs:
                self._rungs[epoch][trial_id] = _Entry(float(value))
                decision = Decision.PAUSE
            else:  # max_t: the hard cap
                decision = Decision.STOP
            del self._running[trial_id]

        if self._estimate_epsilon:
            self._update_epsilon()
        if self._ranking_unstable():
            self._grow()
        return decision

    def promote(self, can_resume: Callable[[TrialId], bool] | None = None) -> Promotion | None:
        """A worker is free: the paused trial to resume, or None (then start a new trial).

        Scans the rungs from the highest below the current maximum resource down; in the first
        rung with a promotable trial (not yet promoted, within the top ``1/eta`` quantile of the
        rung's metrics), the best such trial is promoted to the next rung (or ``max_t``).
        ``can_resume`` may exclude trials that cannot restart yet (Ray: still checkpointing)."""
        resources = self._resources()
        for index in range(len(self.levels) - 1, -1, -1):
            level = self.levels[index]
            if level >= self.current_max_t:
                continue
            trial_id = self._promotable(self._rungs[level], can_resume)
            if trial_id is not None:
                self._rungs[level][trial_id].closed = True
                milestone = resources[index + 1]
                self._running[trial_id] = _Running(milestone=milestone, resume_from=level)
                return Promotion(trial_id, level, milestone)
        return None

    def has_promotable(self) -> bool:
        """Whether :meth:`promote` would resume a trial now (without promoting it)."""
        return any(
            self._promotable(self._rungs[level]) is not None
            for level in self.levels
            if level < self.current_max_t
        )

    def remove_trial(self, trial_id: TrialId) -> None:
        """The trial ended (completed, failed or stopped from outside): it is never promoted
        again; its metrics stay in the rungs, where they still count for ranking."""
        self._running.pop(trial_id, None)
        for entries in self._rungs.values():
            if trial_id in entries:
                entries[trial_id].closed = True

    # -- ASHA promotion ------------------------------------------------------------------

    def _promotable(
        self,
        entries: dict[TrialId, _Entry],
        can_resume: Callable[[TrialId], bool] | None = None,
    ) -> TrialId | None:
        if len(entries) < 2:  # Syne Tune's quantile cutoff needs two values
            return None
        values = np.array([entry.value for entry in entries.values()])
        quantile = 1.0 / self.eta if self.mode == "min" else 1.0 - 1.0 / self.eta
        cutoff = float(np.quantile(values, quantile))
        sign = -1.0 if self.mode == "min" else 1.0
        open_entries = [
            (trial, entry.value)
            for trial, entry in entries.items()
            if not entry.closed and (can_resume is None or can_resume(trial))
        ]
        if not open_entries:
            return None
        best, value = max(open_entries, key=lambda item: sign * item[1])
        return best if sign * (value - cutoff) >= 0 else None

    # -- PASHA: the growing maximum resource --------------------------------------------

    def _resources(self) -> list[int]:
        return [*self.levels, self.max_t]

    def _top_two_levels(self) -> tuple[int, int] | None:
        """The current top rung and the one below (the last two rungs once max_t is unlocked)."""
        if len(self.levels) < 2:
            return None
        top = min(self._top, len(self.levels) - 1)
        return self.levels[top], self.levels[top - 1]

    def _grow(self) -> None:
        if self._top < len(self.levels):
            self._top += 1
            self.current_max_t = self._resources()[self._top]
            self.history.append(self.current_max_t)

    def _sorted(self, trials: list[TrialId], level: int) -> list[TrialId]:
        values = self._rungs[level]
        return sorted(trials, key=lambda t: values[t].value, reverse=self.mode == "max")

    def _ranking_unstable(self) -> bool:
        """Whether a trial of the top rung left its soft-ranking group of the rung below."""
        levels = self._top_two_levels()
        if levels is None:
            return False
        top_level, prev_level = levels
        top_trials = list(self._rungs[top_level])
        if not top_trials:
            return False
        top_sorted = self._sorted(top_trials, top_level)
        prev_sorted = self._sorted(top_trials, prev_level)
        prev_values = [self._rungs[prev_level][t].value for t in prev_sorted]
        epsilon = 0.0 if len(prev_sorted) < 2 else self._epsilon
        for index, trial in enumerate(top_sorted):
            if trial not in _soft_group(prev_sorted, prev_values, index, epsilon):
                return True
        return False

    def _update_epsilon(self) -> None:
        """Epsilon from the learning curves (``soft_ranking_auto``, see the module docstring)."""
        levels = self._top_two_levels()
        if levels is None:
            return
        top_level, prev_level = levels
        top_epoch = min(self._max_epoch, top_level)
        bottom_epoch = min(self._max_epoch, prev_level)
        distances = noisy_pair_distances(self._curves, self._epoch_trials, bottom_epoch, top_epoch)
        if distances:
            self._epsilon = float(np.percentile(distances, EPSILON_PERCENTILE))


def _soft_group(
    sorted_trials: list[TrialId], values: list[float], index: int, epsilon: float
) -> set[TrialId]:
    """The trials tied with position ``index``: contiguous neighbours within ``epsilon``."""
    group = {sorted_trials[index]}
    anchor = values[index]
    for other in range(index + 1, len(values)):
        if abs(values[other] - anchor) > epsilon:
            break
        group.add(sorted_trials[other])
    for other in range(index - 1, -1, -1):
        if abs(values[other] - anchor) > epsilon:
            break
        group.add(sorted_trials[other])
    return group


def noisy_pair_distances(
    curves: dict[TrialId, dict[int, float]],
    epoch_trials: dict[int, list[TrialId]],
    bottom_epoch: int,
    top_epoch: int,
) -> list[float]:
    """``|metric_1(e) - metric_2(e)|`` of the pairs whose curves crossed at least twice.

    For each epoch ``e`` from ``top_epoch`` down to ``bottom_epoch + 1`` and each pair of trials
    with a result at ``e`` (each pair once, at the latest such epoch), walk back through epochs
    ``e-1 ... 1``: the pair is noisy when its order flipped at some earlier epoch and flipped
    back further back. Orders compare with ``>`` as the authors' code does."""
    seen: set[tuple[TrialId, TrialId]] = set()
    distances: list[float] = []
    for epoch in range(top_epoch, bottom_epoch, -1):
        for first, second in itertools.combinations(epoch_trials.get(epoch, []), 2):
            if (first, second) in seen:
                continue
            seen.add((first, second))
            curve_1, curve_2 = curves[first], curves[second]
            later = curve_1[epoch] > curve_2[epoch]
            flipped = False
            for earlier in range(epoch - 1, 0, -1):
                if earlier not in curve_1 or earlier not in curve_2:
                    continue
                order = curve_1[earlier] > curve_2[earlier]
                if order != later:
                    flipped = True
                elif flipped:
                    distances.append(abs(curve_1[epoch] - curve_2[epoch]))
                    break
    return distances


class PASHAScheduler(TrialScheduler):  # type: ignore[misc, valid-type]
    """PASHA as a Ray Tune scheduler (promotion type: trials pause at rungs and resume from
    their checkpoints).

    The trainable reports once per epoch with ``time_attr`` (default ``training_iteration``,
    the epochs trained so far) and ``metric``, and saves a checkpoint with every report, so a
    PAUSEd trial resumes from its last epoch. ``on_trial_result`` answers CONTINUE between
    milestones, PAUSE at a rung and STOP at ``max_t``. ``choose_trial_to_run`` resumes a
    promotable paused trial first, else hands Ray a new (PENDING) trial; when nothing runs, none
    is pending and none can be promoted, the paused trials are stopped (no later event could
    promote them), so the experiment ends.

    Ray itself starts PENDING trials whenever resources are free; with many trials queued the new
    ones can start before a promotion is staged. ``TUNE_MAX_PENDING_TRIALS_PG=1`` in the
    environment before the tuner is built (``ricordo.tune.tune`` sets it) keeps ASHA's order:
    promote first, else a new trial.
    """

    _supports_buffered_results = False  # one decision per epoch

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        max_t: int,
        r_min: int = 1,
        eta: int = 3,
        epsilon: float | None = None,
        time_attr: str = "training_iteration",
    ) -> None:
        if Trial is None:
            raise ConfigError(MISSING_RAY)
        super().__init__()
        self.pasha = PASHA(max_t=max_t, r_min=r_min, eta=eta, mode=mode, epsilon=epsilon)
        self._metric = metric
        self._mode = mode
        self._time_attr = time_attr
        self._promoted_waiting: list[Any] = []  # promoted trials Ray has not restarted yet

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Accept Tune's metric/mode only when they agree with ours (PASHA ranks by them)."""
        metric_differs = bool(metric) and metric != self._metric
        mode_differs = bool(mode) and mode != self._mode
        return not (metric_differs or mode_differs)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """A new configuration: it runs to the first rung."""
        self.pasha.add_trial(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """CONTINUE, PAUSE (at a rung) or STOP (at max_t) after an epoch's report."""
        if self._time_attr not in result or self._metric not in result:
            raise ConfigError(
                f"PASHA needs {self._time_attr!r} and {self._metric!r} in every report, "
                f"got {sorted(result)}"
            )
        if trial in self._promoted_waiting:
            self._promoted_waiting.remove(trial)
        decision = self.pasha.report(
            trial.trial_id, int(result[self._time_attr]), float(result[self._metric])
        )
        return {
            Decision.CONTINUE: TrialScheduler.CONTINUE,
            Decision.PAUSE: TrialScheduler.PAUSE,
            Decision.STOP: TrialScheduler.STOP,
        }[decision]

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """The trial ended on its own or at max_t: never promote it again."""
        self._forget(trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """A failed trial is never promoted again."""
        self._forget(trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """A paused or pending trial was stopped: never promote it again."""
        self._forget(trial)

    def _forget(self, trial: Any) -> None:
        self.pasha.remove_trial(trial.trial_id)
        if trial in self._promoted_waiting:
            self._promoted_waiting.remove(trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """A promotable paused trial first, else a new (PENDING) one, else None.

        Idempotent as Ray asks: a trial promoted earlier but not restarted yet is chosen again
        before anything else is promoted."""
        for trial in self._promoted_waiting:
            if trial.status in (Trial.PENDING, Trial.PAUSED):
                return trial
        trials = tune_controller.get_trials()
        by_id = {t.trial_id: t for t in trials}
        promotion = self.pasha.promote(
            lambda trial_id: trial_id in by_id and by_id[trial_id].status == Trial.PAUSED
        )
        if promotion is not None:
            trial = by_id[promotion.trial_id]
            self._promoted_waiting.append(trial)
            return trial
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        idle = not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
        if idle and not self.pasha.has_promotable():
            # Nothing runs and nothing can be promoted: the paused trials would wait forever.
            for trial in trials:
                if trial.status == Trial.PAUSED:
                    tune_controller.stop_trial(trial)
        return None

    def debug_string(self) -> str:
        """One line for Tune's progress output."""
        return (
            f"PASHA: max resource {self.pasha.current_max_t} of {self.pasha.max_t} "
            f"(rungs {self.pasha.levels}), epsilon {self.pasha.current_epsilon:.4g}"
        )
