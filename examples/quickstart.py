"""Quick start: update a model chunk by chunk, save each version, reload and continue.

Run:  .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ricordo import Updater
from ricordo.data import load_builtin, make_scenario


def main() -> None:
    train, test = load_builtin("digits")  # scikit-learn's bundled 8x8 digits, offline
    scenario = make_scenario("class-incremental", train, test, updates=5, seed=0)
    states = Path(tempfile.mkdtemp(prefix="ricordo-quickstart-"))

    updater = Updater(method="er", memory_size=200, epochs=20, lr=0.05, seed=0)
    for k, chunk in enumerate(scenario.train):
        if k > 0:
            # A production job starts here: a fresh process loads the previous version.
            updater = Updater.load(str(states / f"v{k - 1}"))
        updater.update(chunk)
        updater.save(str(states / f"v{k}"))
        seen = scenario.test[: k + 1]
        accuracy = sum(updater.evaluate(t)["accuracy"] * len(t) for t in seen) / sum(map(len, seen))
        print(f"v{k}: classes {updater.seen_classes}, accuracy on all seen classes {accuracy:.3f}")

    print("predictions for 10 test images:", updater.predict(scenario.test_all().x[:10]).tolist())
    print("states written to", states)


if __name__ == "__main__":
    main()
