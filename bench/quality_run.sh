#!/usr/bin/env bash
# The from-scratch quality run (`make quality-scratch`): the CPU default backbone trained on the shared
# train split, multi-head and flat baseline with the same time budget, both evaluated on the
# shared validation split (never seen in training: early stopping uses 10% of the train
# split), reports and the comparison grid written to docs/results/scratch/ (`make quality-scratch`).
#
#   bench/quality_run.sh [OUT]     (OUT defaults to docs/results/scratch; runs go to .run/quality-scratch)
#
# Knobs: BUDGET_S (training seconds per model, default 1500), EPOCHS (upper bound, 80).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_DATA:-$REPO/../shared/data}"
OUT="${1:-$REPO/docs/results/scratch}"
RUNS="$REPO/.run/quality-scratch"
BUDGET_S="${BUDGET_S:-1500}"
EPOCHS="${EPOCHS:-80}"
# The command to run (e.g. "python -m service.cli" from another checkout).
read -ra ENRICH <<<"${ENRICH:-$REPO/.venv/bin/enrich}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

labels="$SHARED/product-images/labels.csv"
images="$SHARED/product-images"
taxonomy="$SHARED/google-product-taxonomy/taxonomy-with-ids.en-US.txt"
values="$SHARED/product-images/business-value.csv"
[[ -f "$labels" && -f "$taxonomy" ]] || { echo "quality run: no shared data at $SHARED (set SHARED_DATA)" >&2; exit 1; }

mkdir -p "$OUT" "$RUNS"
for heads in multi leaf; do
  echo "== training $heads (budget ${BUDGET_S}s) ==" >&2
  "${ENRICH[@]}" train --labels "$labels" --images "$images" --taxonomy "$taxonomy" \
    --output "$RUNS/$heads" --heads "$heads" --epochs "$EPOCHS" --patience 12 \
    --time-budget "$BUDGET_S" --holdout 0.1 --business-values "$values" \
    --name "quality-$heads" --verbose 2
  echo "== evaluating $heads ==" >&2
  "${ENRICH[@]}" evaluate --model "$RUNS/$heads/model" --labels "$labels" --images "$images" \
    --taxonomy "$taxonomy" --business-values "$values" --split validation \
    --output "$OUT/$heads"
  cp "$RUNS/$heads/history.json" "$RUNS/$heads/training_curves.png" "$OUT/$heads/"
done
"${ENRICH[@]}" compare "$OUT/multi" "$OUT/leaf" --output "$OUT"
