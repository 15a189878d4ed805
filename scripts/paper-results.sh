#!/usr/bin/env bash
# The paper's comparisons in miniature (docs/results.md, "The paper's results in miniature"):
# trains the clean-CLIP control if it is missing (~15 min), then runs `glide eval paper` as two
# processes, one CPU core each (guidance + inpainting + upsampler | samplers). Sampled images
# are cached in OUT/samples: run it again after an interruption and it goes on where it stopped.
#
#   scripts/paper-results.sh [OUT_DIR] [COUNT] [CLEAN_CLIP_RUN]
#   # default: docs/results/paper 500 runs/clip-clean
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results/paper}
COUNT=${2:-500}
RUN=${3:-runs/clip-clean}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 GLIDE_OFFLINE=1
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824
start=$(date +%s)
CLEAN=$RUN/checkpoints/step-00008500/ema-0.999.safetensors
if [ ! -f "$CLEAN" ]; then
    OMP_NUM_THREADS=2 glide train --config configs/shapes-clip32-clean.yaml --steps 8500 --out "$RUN"
fi
mkdir -p "$OUT"
glide eval paper --out "$OUT" --count "$COUNT" --only guidance,inpainting,upsampler --clean-clip "$CLEAN" \
    --no-progress > "$OUT/guidance.log" 2>&1 &
glide eval paper --out "$OUT" --count "$COUNT" --only samplers --no-progress > "$OUT/samplers.log" 2>&1 &
wait
# one pass over the whole cache (every image already sampled) writes tables.md with all four
glide eval paper --out "$OUT" --count "$COUNT" --clean-clip "$CLEAN" --no-progress > "$OUT/tables.log" 2>&1
echo "took $(( $(date +%s) - start )) s" | tee "$OUT/took.txt"
