#!/usr/bin/env bash
# Everything a lent GPU session should measure, in one command (docs/benchmark.md, "On a GPU";
# issue 17's GPU targets): the CUDA tests, then ours against diffusers at Karlo's sizes in bf16
# (end to end at batch 1 and 16, and each network's forward with the % of the GPU's bf16 peak),
# then what CUDA graphs buy on the bundled model. Results go to $OUT (at most 8 files come back
# from the device machine): env.txt, tests.log, karlo.{json,md}, bundled.{json,md}, run.log. The
# steps are capped at 90 + 300 + 150 s, inside the device tool's 10 minutes a command.
#
#   bash scripts/gpu-wheels.sh                 # here, once: the packages the GPU machine lacks
#   OUT=$OUT bash scripts/gpu-check.sh         # there (carry .whl), timeout_s 600
#
# GPU_CHECK_SMOKE=1 runs the same steps on the CPU in seconds (tiny config, --quick): it checks
# the script, not the GPU.
set -uo pipefail
OUT="${OUT:-runs/gpu-check}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1

if [ -f .whl/site.tar.xz ]; then  # made by scripts/gpu-wheels.sh
    rm -rf /tmp/unclip-site && mkdir -p /tmp/unclip-site
    tar -C /tmp/unclip-site -xJf .whl/site.tar.xz || exit 1
    gzip /tmp/unclip-site/open_clip/bpe_simple_vocab_16e6.txt || exit 1
    export PYTHONPATH="/tmp/unclip-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
    DEVICE=cpu
    KARLO=(--config tiny --quick)
    BUNDLED=(--quick)
    GRAPHS=default
else
    DEVICE=cuda
    KARLO=(--config karlo --batches 1 16 --repeats 2 --forward-repeats 3)
    BUNDLED=(--batches 1 16 --repeats 3 --skip-forward --no-peer)
    GRAPHS="default cuda-graphs"
fi

{
    date -u
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    "$PYTHON" - <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("open_clip", "diffusers", "transformers"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # report, do not stop: the steps below say what it breaks
        print(name, "unavailable:", type(error).__name__, error)
PY
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step SECONDS NAME COMMAND...: run with a time limit, keep going on failure
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local started=$SECONDS
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - started))s"
}

# The CUDA tests (skipped without CUDA) and the fast path's output checks. No Redis there: only
# tests that need none.
step 90 tests "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/models/test_fast_path.py 2>&1 | tee "$OUT/tests.log"
step 300 karlo "$PYTHON" -m bench.compare --devices "$DEVICE" --variants default "${KARLO[@]}" \
    --out "$OUT/karlo"
# shellcheck disable=SC2086  # GRAPHS is a list of variant names
step 150 bundled "$PYTHON" -m bench.compare --devices "$DEVICE" --variants $GRAPHS "${BUNDLED[@]}" \
    --out "$OUT/bundled"
ls -l "$OUT"
