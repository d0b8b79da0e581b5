"""The PEFT continual-learning study on a GPU: L2P, L2L, S-Prompts, S-LoRA, CoLoR (and the "++"
routing of the PEFT-choice paper) and the fine-tuning / ER baselines on ViT-B/16 (ImageNet-21k)
over Split CIFAR-100, through ``ricordo benchmark``, printed next to the published numbers.

Prepared for a machine with a CUDA GPU, the checkpoint and CIFAR-100; not run here (no GPU)::

    RICORDO_DATA=/data .venv/bin/python benchmarks/peft_gpu.py            # 2-3 h a seed (estimate)
    .venv/bin/python benchmarks/peft_gpu.py --dry-run                      # prints, runs nothing

Needs (a real run refuses in one line otherwise; ``--dry-run`` only notes what is missing):

- a CUDA GPU visible to this Python's torch;
- CIFAR-100, binary version: ``$RICORDO_DATA/cifar100/cifar-100-binary/{train,test}.bin``
  (or ``--data-dir``), from cifar-100-binary.tar.gz (www.cs.toronto.edu/~kriz/cifar.html) or any
  ricordo command with ``--download`` on a machine online;
- ``--backbone``: ``google/vit-base-patch16-224-in21k`` (the checkpoint of these papers,
  methods.md 1.2), a local folder of it (``save_pretrained`` layout, safetensors) or the hub name
  with the hub reachable or its snapshot in the Hugging Face cache.

Protocol (Split CIFAR-100, class-incremental, 10 tasks of 10 classes; methods.md 2.3, 3.5):

- class order: PyCIL/PILOT's (``np.random.seed(1993)``, then a permutation of the 100 classes;
  peers.md 2.3), the same for every seed;
- l2p, l2l: PILOT's L2P config (peers.md 2.3: Adam lr 0.001875, batch 16, 5 epochs, constant
  lr; LibContinual reproduced 83.56 against the paper's 83.83 with that lr and batch, 1 epoch);
- s-prompts, s-lora, color: the official S-Prompts optimizer (methods.md 3.3: SGD momentum 0.9,
  lr 0.01, cosine over the epochs, batch 128, weight decay 2e-4), 5 epochs per task as L2P's
  CIFAR protocol (S-Prompts has no CIFAR config); ``s-prompts++`` / ``s-lora++`` add ``routing
  first-task`` (the PEFT-choice paper's S-X++, meant for class splits, methods.md 1.5, 2.1);
- finetune, er: the linear head on the frozen backbone's CLS feature, with the S-Prompts
  optimizer; er keeps 2000 exemplars (PILOT's replay memory on CIFAR, peers.md 2.3);
- every method's own parameters as registered (``ricordo methods NAME``); 32-bit precision
  (``--precision bf16-mixed`` needs the fabric extra).

Published numbers are those the reference notes hold, with their status: most come from
another pipeline (backbone weights, class order, epochs), so they are anchors, not targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402
from peft_cpu import read_summary, registered, ricordo_executable, study_table  # noqa: E402

CHECKPOINT = "google/vit-base-patch16-224-in21k"
CIFAR100_FILES = ("train.bin", "test.bin")

ADAM_L2P = {"optimizer": "adam", "lr": 0.001875, "batch_size": 16, "epochs": 5}
SGD_SPROMPTS = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0002,
    "batch_size": 128,
    "epochs": 5,
}
# Run name -> method and its UpdateConfig options (an experiment file's method_options).
RUNS: dict[str, dict[str, Any]] = {
    "l2p": {"method": "l2p", **ADAM_L2P},
    "l2l": {"method": "l2l", **ADAM_L2P},
    "s-prompts": {"method": "s-prompts", **SGD_SPROMPTS},
    "s-prompts++": {"method": "s-prompts", **SGD_SPROMPTS, "params": {"routing": "first-task"}},
    "s-lora": {"method": "s-lora", **SGD_SPROMPTS},
    "s-lora++": {"method": "s-lora", **SGD_SPROMPTS, "params": {"routing": "first-task"}},
    "color": {"method": "color", **SGD_SPROMPTS},
    "finetune": {"method": "finetune", **SGD_SPROMPTS},
    "er": {"method": "er", **SGD_SPROMPTS, "memory_size": 2000},
}

# Split CIFAR-100 (10 tasks, class-incremental), final average accuracy in %, from the notes.
PUBLISHED: dict[str, str] = {
    "l2p": "83.83 ± 0.04 L2P paper [unverified]; 83.56 LibContinual repro; ~84.4 PILOT chart "
    "(ViT-B/16 IN-21k + IN-1k fine-tuned weights)",
    "l2l": "not retrieved (PEFT-choice paper, methods.md 2.3)",
    "s-prompts": "no CIFAR number (S-Prompts reports domain-incremental only)",
    "s-prompts++": "not retrieved (PEFT-choice paper)",
    "s-lora": "not retrieved (PEFT-choice paper)",
    "s-lora++": "not retrieved (PEFT-choice paper)",
    "color": "not retrieved (CoLoR reports DomainNet 69.7)",
    "finetune": "~68.5 PILOT chart, but full fine-tuning (ours: head only)",
    "er": "-",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or os.environ.get("RICORDO_DATA")
    problems = missing_requirements(data_dir)
    if problems and not args.dry_run:
        print(f"peft_gpu: {problems[0]}", file=sys.stderr)
        return 1
    out = Path(args.out)
    runs, skipped = runs_to_do(args.methods)
    if skipped:
        print(f"# not registered in this install, skipped: {', '.join(skipped)}")
    experiment = experiment_dict(runs, data_dir or "$RICORDO_DATA", args.backbone, args.seeds)
    experiment_file = out / "experiment-peft.yaml"
    command = [
        ricordo_executable(),
        "benchmark",
        "-c", str(experiment_file),
        "--accelerator", "cuda",
        "--precision", args.precision,
        "--workers", str(args.workers),
        "--no-progress",
        "--output", str(out / "results"),
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    experiment_file.write_text(json.dumps(experiment, indent=2) + "\n", encoding="utf-8")
    if args.dry_run:
        for problem in problems:
            print(f"# (a real run would stop here: {problem})")
        print(f"# {experiment_file}:")
        print("\n".join("#   " + line for line in json.dumps(experiment, indent=2).splitlines()))
        print("$ " + shlex.join(command))
        for line in resolved_runs(experiment, args.precision):
            print(line)
        return 0
    returncode = subprocess.run(command, check=False).returncode
    summary = read_summary(out / "results")
    if summary is None:
        print(
            f"peft_gpu: the benchmark wrote no results in {out / 'results'} (exit {returncode})",
            file=sys.stderr,
        )
        return returncode or 1
    headers, rows = study_table(summary, out / "results")
    headers.append("published (final avg accuracy)")
    for row in rows:
        row.append(PUBLISHED.get(row[0], "-"))
    print()
    print(f"Split CIFAR-100, 10 tasks, {args.backbone}; accuracy in %, mean ± std over seeds")
    print(table(headers, rows))
    for failed in summary["failed"]:
        print(f"FAILED {failed['run']}: {failed['error']}")
    return returncode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print and resolve; run nothing")
    parser.add_argument("--seeds", type=int, default=1, help="runs per method: seeds 0..N-1")
    parser.add_argument("--backbone", default=CHECKPOINT, help="ViT checkpoint: hub name or folder")
    parser.add_argument("--data-dir", help="folder holding cifar100/ (default $RICORDO_DATA)")
    parser.add_argument("--methods", help=f"comma-separated runs (default all: {','.join(RUNS)})")
    parser.add_argument("--precision", default="32-true", help="32-true (default), bf16-mixed")
    parser.add_argument("--workers", type=int, default=1, help="runs sharing the GPU at once")
    parser.add_argument("--out", default="benchmarks/output/peft-gpu", help="output folder")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds} must be at least 1")
    return args


def missing_requirements(data_dir: str | None) -> list[str]:
    """One line per missing requirement of a real run: CUDA, then the CIFAR-100 files."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(
            "no CUDA GPU visible to this Python's torch (torch.cuda.is_available() is False); "
            "run it on a GPU machine, or pass --dry-run"
        )
    if data_dir is None:
        problems.append(
            "RICORDO_DATA is not set; set it (or --data-dir) to the folder holding "
            "cifar100/cifar-100-binary/train.bin and test.bin"
        )
    elif cifar100_folder(Path(data_dir)) is None:
        problems.append(
            f"CIFAR-100 binary files not found in {data_dir}/cifar100/cifar-100-binary "
            "(train.bin, test.bin); extract cifar-100-binary.tar.gz there"
        )
    return problems


def cifar100_folder(root: Path) -> Path | None:
    """Where the cifar100 dataset finds its files (ricordo.data.vision's search order)."""
    home = root / "cifar100"
    for folder in (home / "cifar-100-binary", home, root / "cifar-100-binary", root):
        if all((folder / name).is_file() for name in CIFAR100_FILES):
            return folder
    return None


def runs_to_do(selected: str | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The runs to do (all, or ``--methods``), without methods this install lacks."""
    names = list(RUNS) if not selected else [n.strip() for n in selected.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"peft_gpu: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    have, _ = registered(tuple(dict.fromkeys(RUNS[n]["method"] for n in names)))
    kept = {n: RUNS[n] for n in names if RUNS[n]["method"] in have}
    return kept, [n for n in names if n not in kept]


def pilot_class_order(classes: int = 100, seed: int = 1993) -> list[int]:
    """PyCIL/PILOT's class order: ``np.random.seed(1993)`` then ``np.random.permutation``."""
    return [int(c) for c in np.random.RandomState(seed).permutation(classes)]


def experiment_dict(
    runs: dict[str, dict[str, Any]], data_dir: str, backbone: str, seeds: int
) -> dict[str, Any]:
    """The experiment file (``ricordo benchmark -c``) of the study."""
    return {
        "dataset": "cifar100",
        "data_dir": data_dir,
        "scenario": "class-incremental",
        "scenario_options": {"class_order": pilot_class_order()},
        "updates": 10,
        "backbone": backbone,
        "methods": list(runs),
        "method_options": runs,
        "seeds": list(range(seeds)),
    }


def resolved_runs(experiment: dict[str, Any], precision: str) -> list[str]:
    """Each run's settings as ``ricordo benchmark`` resolves them (a wrong key fails here)."""
    from ricordo.bench.experiment import Experiment
    from ricordo.bench.sweep import validate_configs

    data = {**experiment, "accelerator": "cuda", "precision": precision}
    resolved = Experiment.from_dict(data, source="peft_gpu's experiment")
    validate_configs(resolved.configs())  # unknown method parameters fail here too
    spec = resolved.spec
    lines = [
        f"# scenario: {spec.dataset} {spec.scenario} x{spec.updates}, class order "
        f"{spec.scenario_options['class_order'][:10]}..."
    ]
    for name, c in resolved.configs().items():
        lines.append(
            f"#   {name}: method {c.method} params {c.params} backbone {c.backbone} "
            f"{c.optimizer} lr {c.lr} momentum {c.momentum} wd {c.weight_decay} batch "
            f"{c.batch_size} epochs {c.epochs} memory {c.memory_size} {c.accelerator} "
            f"{c.precision}"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
