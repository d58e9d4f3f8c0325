#!/usr/bin/env bash
# Retrain the bundled default model (models/default_weights) from scratch on two CPU cores.
#
#   bash scripts/train-default-model.sh [OUT_DIR]      (default: runs/default)
#
# Two lanes run side by side, one core each (`--threads 1`: on two cores, two one-thread jobs
# beat one two-thread job for these small networks, see models/training/RECIPE.md):
#   lane 1: clip (16 min) -> decoder (90 min)
#   lane 2: sr256 (30 min) -> prior (10 min, once CLIP is done) -> sr1024 (8 min)
# The upsamplers never see CLIP, so they need not wait for it. Each lane writes its own
# directory; `unclip assemble` combines them into OUT_DIR/model. About 106 minutes of wall time.
# Every stage resumes from its checkpoint, so rerunning after an interruption continues.
# To install the result: cp OUT_DIR/model/*.safetensors OUT_DIR/model/manifest.json models/default_weights/
set -euo pipefail

OUT="${1:-runs/default}"
UNCLIP="${UNCLIP:-.venv/bin/unclip}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

train() {  # train STAGE MINUTES DIR
    "$UNCLIP" train --stage "$1" --minutes "$2" --threads 1 --no-progress --out "$3" \
        >>"$OUT/$1.log" 2>&1
}

lane_clip_decoder() {
    train clip 16 "$OUT/clip"
    "$UNCLIP" assemble "$OUT/clip" --out "$OUT/decoder" >/dev/null
    train decoder 90 "$OUT/decoder"
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
wait "$first"
wait "$second"
"$UNCLIP" assemble "$OUT/clip" "$OUT/prior" "$OUT/decoder" "$OUT/sr" --out "$OUT/model"
echo "model directory: $OUT/model"
