"""Quick start in Python: the README's snippet, line for line (tests/test_quickstart.py checks).

Run it where you installed, after the README's shell quick start or on its own:
``.venv/bin/python examples/quickstart.py``. It writes the states ``py-state/v0`` and
``py-state/v1`` in the current folder; a second run refuses to replace them (delete
``py-state/`` first), as Ricordo never overwrites a state unless asked to.
"""

from ricordo import Updater
from ricordo.data import load_builtin, make_scenario

train, test = load_builtin("digits")
scenario = make_scenario("class-incremental", train, test, updates=5, seed=0)

updater = Updater(method="er", memory_size=200, epochs=20, lr=0.05)
updater.update(scenario.train[0])            # tensors, numpy arrays, (x, y), dicts, torch Datasets
updater.save("py-state/v0")                  # local path or any fsspec URL (s3://, memory://, ...)

updater = Updater.load("py-state/v0")        # typically in the next job's process
updater.update(scenario.train[1])
updater.save("py-state/v1")
print(updater.evaluate(scenario.test_all()))  # accuracy, loss and the counts of rows
print(updater.predict(scenario.test[0].x[:5]))
