"""Selective backprop: train on a quarter of each new batch, chosen three ways, next to every row.

Run: ``.venv/bin/python examples/selective_backprop.py`` (about 10 seconds on a CPU).
ER (memory 200) on class-incremental digits, 5 chunks of 2 classes, 3 epochs per chunk; prints
the accuracy on all classes after the last chunk, the new rows back-propagated in the last update
and the estimated share of their training compute saved (one seed; benchmarks/ has the study).
"""

from ricordo import Updater
from ricordo.data import load_builtin, make_scenario

train, test = load_builtin("digits")
scenario = make_scenario("class-incremental", train, test, updates=5, seed=0)

for strategy in (None, "loss", "gradient-matching", "random"):
    updater = Updater(
        method="er",
        memory_size=200,
        epochs=3,
        selective_backprop=strategy,  # CLI: --selective-backprop loss --keep-fraction 0.25
        keep_fraction=0.25 if strategy else 0.5,
        progress=False,
    )
    for chunk in scenario.train:
        record = updater.update(chunk)
    accuracy = updater.evaluate(scenario.test_all())["accuracy"]
    counts = record["train"]["selective_backprop"]
    line = f"{strategy or 'every row':>17}: accuracy on all 10 classes {accuracy:.3f}"
    if counts:
        line += (
            f", {counts['kept_rows']} of {counts['seen_rows']} new rows back-propagated "
            f"(~{100 * counts['estimated_saved_flops_fraction']:.0f}% of their compute saved)"
        )
    print(line)
