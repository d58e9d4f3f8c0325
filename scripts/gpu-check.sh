#!/usr/bin/env bash
# Everything a lent GPU session should measure, in one command (docs/benchmark.md, "On a GPU";
# issue 17's GPU targets), in order of worth, each step under its own time limit (120 + 3 × 30 +
# 130 + 120 + 100 s, inside the device tool's 10 minutes a command; a step cut short keeps what it
# measured, bench.compare writes after every group):
#   1. karlo-forward: each network's forward at Karlo's sizes in bf16, ours against diffusers,
#      with the switches that the first lease (2026-12-04) pointed at: our sr256 ran at 0.66x
#      diffusers' per forward at batch 16 (channels_last; float32 GroupNorm copies; autocast on
#      top of bf16 weights, which sends GroupNorm through float32 again). Variants: default
#      (NCHW on CUDA since channels_last became CPU-only: CUDA's GroupNorm converts a
#      channels-last map to NCHW and back), channels-last-gpu (the first lease's layout), fp32
#      (autocast off, the network still bf16), native-norms, and native norms with autocast off,
#      NCHW and channels-last.
#   2. profiles: where a forward's time goes (bench.profile_step, ours beside diffusers): the
#      bundled decoder at batch 2 and 32 (20.6 and 34 ms a step on the first lease for about
#      1 GFLOP a row: host-bound or kernel-bound?) and sr256 at batch 32; tables in run.log.
#   3. karlo: end to end at batch 1 and 16.
#   4. the CUDA tests (the CPU tests of the same file run in CI; the compiled-UNet test alone
#      outlasts a minute on that machine's CPU). No Redis there: only tests that need none.
#   5. bundled: what CUDA graphs buy on the bundled model, with torch's recompile and CUDA-graph
#      logs (on 2026-12-04 they bought nothing, unexplained).
# Results go to $OUT (at most 8 files come back): env.txt, run.log (everything printed, the tests
# and logs too), karlo-forward.{json,md}, karlo.{json,md}, bundled.{json,md}.
#
#   bash scripts/gpu-wheels.sh                 # here, once: the packages the GPU machine lacks
#   OUT=$OUT bash scripts/gpu-check.sh         # there (carry .whl), timeout_s 580
#
# What travels is capped at 64 MiB: with the archive, the tracked tree is over it (the bundled
# weights 55.6 MiB; a training run carried in runs-in-progress/ over 100 more), so delete docs'
# pictures and the carried run from the working tree for the call (`git ls-files docs | grep -E
# '\.(png|gif)$' | xargs rm; rm -rf runs-in-progress`, then `git checkout -- docs runs-in-progress`).
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
    FORWARD_VARIANTS=(default)
    BUNDLED=(--quick)
    GRAPHS=(default)
    PROFILE=(--config tiny --forwards 1 --warmup 1)
    PROFILE_BATCHES=(1)
else
    DEVICE=cuda
    KARLO=(--config karlo --batches 1 16 --repeats 2 --forward-repeats 3)
    FORWARD_VARIANTS=(default channels-last-gpu fp32 native-norms fp32-native-norms channels-last-gpu-fp32-native-norms)
    BUNDLED=(--batches 1 16 --repeats 2 --skip-forward --no-peer)
    GRAPHS=(default cuda-graphs)
    PROFILE=(--config bundled --peer)
    PROFILE_BATCHES=(2 32)
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

step 120 karlo-forward "$PYTHON" -m bench.compare --devices "$DEVICE" --skip-end-to-end \
    --variants "${FORWARD_VARIANTS[@]}" "${KARLO[@]}" --out "$OUT/karlo-forward"
for batch in "${PROFILE_BATCHES[@]}"; do
    step 30 "profile-decoder-$batch" "$PYTHON" -m bench.profile_step --device "$DEVICE" --stage decoder \
        --batch "$batch" "${PROFILE[@]}"
done
step 30 profile-sr256 "$PYTHON" -m bench.profile_step --device "$DEVICE" --stage sr256 \
    --batch "${PROFILE_BATCHES[-1]}" "${PROFILE[@]}"
step 130 karlo "$PYTHON" -m bench.compare --devices "$DEVICE" --skip-forward --variants default \
    "${KARLO[@]}" --out "$OUT/karlo"
step 120 tests "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/models/test_fast_path.py
TORCH_LOGS="recompiles,graph_breaks,perf_hints" step 100 bundled "$PYTHON" -m bench.compare \
    --devices "$DEVICE" --variants "${GRAPHS[@]}" "${BUNDLED[@]}" --out "$OUT/bundled"
ls -l "$OUT"
