#!/usr/bin/env bash
# Train the default model's recipe (`tiny`) from scratch on two CPU cores. The shipped weights in
# models/default_weights are this script's first run plus five rounds of fine-tuning (README,
# "What the bundled model is"); the recipe has changed since its first run (pooled text, the
# decoder's caption drop and high-noise timesteps, CLIP's position-swap twins, the decoder's
# outline-weighted loss); run end to end on 2026-12-03 (2-core EPYC VM, 121 min) it gave a model
# far under the bar, because the budgets are minutes and that machine did about half the steps of
# the one they were set on (docs/training.md, "A from-scratch run, measured").
#
#   bash scripts/train-default-model.sh [OUT_DIR]      (default: runs/default)
#
# Two lanes run side by side, one core each (`--threads 1`: on two cores, two one-thread jobs
# beat one two-thread job for these small networks, see models/training/RECIPE.md):
#   lane 1: clip (16 min) -> decoder (90 min)
#   lane 2: sr256 (30 min) -> prior (10 min, once CLIP is done) -> sr1024 (8 min)
# The upsamplers never see CLIP, so they need not wait for it. When lane 2 is done, the decoder
# is stopped (it checkpoints) and resumed as two one-thread data-parallel replicas (`--replicas
# 2`, RECIPE.md section 8) for the rest of its 90 minutes of training time. Each lane writes its own directory; `unclip assemble` combines them into
# OUT_DIR/model. Then sr256 gets 12 more minutes on whole images. About 118 minutes of wall time.
# Every stage resumes from its checkpoint, so rerunning after an interruption continues.
# TRAIN_SCALE=0.02 scales every budget (a two-minute smoke run of the whole script).
# To install the result: cp OUT_DIR/model/*.safetensors OUT_DIR/model/manifest.json models/default_weights/
set -euo pipefail

OUT="${1:-runs/default}"
UNCLIP="${UNCLIP:-.venv/bin/unclip}"
SCALE="${TRAIN_SCALE:-1}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
# The decoder trains under bfloat16 autocast where the CPU has bf16 instructions (AMX or AVX-512
# BF16): 2.1x its examples/s as two replicas on the 2026-12-02 Xeon (RECIPE.md, section 10).
DECODER_BF16=()
if grep -qE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null; then DECODER_BF16=(--bf16); fi

train() {  # train STAGE MINUTES DIR [THREADS [EXTRA ARGS...]]
    local minutes
    minutes=$(awk -v m="$2" -v s="$SCALE" 'BEGIN { print m * s }')
    "$UNCLIP" train --stage "$1" --minutes "$minutes" --threads "${4:-1}" --no-progress --out "$3" \
        "${@:5}" >>"$OUT/$1.log" 2>&1
}

lane_clip_decoder() {
    train clip 16 "$OUT/clip"
    "$UNCLIP" assemble "$OUT/clip" --out "$OUT/decoder" >/dev/null
    # One thread until lane 2 is done and stops it (exit 130, with a checkpoint); then the rest
    # as two one-thread replicas. A real failure of the first run shows again in the second.
    train decoder 90 "$OUT/decoder" 1 "${DECODER_BF16[@]}" &
    echo $! >"$OUT/decoder.pid"
    wait "$(cat "$OUT/decoder.pid")" || true
    rm -f "$OUT/decoder.pid"
    train decoder 90 "$OUT/decoder" 1 --replicas 2 "${DECODER_BF16[@]}"
}

lane_upsamplers_prior() {
    train sr256 30 "$OUT/sr"
    while [ ! -f "$OUT/clip/manifest.json" ]; do sleep 10; done  # written last, atomically
    "$UNCLIP" assemble "$OUT/clip" --out "$OUT/prior" >/dev/null
    train prior 10 "$OUT/prior"
    train sr1024 8 "$OUT/sr"
}

echo "training into $OUT (logs: $OUT/<stage>.log)"
lane_clip_decoder &
first=$!
lane_upsamplers_prior &
second=$!
wait "$second"
if [ -f "$OUT/decoder.pid" ]; then  # the decoder resumes as two replicas
    pid=$(cat "$OUT/decoder.pid")  # the subshell running train(), or unclip itself if bash exec'd it
    pkill -TERM -P "$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
fi
wait "$first"
# sr256 was trained on 1/4 crops (the paper's recipe) but samples whole images, where its
# GroupNorm statistics differ and flat colors drift; 12 more minutes on whole images (continuing
# from its checkpoint, in a directory of its own so $OUT/sr keeps sr1024) fix most of that.
mkdir -p "$OUT/sr-whole/checkpoints"
[ -f "$OUT/sr-whole/checkpoints/sr256.pt" ] || cp "$OUT/sr/checkpoints/sr256.pt" "$OUT/sr-whole/checkpoints/"
train sr256 42 "$OUT/sr-whole" 2 --crop-fraction 1
"$UNCLIP" assemble "$OUT/clip" "$OUT/prior" "$OUT/decoder" "$OUT/sr" "$OUT/sr-whole" --out "$OUT/model"
echo "model directory: $OUT/model"
