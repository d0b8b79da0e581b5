#!/usr/bin/env bash
# Reproduction table of the method zoo (issues 4 and 9): every method on digits, class-incremental
# and permutation, 5 updates, 3 seeds, memory 100 and 500 (memory-free methods run once), each with
# its defaults from a named source (README, Methods). HEAD=fixed (default: the output layer has
# the scenario's 10 columns from the start, as Mammoth) or HEAD=growing (--growing-head).
# Outputs: benchmarks/output/methods<EPOCHS>-<HEAD>/<scenario>-m<memory>/ (summary.md, ...).
#   bash benchmarks/methods_digits.sh   # EPOCHS=20, HEAD=fixed by default: about 5 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
RICORDO=${RICORDO:-.venv/bin/ricordo}
EPOCHS=${EPOCHS:-20}
HEAD=${HEAD:-fixed}
OUT=${OUT:-benchmarks/output/methods$EPOCHS-$HEAD}
WORKERS=${WORKERS:-2}
REPLAY=er,der,der++,er-ace,offline-er,gdumb,icarl,bic,a-gem,cls-er,pod-er,super-er,rd
FREE=finetune,joint,lwf,ewc,online-ewc,si
for scenario in class-incremental permutation; do
  for memory in 100 500; do
    methods=$REPLAY
    if [ "$memory" = 100 ]; then methods="$FREE,$REPLAY"; fi
    "$RICORDO" benchmark --scenario "$scenario" --methods "$methods" --seeds 0,1,2 \
      --memory-size "$memory" --epochs "$EPOCHS" --workers "$WORKERS" --threads 1 --"$HEAD"-head \
      --output "$OUT/$scenario-m$memory" ||
      echo "methods_digits: some runs failed in $OUT/$scenario-m$memory (see its summary.json)" >&2
  done
done
# The known class-incremental orderings (joint > der++ >= er > finetune):
.venv/bin/python benchmarks/check_orderings.py "$OUT/class-incremental-m100" "$OUT/class-incremental-m500"
