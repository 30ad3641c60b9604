#!/usr/bin/env bash
# Rank the published zero-shot captioners of the MAGIC paper (Su et al. 2022) on the Flickr30k
# Karpathy test split, from their real caption outputs in ../shared/data/external/magic-flickr30k:
# each file is scored by `bench score` (pycocoevalcap + PTB tokenization, exactly as the paper's
# evaluation) and recorded as an external run, then `bench compare` ranks them with bootstrap CIs.
#   usage: examples/published_systems.sh [OUT.md]      (default reports/flickr30k-published.md)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
DATA=${BENCH_SHARED_DATA:-../shared/data}/external/magic-flickr30k
OUT=${1:-reports/flickr30k-published.md}
for f in "$DATA"/*.json; do
  name=$(basename "$f" .json)
  # The file carries both the system's predictions and the 5 references of each image.
  "$BENCH" score "$f" --refs "$f" --metrics bleu,meteor,rouge,cider --as-run "published-$name" \
    --dataset flickr30k-test --json > /dev/null
  echo "scored $name"
done
"$BENCH" compare --data flickr30k-test --runs 'published-*' --out "$OUT"
