#!/usr/bin/env bash
# The numbers and pictures of docs/results.md: the bundled cascade's base on held-out captions
# (attribute combinations never seen in training), one and two objects, over guidance scales, with
# the sampling `glide sample` uses by default. Two sweeps side by side (one CPU core each).
#
#   scripts/evaluate-bundled.sh [OUT_DIR] [COUNT] [SCALES]    # default: docs/results 200 1,3,5
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results}
COUNT=${2:-200}
SCALES=${3:-1,3,5}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 GLIDE_OFFLINE=1
mkdir -p "$OUT"
start=$(date +%s)
for objects in 1 2; do
    glide eval sweep --model bundled --captions "heldout:$objects:$COUNT" --scales "$SCALES" \
        --out "$OUT/heldout-$objects" --no-progress > "$OUT/heldout-$objects.log" 2>&1 &
done
wait
tail -n 4 "$OUT"/heldout-*.log
echo "took $(( $(date +%s) - start )) s"
