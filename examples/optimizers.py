"""Optimisers by name and CABS adaptive batch sizes in update jobs.

Run: ``.venv/bin/python examples/optimizers.py`` (about half a minute on a CPU).
ER (memory 200) on class-incremental digits, 5 chunks of 2 classes, 5 epochs per chunk, once
per optimiser at a usual starting learning rate for its kind of step (not tuned here: sign
steps move every weight by lr, so they take smaller ones); prints the accuracy on all classes
after the last chunk (one seed). These are not a comparison of optimisers: each would need its
learning rate tuned (``ricordo optbench`` does that on its test problems). Then plain SGD at
lr 0.5 with CABS choosing each step's batch size (the sizes it used in the first and the last
update), next to the same SGD with a fixed batch of 32.

CLI: ``ricordo update ... --optimizer m-svag --lr 0.05`` and
``ricordo update ... --batch-size-schedule cabs --lr 0.5 --cabs-min-batch 4 --cabs-max-batch 256``
"""

from ricordo import Updater
from ricordo.data import load_builtin, make_scenario

train, test = load_builtin("digits")
scenario = make_scenario("class-incremental", train, test, updates=5, seed=0)
RATES = {"sgd": 0.05, "momentum": 0.01, "adam": 0.001, "signum": 0.001, "m-svag": 0.05}

for optimizer, lr in RATES.items():
    updater = Updater(
        method="er", memory_size=200, epochs=5, optimizer=optimizer, lr=lr, progress=False
    )
    for chunk in scenario.train:
        updater.update(chunk)
    accuracy = updater.evaluate(scenario.test_all())["accuracy"]
    print(f"{optimizer:>8} (lr {lr:<5}): accuracy on all 10 classes {accuracy:.3f}")

updater = Updater(
    method="er",
    memory_size=200,
    epochs=5,
    lr=0.5,
    batch_size_schedule="cabs",
    cabs_min_batch=4,
    cabs_max_batch=256,
    progress=False,
)
for index, chunk in enumerate(scenario.train):
    record = updater.update(chunk)
    sizes = record["train"]["batch_sizes"]
    if index in (0, len(scenario.train) - 1):
        print(
            f"CABS, update {index}: {len(sizes)} steps, first batches {sizes[:5]}, "
            f"last {sizes[-5:]}"
        )
accuracy = updater.evaluate(scenario.test_all())["accuracy"]
print(f"sgd, lr 0.5, CABS batches: accuracy on all 10 classes {accuracy:.3f}")

updater = Updater(method="er", memory_size=200, epochs=5, lr=0.5, progress=False)
for chunk in scenario.train:
    updater.update(chunk)
accuracy = updater.evaluate(scenario.test_all())["accuracy"]
print(f"sgd, lr 0.5, 32 per batch: accuracy on all 10 classes {accuracy:.3f}")
