#!/usr/bin/env bash
# Throughput of one ER update (--model cnn, generated 3x32x32 images) on 1 GPU vs every visible
# GPU as --strategy ddp processes (NCCL), through benchmarks/scaling.py (issue 16). Prepared for a
# multi-GPU machine; not run here (the CPU numbers are in benchmarks/README.md).
#
#   bash benchmarks/scaling_gpu.sh             # needs CUDA and >= 2 GPUs
#   bash benchmarks/scaling_gpu.sh --dry-run   # prints what it would run
#
# Environment: ROWS (65536: enough steps per epoch that a GPU is busy), EPOCHS (3: the first is
# warm-up and not timed), REPEATS (3), PYTHON (.venv/bin/python), OUT
# (benchmarks/output/scaling-gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
ROWS=${ROWS:-65536}
EPOCHS=${EPOCHS:-3}
REPEATS=${REPEATS:-3}
OUT=${OUT:-benchmarks/output/scaling-gpu.md}
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "scaling_gpu: unknown argument '$1'; the only option is --dry-run" >&2; exit 2 ;;
esac

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -lt 2 ]; then
  if [ "$DRY_RUN" = 1 ]; then
    echo "# (a real run would stop here: $GPUS CUDA GPU(s) visible; this needs 2 or more)"
    GPUS=2
  else
    echo "scaling_gpu: $GPUS CUDA GPU(s) visible; 1-vs-N scaling needs 2 or more (CPU: benchmarks/scaling.py)" >&2
    exit 1
  fi
fi
COMMAND=("$PYTHON" benchmarks/scaling.py --accelerator cuda --processes "$GPUS" --rows "$ROWS" --epochs "$EPOCHS" --repeats "$REPEATS")
if [ "$DRY_RUN" = 1 ]; then
  echo "mkdir -p $(dirname "$OUT") && ${COMMAND[*]} > $OUT"
  exit 0
fi
mkdir -p "$(dirname "$OUT")"
"${COMMAND[@]}" | tee "$OUT"
