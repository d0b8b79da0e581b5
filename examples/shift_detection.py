"""Shift detection in Python: has new data moved away from what the model was trained on?

Run: ``.venv/bin/python examples/shift_detection.py`` (about 10 s on a laptop CPU; writes the
state ``shift-example/v0`` in the current folder, replacing an earlier run's).
tests/shift/test_cli_shift.py runs it and checks each verdict.

A model learns the built-in digits (8x8 images); three new batches arrive: fresh digits of the
same kind, the same digits scanned darker (pixel values x 0.8), and a batch of zeros and ones
only. Each is compared with the training images through the model's penultimate layer (MMD and
KS) and through the raw pixels (MMD).
"""

from __future__ import annotations

from ricordo import Updater
from ricordo.data import load_builtin
from ricordo.shift import ShiftResult, detect_shift


def main(folder: str = "shift-example") -> dict[str, dict[str, ShiftResult]]:
    train, test = load_builtin("digits")  # 1437 training and 360 test images, 10 classes
    updater = Updater(method="finetune", epochs=3, lr=0.05, seed=0, progress=False)
    updater.update(train)
    updater.save(f"{folder}/v0", overwrite=True)

    batches = {
        "same kind": test.x,
        "darker": test.x * 0.8,
        "zeros and ones": test.x[test.y <= 1],
    }
    results: dict[str, dict[str, ShiftResult]] = {}
    for name, batch in batches.items():
        results[name] = {
            "model mmd": detect_shift(f"{folder}/v0", train.x, batch),
            "model ks": detect_shift(f"{folder}/v0", train.x, batch, detector="ks"),
            "raw mmd": detect_shift(None, train.x, batch, features="raw"),
        }
        for how, result in results[name].items():
            print(f"{name:<15} {how:<10} {result.summary()}")
    return results


if __name__ == "__main__":
    main()
