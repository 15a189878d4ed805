#!/usr/bin/env bash
# Reproduce the bundled cascade (src/glide/bundled/shapes-*.safetensors) from scratch with the
# committed configs, on one CPU core per run (two runs at a time fit a 2-core machine). Every run is
# resumable: after an interruption, run this script again and each stage continues from its last
# checkpoint (resume is exact). Step counts are those of the shipped files; see docs/results.md.
#
#   scripts/reproduce-bundled.sh [RUNS_DIR]        # default: runs/bundled
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/bundled}
mkdir -p "$RUNS"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 GLIDE_OFFLINE=1
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824

BASE_STEPS=${BASE_STEPS:-@BASE_STEPS@}
UPSAMPLE_STEPS=${UPSAMPLE_STEPS:-@UPSAMPLE_STEPS@}
INPAINT_STEPS=${INPAINT_STEPS:-@INPAINT_STEPS@}
UPSAMPLE_INPAINT_STEPS=${UPSAMPLE_INPAINT_STEPS:-@UPSAMPLE_INPAINT_STEPS@}
CLIP_STEPS=${CLIP_STEPS:-@CLIP_STEPS@}
CLASSIFIER_STEPS=${CLASSIFIER_STEPS:-@CLASSIFIER_STEPS@}

train() {  # train NAME CONFIG STEPS [flags]: a new run, or the continuation of an existing one
    local name=$1 config=$2 steps=$3
    shift 3
    if [ -d "$RUNS/$name/checkpoints" ]; then
        glide train --resume --out "$RUNS/$name" --steps "$steps" --no-tensorboard
    else
        glide train --config "$config" --out "$RUNS/$name" --steps "$steps" --no-tensorboard "$@"
    fi
}

# The two long runs side by side, then the short ones (the inpainting models start from them).
train base configs/shapes-base32.yaml "$BASE_STEPS" > "$RUNS/base.log" 2>&1 &
train upsample configs/shapes-upsample64.yaml "$UPSAMPLE_STEPS" > "$RUNS/upsample.log" 2>&1 &
wait
train clip configs/shapes-clip32.yaml "$CLIP_STEPS" > "$RUNS/clip.log" 2>&1 &
train classifier configs/shapes-classifier32.yaml "$CLASSIFIER_STEPS" > "$RUNS/classifier.log" 2>&1 &
wait
train inpaint configs/shapes-inpaint32.yaml "$INPAINT_STEPS" --init "$RUNS/base" > "$RUNS/inpaint.log" 2>&1 &
train upsample-inpaint configs/shapes-upsample-inpaint64.yaml "$UPSAMPLE_INPAINT_STEPS" --init "$RUNS/upsample" \
    > "$RUNS/upsample-inpaint.log" 2>&1 &
wait

# Half-precision EMA weights with the sampling each model is best used with (docs/results.md).
OUT=src/glide/bundled
glide convert "$RUNS/base" "$OUT/shapes-base.safetensors" --force --half @BASE_SAMPLING@
glide convert "$RUNS/upsample" "$OUT/shapes-upsample.safetensors" --force --half @UPSAMPLE_SAMPLING@
glide convert "$RUNS/inpaint" "$OUT/shapes-base-inpaint.safetensors" --force --half @BASE_SAMPLING@
glide convert "$RUNS/upsample-inpaint" "$OUT/shapes-upsample-inpaint.safetensors" --force --half @UPSAMPLE_SAMPLING@
glide convert "$RUNS/clip" "$OUT/shapes-clip.safetensors" --force --half
glide convert "$RUNS/classifier" "$OUT/shapes-classifier.safetensors" --force --half
glide models
