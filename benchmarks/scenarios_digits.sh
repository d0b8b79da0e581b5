#!/usr/bin/env bash
# Reproduce the scenario table of benchmarks/README.md: finetune / er / joint on digits for
# class-incremental, permutation and rotation (5 updates, 3 seeds each), then one report per
# scenario. Outputs go to benchmarks/output/ (not committed; rerun this script to get them).
#   bash benchmarks/scenarios_digits.sh            # about 5 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
RICORDO=${RICORDO:-.venv/bin/ricordo}
OUT=${OUT:-benchmarks/output/scenarios}
WORKERS=${WORKERS:-2}
for scenario in class-incremental permutation rotation; do
  "$RICORDO" benchmark --scenario "$scenario" --methods finetune,er,joint --seeds 0,1,2 \
    --memory-size 200 --epochs 10 --workers "$WORKERS" --threads 1 --output "$OUT/$scenario"
  "$RICORDO" report "$OUT/$scenario" --latex
done
