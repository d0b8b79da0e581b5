#!/usr/bin/env bash
# Reproduction table of the method zoo (issue 4): every method on digits, class-incremental and
# permutation, 5 updates, 3 seeds, memory 100 and 500 (memory-free methods run once).
# Outputs: benchmarks/output/methods/<scenario>-m<memory>/ (summary.md, report/).
#   bash benchmarks/methods_digits.sh          # EPOCHS=20 by default: about 14 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
RICORDO=${RICORDO:-.venv/bin/ricordo}
OUT=${OUT:-benchmarks/output/methods20}
EPOCHS=${EPOCHS:-20}
WORKERS=${WORKERS:-2}
REPLAY=er,der,der++,er-ace,offline-er,gdumb,icarl,bic,a-gem,cls-er,pod-er,super-er,rd
FREE=finetune,joint,lwf,ewc,online-ewc,si
for scenario in class-incremental permutation; do
  for memory in 100 500; do
    methods=$REPLAY
    if [ "$memory" = 100 ]; then methods="$FREE,$REPLAY"; fi
    "$RICORDO" benchmark --scenario "$scenario" --methods "$methods" --seeds 0,1,2 \
      --memory-size "$memory" --epochs "$EPOCHS" --workers "$WORKERS" --threads 1 \
      --output "$OUT/$scenario-m$memory"
  done
done
# The known class-incremental orderings (joint > der++ >= er > finetune):
.venv/bin/python benchmarks/check_orderings.py "$OUT/class-incremental-m100" "$OUT/class-incremental-m500"
