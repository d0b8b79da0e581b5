"""A small rehearsal memory chosen by gradient matching, next to reservoir sampling and herding.

Run: ``.venv/bin/python examples/gradient_matching_memory.py`` (about 15 seconds on a CPU).
ER on class-incremental digits (5 chunks of 2 classes) with a memory of 30 rows; prints the
accuracy on every class seen after the last chunk, for one seed (benchmarks/ has the study).
"""

from ricordo import Updater
from ricordo.data import load_builtin, make_scenario

train, test = load_builtin("digits")
scenario = make_scenario("class-incremental", train, test, updates=5, seed=0)

for policy, options in [
    ("reservoir", {}),
    ("herding", {}),
    ("gradient-matching", {"initialisations": 5, "layers": "last"}),
]:
    updater = Updater(
        method="er",
        memory_size=30,
        memory_policy=policy,
        memory_options=options,  # CLI: --memory-option initialisations=5 ...
        epochs=5,
        progress=False,
    )
    for chunk in scenario.train:
        updater.update(chunk)
    accuracy = updater.evaluate(scenario.test_all())["accuracy"]
    print(f"{policy:>18}: accuracy on all 10 classes {accuracy:.3f}")
