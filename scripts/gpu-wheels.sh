#!/usr/bin/env bash
# Pack, on this machine, the Python packages that scripts/gpu-check.sh needs and the lent GPU
# machine lacks (it has Python 3.12 with torch, torchvision, safetensors, timm, transformers,
# huggingface-hub, regex, pillow, numpy, tqdm, httpx, pytest, and cannot download anything):
# open_clip, diffusers and their small dependencies, pinned to this project's versions.
#
#   bash scripts/gpu-wheels.sh
#   device run, carry [".whl"]:  OUT=$OUT bash scripts/gpu-check.sh
#
# What travels to the device is capped at 64 MiB and the tracked tree (the bundled weights are
# 55.6 MiB of it) is about 61.5, so the packages go as one xz archive of their installed files
# (3.5 MiB), with open_clip's BPE vocabulary stored as plain text (xz packs it smaller than its
# gzip; gpu-check.sh gzips it back). Even so the call needs docs' pictures out of the working
# tree (scripts/gpu-check.sh says how).
set -euo pipefail
PYTHON="${PYTHON:-.venv/bin/python}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site="$work/site"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d "$work/wheels" \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 diffusers==0.42.1 importlib_metadata==10.2.0
"$PYTHON" -m pip install -q --no-deps --no-compile --target "$site" "$work"/wheels/*.whl
rm -rf "${site:?}/open_clip_train" "${site:?}/bin"

# diffusers travels whole: which of its modules load depends on the transformers release beside
# it (cutting it down to what loaded here, with transformers 5.24, broke its import on the GPU
# machine's 5.17 on 2026-12-04). Only its bytecode caches go.
find "$site" -name __pycache__ -type d -prune -exec rm -rf {} +
gunzip "$site/open_clip/bpe_simple_vocab_16e6.txt.gz"
rm -rf .whl && mkdir -p .whl
tar -C "$site" -cJf .whl/site.tar.xz .
du -h .whl/site.tar.xz
