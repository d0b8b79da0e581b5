#!/usr/bin/env bash
# ER, DER++ and iCaRL on seq-CIFAR-10 (ricordo benchmark --preset seq-cifar10: 5 class-incremental
# tasks of 2 classes, resnet18, 50 epochs, batch 32, crop:4,flip) at memory 200 and 500 on a CUDA
# GPU, then a table against the DER paper's numbers (Buzzega et al. 2020, Table 2, mean of 10 runs;
# checked against /work/shared/reference/peers.md, which copies them from the paper).
#
# Each method runs with Mammoth's best arguments for seq-cifar10 (utils/best_args.py of the DER
# paper's code, commit 7ab9db9): ER lr 0.1, replayed batch 128; DER++ lr 0.03, replayed batch 32,
# alpha 0.1 / beta 0.5 at 200 and alpha 0.2 / beta 0.5 at 500; iCaRL lr 0.1, wd_reg 1e-5, which
# Mammoth adds to the loss as wd_reg * sum(p^2): SGD weight decay 2e-5 has the same gradient.
#
#   RICORDO_DATA=/data bash benchmarks/gpu_seq_cifar10.sh            # needs a GPU and the files
#   bash benchmarks/gpu_seq_cifar10.sh --dry-run                     # prints what it would run
#
# RICORDO_DATA must hold the CIFAR-10 binary version: cifar10/cifar-10-batches-bin/*.bin (or
# cifar-10-batches-bin/ directly): cifar-10-binary.tar.gz from www.cs.toronto.edu/~kriz/cifar.html
# extracted there, or fetched by any ricordo command with --download on a machine online.
# Environment: SEEDS (0; e.g. 0,1,2), WORKERS (3 runs share the GPU at once), OUT
# (benchmarks/output/gpu-seq-cifar10), RICORDO (.venv/bin/ricordo), PYTHON (.venv/bin/python).
# Time: 6 runs of 5 x 50 epochs over 10,000 images with replay; about an hour on one H100 (guess).
set -euo pipefail
cd "$(dirname "$0")/.."
RICORDO=${RICORDO:-.venv/bin/ricordo}
PYTHON=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-0}
WORKERS=${WORKERS:-3}
OUT=${OUT:-benchmarks/output/gpu-seq-cifar10}
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "gpu_seq_cifar10: unknown argument '$1'; the only option is --dry-run" >&2; exit 2 ;;
esac

refuse() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "# (a real run would stop here: $1)"
  else
    echo "gpu_seq_cifar10: $1" >&2
    exit 1
  fi
}

# 1. A CUDA GPU that this Python's torch can use.
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  refuse "no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False); run it on a GPU machine"
fi
# 2. The CIFAR-10 binary files, where the cifar10 dataset looks for them (root/cifar10, then root).
FILES="data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin"
found=""
if [ -n "${RICORDO_DATA:-}" ]; then
  for dir in "$RICORDO_DATA/cifar10/cifar-10-batches-bin" "$RICORDO_DATA/cifar-10-batches-bin"; do
    ok=1
    for f in $FILES; do [ -f "$dir/$f" ] || ok=0; done
    if [ "$ok" = 1 ]; then found=$dir; break; fi
  done
fi
if [ -z "${RICORDO_DATA:-}" ]; then
  refuse "RICORDO_DATA is not set; set it to the folder holding cifar10/cifar-10-batches-bin/ ($FILES)"
elif [ -z "$found" ]; then
  refuse "CIFAR-10 binary files not found in $RICORDO_DATA/cifar10/cifar-10-batches-bin ($FILES); extract cifar-10-binary.tar.gz there (or fetch it with --download on a machine online)"
fi

mkdir -p "$OUT"
for memory in 200 500; do
  if [ "$memory" = 200 ]; then alpha=0.1; else alpha=0.2; fi
  file="$OUT/m$memory.yaml"
  # Per-method settings (JSON is YAML); the preset gives everything else.
  cat > "$file" <<EOF
{"methods": ["er", "der++", "icarl"],
 "method_options": {
   "er": {"lr": 0.1, "params": {"memory_batch_size": 128}},
   "der++": {"lr": 0.03, "params": {"memory_batch_size": 32, "alpha": $alpha, "beta": 0.5}},
   "icarl": {"lr": 0.1, "weight_decay": 0.00002}}}
EOF
  args=(benchmark -c "$file" --preset seq-cifar10 --memory-size "$memory" --seeds "$SEEDS"
        --accelerator cuda --workers "$WORKERS" --data-dir "${RICORDO_DATA:-\$RICORDO_DATA}"
        --output "$OUT/m$memory")
  if [ "$DRY_RUN" = 1 ]; then
    echo "# $file:"; sed 's/^/#   /' "$file"
    echo "$RICORDO ${args[*]}"
    # Resolve the experiment exactly as the command would, so a wrong key fails here.
    "$PYTHON" - "$file" "$memory" "$SEEDS" <<'EOF'
import sys

from ricordo.bench.experiment import Experiment, merge, read_experiment_file

path, memory, seeds = sys.argv[1:]
overrides = {"preset": "seq-cifar10", "memory_size": int(memory), "seeds": seeds,
             "accelerator": "cuda"}
experiment = Experiment.from_dict(merge(read_experiment_file(path), overrides))
for name, c in experiment.configs().items():
    print(f"#   {name}: {experiment.spec.dataset} x{experiment.spec.updates} {c.model} "
          f"{c.model_options} epochs {c.epochs} batch {c.batch_size} {c.optimizer} lr {c.lr} "
          f"wd {c.weight_decay} augment {c.augment} memory {c.memory_size} params {c.params}")
EOF
  else
    "$RICORDO" "${args[@]}" ||
      echo "gpu_seq_cifar10: some runs failed in $OUT/m$memory (see its summary.json)" >&2
  fi
done
[ "$DRY_RUN" = 1 ] && exit 0

# The table: ours (mean over SEEDS) against the DER paper, final average accuracy in %.
"$PYTHON" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
# DER paper, Table 2, seq-CIFAR-10 (class-IL, task-IL), mean of 10 runs.
PAPER = {
    ("er", 200): (44.79, 91.19), ("der++", 200): (64.88, 91.92), ("icarl", 200): (49.02, 88.99),
    ("er", 500): (57.74, 93.61), ("der++", 500): (72.70, 93.88), ("icarl", 500): (47.55, 88.22),
}
print("| memory | method | class-IL ours | class-IL paper | task-IL ours | task-IL paper |")
print("|---|---|---|---|---|---|")
for memory in (200, 500):
    path = out / f"m{memory}" / "summary.json"
    methods = json.loads(path.read_text())["methods"] if path.exists() else {}
    for name in ("er", "der++", "icarl"):
        row = methods.get(name, {})

        def show(part: str) -> str:
            stat = row.get(part, {}).get("average_accuracy")
            if not stat or stat.get("mean") is None:
                return "failed"
            std = f" ± {100 * stat['std']:.2f}" if stat.get("std") is not None else ""
            return f"{100 * stat['mean']:.2f}{std}"

        cil, til = PAPER[(name, memory)]
        print(f"| {memory} | {name} | {show('metrics')} | {cil:.2f} | {show('task_il')} | {til:.2f} |")
EOF
