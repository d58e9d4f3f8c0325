#!/usr/bin/env bash
# Train the default model's recipe (`tiny`) from scratch: every stage to a fixed number of
# optimizer steps, so that the same command gives the same model on any machine (only slower on a
# slow one). Until 2026-12-04 the budgets were minutes, and a run on a CPU half as fast as the one
# they were set on gave a model far under the bar (docs/training.md, "A from-scratch run").
#
#   bash scripts/train-default-model.sh [OUT_DIR]      (default: runs/default)
#
# Every stage runs as two one-thread data-parallel replicas (`--replicas 2 --threads 1`: on two
# cores, two one-thread processes train these small networks faster than one two-thread process;
# models/training/RECIPE.md, section 8). The layout is part of the recipe: each replica takes its
# own batch, so a step sees twice the stage's batch size. The stages, in order (steps × global
# batch, and the wall time measured on a 2-core AMD EPYC VM with AVX-512 BF16, 2026-12-04):
#
#   clip     1,500 × 256   position-swap twins in half of each batch      ≈ 20 min
#   prior      400 × 256   on that CLIP                                   ≈ 10 min
#   sr256    3,200 × 32    64→256 on crops of ¼ the side                  ≈ 21 min
#   sr256      200 × 32    from those weights, on whole images            ≈ 15 min (bf16)
#   sr1024     360 × 8                                                    ≈  5 min
#   decoder 40,000 × 32    1.28M examples, outline-weighted loss          ≈ 7 h (bf16, 45–52/s)
#
# sr256 ends on whole images because crops and whole images give its GroupNorms different
# statistics (RECIPE.md, section 5): a fine-tune of its own, with a fresh warmup and schedule
# (`--init-from`). Continuing the crop run's schedule instead put those 200 steps at a tenth of
# the peak rate, and the result lost the object in 40% of 256x256 images (docs/training.md). The small stages come first so that a run cut short holds
# finished stages and one checkpoint. The decoder and sr256's whole-image phase train under
# bfloat16 autocast where /proc/cpuinfo lists amx_bf16 or avx512_bf16 (1.4x the decoder's
# examples/s and 2x sr256's on that EPYC); elsewhere in float32, since emulated bf16 trained the
# decoder 13x slower than float32 (oneDNN and ATen held to AVX2 on the same EPYC).
#
# The stages train in OUT_DIR/stages; sr256's whole-image fine-tune in OUT_DIR/sr256-whole (its
# manifest records crop_fraction 1, another config); `unclip assemble` combines both into
# OUT_DIR/model. Every stage resumes from its checkpoints/<stage>.pt, so
# rerunning after an interruption (Ctrl-C or SIGTERM checkpoint first) continues where it
# stopped, and a finished stage is not trained again. Serve the result with
# `UNCLIP_WEIGHTS=OUT_DIR/model`, or ship it:
#   cp OUT_DIR/model/*.safetensors OUT_DIR/model/manifest.json models/default_weights/
# TRAIN_SCALE=0.01 scales every step budget (at least one step each: a smoke run of the script).
set -euo pipefail

OUT="${1:-runs/default}"
UNCLIP="${UNCLIP:-.venv/bin/unclip}"
PYTHON="${PYTHON:-.venv/bin/python}"
SCALE="${TRAIN_SCALE:-1}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
BF16=()
if grep -qE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null; then BF16=(--bf16); fi

finished() {  # finished DIR STAGE STEPS: DIR's manifest holds STAGE trained to STEPS steps
    "$PYTHON" - "$@" <<'EOF' 2>/dev/null
import json, sys
directory, stage, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
notes = json.loads(json.load(open(f"{directory}/manifest.json"))["notes"])
sys.exit(0 if notes[stage]["steps"] >= steps else 1)
EOF
}

scaled() {  # scaled STEPS: the budget times TRAIN_SCALE, at least one step
    awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); print (v < 1 ? 1 : v) }'
}

train() {  # train DIR STAGE STEPS [EXTRA ARGS...]
    local dir="$1" steps
    shift
    steps=$(scaled "$2")
    # A finished stage is skipped even when its checkpoint is gone (a run carried to another
    # machine keeps only the weights of the stages it finished).
    if finished "$dir" "$1" "$steps"; then echo "$1: done ($steps steps)"; return; fi
    echo "$(date -u +%FT%TZ) $1 to step $steps ${*:3}"
    "$UNCLIP" train --stage "$1" --steps "$steps" --replicas 2 --threads 1 --no-progress \
        --out "$dir" "${@:3}" >>"$OUT/train-$1.log" 2>&1
}

echo "training into $OUT (logs: $OUT/train-<stage>.log)"
train "$OUT/stages" clip 1500
train "$OUT/stages" prior 400
train "$OUT/stages" sr256 3200
train "$OUT/sr256-whole" sr256 200 --init-from "$OUT/stages" --crop-fraction 1 "${BF16[@]}"
train "$OUT/stages" sr1024 360
train "$OUT/stages" decoder 40000 "${BF16[@]}"
"$UNCLIP" assemble "$OUT/stages" "$OUT/sr256-whole" --out "$OUT/model" >/dev/null
echo "$(date -u +%FT%TZ) model directory: $OUT/model"
