#!/usr/bin/env bash
# The five fine-tuning rounds that made the bundled weights (models/default_weights) after the
# first run of scripts/train-default-model.sh: the commands exactly as recorded, one function per
# round. A record kept as a file (as nanoGPT keeps its runs as config/train_*.py), run by nothing;
# docs/training.md, "How the bundled weights were made", has the table of rounds and
# models/training/RECIPE.md the measurements (sections 6-11).
#
#   bash scripts/finetune-rounds.sh round1 [round2 ...]      (in principle; see below)
#
# Each round fine-tuned from the weights that were in models/default_weights at the time
# (`--init-from models/default_weights`), wrote runs/..., and combined them with `unclip assemble`
# into runs/model; the stages it trained, with the manifest, were then copied into
# models/default_weights (the `ship` lines: the files each round's commit changed).
# To replay a round, first put its starting weights in place:
#   round 1: git checkout 77fdaae -- models/default_weights   (the first run; result: commit 441c8d3)
#   round 2: git checkout 18e2969 -- models/default_weights   (result: 9254e24)
#   round 3: git checkout 4c82ee4 -- models/default_weights   (result: 714c913)
#   round 4: git checkout 4434b8e -- models/default_weights   (result: 70e79b4)
#   round 5: git checkout 8396cbd -- models/default_weights   (result: 02fcb53)
# and the code of that time (the recipe's defaults and flags have changed since: e.g. the `tiny`
# decoder's caption drop, high-noise share and edge loss are now defaults).
#
# Why "in principle": budgets are minutes of training time on 2-core CPU VMs of different speeds
# (docs/training.md names each), so the same minutes see different numbers of examples; and some
# runs were stopped by hand (the trainer checkpoints on SIGINT/SIGTERM) and resumed with other
# flags, which the comments mark. Run one after the other, as here, a stopped-and-resumed run
# trains its first budget to the end instead.
set -euo pipefail

UNCLIP="${UNCLIP:-unclip}"  # e.g. UNCLIP=.venv/bin/unclip
unclip() { command "$UNCLIP" "$@"; }

ship() {  # ship STAGE...: copy these stages and the manifest of runs/model into the bundle
    local stage
    for stage in "$@"; do cp "runs/model/$stage.safetensors" models/default_weights/; done
    cp runs/model/manifest.json models/default_weights/
}

# 1. (2026-11-25, 2-core AMD EPYC, AVX2 only) decoder with the new pooled-text path; sr256 on whole
#    64->256 images. The two ran side by side (the decoder's first 22 minutes with two threads,
#    the rest with one beside sr256; RECIPE.md, section 6).
round1() {
    unclip train --stage decoder --minutes 80 --seed 1 --lr 5e-4 --init-from models/default_weights --out runs/ft &
    unclip train --stage sr256 --minutes 50 --threads 1 --seed 1 --crop-fraction 1 --init-from models/default_weights --out runs/srft &
    wait
    unclip assemble models/default_weights runs/ft runs/srft --out runs/model
    ship decoder sr256
}

# 2. (2026-11-25, later, the same EPYC) decoder: caption dropped 20% instead of 50%, half the
#    timesteps in the noisiest tenth (RECIPE.md, section 7, run C).
round2() {
    unclip train --stage decoder --minutes 62 --threads 1 --seed 2 --lr 5e-4 --text-drop 0.2 --high-noise-fraction 0.5 --init-from models/default_weights --out runs/ftC
    unclip assemble models/default_weights runs/ftC --out runs/model
    ship decoder
}

# 3. (2026-12-01, a slower 2-core EPYC) CLIP with position-swap twins (a first 16 min with position
#    and shape twins, then 6 with position alone), then the prior and the decoder on that CLIP
#    (RECIPE.md, sections 8-9).
round3() {
    unclip train --stage clip --minutes 16 --threads 1 --replicas 2 --seed 4 --lr 5e-4 --swap-twins 0.5 --swap-attributes position shape --init-from models/default_weights --out runs/clipT
    unclip train --stage clip --minutes 6 --threads 1 --replicas 2 --seed 5 --lr 3e-4 --swap-twins 0.5 --swap-attributes position --init-from runs/clipT --out runs/clipP
    unclip assemble runs/clipP --out runs/priorP && unclip assemble runs/clipP --out runs/decP
    unclip train --stage prior --minutes 10 --threads 1 --seed 5 --init-from models/default_weights --out runs/priorP &
    unclip train --stage decoder --minutes 95 --threads 1 --seed 6 --lr 5e-4 --init-from models/default_weights --out runs/decP
    #    ^ beside the prior; stopped when it was done (step 439) and resumed as two replicas (that
    #      command is not recorded); stopped again at step 1,191 and resumed with a smaller
    #      high-noise share and a shorter budget:
    wait
    unclip train --stage decoder --minutes 80 --threads 1 --replicas 2 --seed 6 --lr 5e-4 --high-noise-fraction 0.25 --init-from models/default_weights --out runs/decP
    unclip assemble models/default_weights runs/priorP runs/decP --out runs/model
    ship clip prior decoder
}

# 4. (2026-12-02, 2-core Intel Xeon with AMX and AVX-512 BF16) decoder with the outline-weighted
#    loss, uniform timesteps, bfloat16 autocast (RECIPE.md, section 10, run E).
round4() {
    unclip train --stage decoder --minutes 70 --threads 1 --replicas 2 --bf16 --edge-loss 9 --seed 9 --lr 5e-4 --high-noise-fraction 0 --init-from models/default_weights --out runs/decE
    #    ^ stopped at step 782 (25,024 examples) and exported with `--steps 782` to measure, then
    #      resumed with a longer budget:
    unclip train --stage decoder --minutes 73 --threads 1 --replicas 2 --bf16 --edge-loss 9 --seed 9 --lr 5e-4 --high-noise-fraction 0 --init-from models/default_weights --out runs/decE
    unclip assemble models/default_weights runs/decE --out runs/model   # only decoder.safetensors shipped
    ship decoder
}

# 5. (2026-12-02, later, 2-core AMD EPYC with AVX-512 BF16) more of the same at a lower peak rate:
#    one thread beside an A/B twin (the twin, run B of RECIPE.md section 11, added
#    --shape-weights star=2 with seed 12, and lost; its command is not recorded here).
round5() {
    unclip train --stage decoder --minutes 100 --threads 1 --bf16 --edge-loss 9 --seed 11 --lr 3e-4 --high-noise-fraction 0 --init-from models/default_weights --out runs/decA
    #    ^ stopped at step 3,117 (49,872 examples, 36 min) to compare, then resumed as two replicas:
    unclip train --stage decoder --minutes 95 --threads 1 --replicas 2 --bf16 --edge-loss 9 --seed 11 --lr 3e-4 --high-noise-fraction 0 --init-from models/default_weights --out runs/decA
    unclip assemble models/default_weights runs/decA --out runs/model   # only decoder.safetensors shipped
    ship decoder
}

main() {
    if [ "$#" -eq 0 ]; then
        sed -n '2,9p' "$0" >&2
        exit 2
    fi
    local round
    for round in "$@"; do
        case "$round" in
            round1 | round2 | round3 | round4 | round5) "$round" ;;
            *) echo "unknown round: $round (round1 ... round5)" >&2; exit 2 ;;
        esac
    done
}

main "$@"
