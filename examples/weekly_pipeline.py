"""A weekly update job: detect shift, update, gate, publish. Copy it into your scheduler.

Each run takes the week's labelled chunk and a store folder of states with an alias
``STORE/latest`` pointing at the model in service:

1. The first run trains a model, keeping 10% of the chunk as held-out rows in the state, and
   publishes it as ``STORE/v0``.
2. Later runs load ``STORE/latest`` and test whether the chunk's inputs have shifted away from
   the held-out rows the state keeps (MMD on the model's penultimate features). Nothing moved:
   the update is skipped (``--always`` updates anyway, e.g. when the labels are what changed).
3. The update is gated: a candidate whose accuracy on the held-out rows of earlier weeks drops
   by more than ``--max-regression`` is written aside (``STORE/vK.rejected-TIME``, to inspect
   with ``ricordo diff STORE/latest ...``) and ``latest`` stays where it was.
4. A candidate that passes is written as ``STORE/vK`` and ``latest`` is moved to it atomically;
   ``ricordo rollback STORE/latest`` moves it back. No state is ever copied or deleted.

Run: ``python examples/weekly_pipeline.py --store models --data week-07.npz``. Exit status:
0 published or skipped, 3 refused by the gate (as ``ricordo update --gate``), 1 an error.
The README shows the same job as a shell script over the ``ricordo`` command.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ricordo import Updater
from ricordo.errors import RicordoError, UpdateRejectedError
from ricordo.gate import Gate, GateResult
from ricordo.shift import detect_shift
from ricordo.state import publish, read_alias

REFUSED = 3  # the exit status of `ricordo update --gate` when the gate refuses


@dataclass
class Week:
    """What one run did: ``published``, ``skipped`` or ``refused``, and where."""

    action: str
    state: str | None  # the state published, or the refused candidate
    shift: Any = None  # the ShiftResult (None on the first run or with always)
    gate: dict[str, Any] | None = None  # the gate's verdict (see ricordo.gate.GateResult)


def run_week(
    store: str,
    data: Any,
    *,
    always: bool = False,
    max_regression: float = 0.02,
    alpha: float = 0.05,
    **options: Any,
) -> Week:
    """One week's job on the labelled chunk ``data`` (a file or arrays). ``options`` go to
    the first Updater (method, memory_size, epochs, seed, ...)."""
    latest = os.path.join(store, "latest")
    if read_alias(latest) is None:  # the first week: train, publish
        updater = Updater(**{"holdout": 0.1, **options})
        updater.update(data)
        return Week("published", _publish(updater, store))
    updater = Updater.load(latest)
    shift = None
    if not always:
        # The reference: the rows the state held out of earlier chunks (never trained on).
        shift = detect_shift(updater, updater.holdout.x, data, alpha=alpha)
        if not shift.shifted:
            return Week("skipped", None, shift)
    try:
        record = updater.update(data, gate=Gate(max_regression=max_regression))
    except UpdateRejectedError as refused:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = os.path.join(store, f"v{updater.updates}.rejected-{stamp}")
        refused.candidate.save(aside)  # kept for inspection, never published
        return Week("refused", aside, shift, refused.result.to_dict())
    return Week("published", _publish(updater, store), shift, record["gate"])


def _publish(updater: Updater, store: str) -> str:
    """Write the new state as STORE/vK (K: its update index) and move `latest` to it."""
    path = os.path.join(store, f"v{updater.updates - 1}")
    updater.save(path)
    publish(path, "latest")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="folder of states (and the alias)")
    parser.add_argument("--data", required=True, help="the week's labelled chunk (.npz, ...)")
    parser.add_argument("--always", action="store_true", help="update even without a shift")
    parser.add_argument("--max-regression", type=float, default=0.02)
    parser.add_argument("--method", default="er")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        week = run_week(
            args.store,
            args.data,
            always=args.always,
            max_regression=args.max_regression,
            method=args.method,
            epochs=args.epochs,
            progress=False,
        )
    except RicordoError as error:
        print(f"weekly_pipeline: error: {error}", file=sys.stderr)
        return 1
    if week.shift is not None:
        print(week.shift.summary())
    if week.gate is not None:
        print(GateResult(**week.gate).summary())
    print(f"{week.action}: {week.state or 'latest unchanged'}")
    return REFUSED if week.action == "refused" else 0


if __name__ == "__main__":
    sys.exit(main())
