#!/usr/bin/env bash
# Train (or resume) the verbalizer, export the shipped bundles, and score them.
#   tools/ship_verbalizer.sh [HF_DIR]     (default: build/verbalizer/hf, after training)
# The bundles land in tandem/models/ as package data; the scores (held-out sets plain and round)
# in build/verbalizer/eval-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HF=${1:-build/verbalizer/hf}
if [ ! -d "$HF" ]; then
  "$PY" tools/train_verbalizer.py --out build/verbalizer
fi
PATTERN='[0-9]{1,9}( [0-9]{1,9}){0,3}'
DESCRIPTION='1 to 4 non-negative integers below 10^9, in plain digits, separated by single spaces'
for variant in fp32 int8; do
  out=tandem/models/verbalizer
  flags=()
  if [ "$variant" = int8 ]; then out=tandem/models/verbalizer-int8; flags=(--int8); fi
  "$PY" -m tandem.cli export --hf "$HF" --out "$out" --name "$(basename "$out")" --overwrite \
    --input-pattern "$PATTERN" --input-description "$DESCRIPTION" "${flags[@]}"
  for set in plain round; do
    "$PY" tools/eval_verbalizer.py --bundle "$out" --set "$set" --n "${EVAL_N:-2000}" --json \
      | tee "build/verbalizer/eval-$variant-$set.txt" | tail -1 \
      > "build/verbalizer/eval-$variant-$set.json"
  done
done
# The simulator's workload table is shipped beside the model it describes, and export
# --overwrite has just cleared that folder: count it again with the tokenizer just shipped.
"$PY" tools/make_workload.py --tokenizer tandem/models/verbalizer/tokenizer.json
du -sh tandem/models/*
