#!/usr/bin/env bash
# Reproduce the bundled cascade (src/glide/bundled/shapes-*.safetensors) from scratch with the
# committed configs, on one CPU core per run (two runs at a time fit a 2-core machine). Every run is
# resumable: after an interruption, run this script again and each stage continues from its last
# checkpoint (resume is exact). The step counts are those of the shipped files (docs/results.md);
# the runs take about 3 hours of wall time on a 2-core CPU (each run at ~10-30 images/s).
#
#   scripts/reproduce-bundled.sh [RUNS_DIR]        # default: runs/bundled
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/bundled}
mkdir -p "$RUNS"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 GLIDE_OFFLINE=1
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824

train() {  # train NAME CONFIG STEPS [flags of a new run]: a new run, or the exact continuation of one
    local name=$1 config=$2 steps=$3
    shift 3
    if [ -d "$RUNS/$name/checkpoints" ]; then
        continue_run "$name" "$steps"
    else
        glide train --config "$config" --out "$RUNS/$name" --steps "$steps" --no-tensorboard --no-progress "$@" \
            >> "$RUNS/$name.log" 2>&1
    fi
}

continue_run() {  # continue_run NAME STEPS [changed options]
    local name=$1 steps=$2
    shift 2
    glide train --resume --out "$RUNS/$name" --steps "$steps" --no-tensorboard --no-progress "$@" >> "$RUNS/$name.log" 2>&1
}

# 1. One core: the base. Its text encoder is first trained alone to parse the captions (layout, and
#    shape / colour / size of each object; experiments/text-parse, 4 min), then the U-Net learns on
#    it frozen (8,000 steps, ~2.6 h), then the inpainting base starts from it (--init: four
#    zero-initialised input channels), its text encoder still frozen.
#    The other core: the upsampler, its inpainting variant, the CLIP and the classifier.
(
    train init configs/shapes-base32.yaml 1 --model-overrides coord_channels=true &&
    { [ -f "$RUNS/text-parse.safetensors" ] || python experiments/text-parse/pretrain_text.py \
        "$RUNS/init/checkpoints/step-00000001/model.safetensors" "$RUNS/text-parse.safetensors" 500 1e-3 \
        >> "$RUNS/text-parse.log" 2>&1; } &&
    train base configs/shapes-base32-unet.yaml 8000 --init "$RUNS/text-parse.safetensors" &&
    train inpaint configs/shapes-inpaint32.yaml 1000 --init "$RUNS/base/checkpoints/step-00008000" --train unet
) &
(
    train upsample configs/shapes-upsample64.yaml 3200 &&
    train upsample-inpaint configs/shapes-upsample-inpaint64.yaml 600 --init "$RUNS/upsample/checkpoints/step-00003200" &&
    train clip configs/shapes-clip32.yaml 8500 &&
    train classifier configs/shapes-classifier32.yaml 3000
) &
wait

# Half-precision EMA weights with the sampling each model is best used with (docs/results.md).
OUT=src/glide/bundled
# The cascade samples with the fast recipe (10 + 3 model calls, docs/benchmarks.md); the inpainting
# pair keeps DDPM, where few steps were not measured.
BASE_SAMPLING=(--sampler dpm++2m-sde --steps trailing10 --guidance-scale 3)
UPSAMPLE_SAMPLING=(--sampler dpm++2m-sde --steps 10 --guidance-scale 1 --strength 0.3)
INPAINT_SAMPLING=(--sampler ddpm --steps 100 --guidance-scale 3)
INPAINT_UPSAMPLE_SAMPLING=(--sampler ddpm --steps 50 --guidance-scale 1 --strength 0.3)
glide convert "$RUNS/base" "$OUT/shapes-base.safetensors" --force --half "${BASE_SAMPLING[@]}"
glide convert "$RUNS/upsample" "$OUT/shapes-upsample.safetensors" --force --half "${UPSAMPLE_SAMPLING[@]}"
glide convert "$RUNS/inpaint" "$OUT/shapes-base-inpaint.safetensors" --force --half "${INPAINT_SAMPLING[@]}"
glide convert "$RUNS/upsample-inpaint" "$OUT/shapes-upsample-inpaint.safetensors" --force --half \
    "${INPAINT_UPSAMPLE_SAMPLING[@]}"
glide convert "$RUNS/clip" "$OUT/shapes-clip.safetensors" --force --half
glide convert "$RUNS/classifier" "$OUT/shapes-classifier.safetensors" --force --half
glide models
