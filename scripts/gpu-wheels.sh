#!/usr/bin/env bash
# Fetch, on this machine, the Python packages that scripts/gpu-check.sh needs and the lent GPU
# machine lacks (it has Python 3.12 with torch, torchvision, safetensors, timm, transformers,
# huggingface-hub, regex, pillow, numpy, tqdm, httpx, pytest; it cannot download anything).
# They go to .whl/ (git-ignored), which the device call carries:
#
#   bash scripts/gpu-wheels.sh
#   device run, carry [".whl"]:  OUT=$OUT bash scripts/gpu-check.sh
#
# All are pure-Python wheels, pinned to the versions the project's own environment runs.
set -euo pipefail
PYTHON="${PYTHON:-.venv/bin/python}"
rm -rf .whl && mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 diffusers==0.42.1 importlib_metadata==10.2.0 \
    structlog==26.1.0
ls -1 .whl
du -sh .whl
