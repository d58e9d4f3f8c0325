"""``make bench`` / ``python -m bench.compare``: ours against diffusers' UnCLIPPipeline, side by side.

In ONE process, interleaved (each repeat runs every contender once, the order alternating), so
whatever else loads the machine weighs on both alike:

1. peak probes (matmul and 3×3 convolution, fp32 and bf16) on each device;
2. one network forward at equal FLOPs: our prior, decoder and 64→256 upsampler (rebuilt without
   the space-to-depth stem) against diffusers' at the same widths;
3. end to end at equal widths and steps: text encodings → prior → decoder 64² → 256², our chain as
   shipped (with each fast-path variant asked for) against diffusers' pipeline; per stage and in
   total: latency, images/s, FLOPs per image (``FlopCounterMode``), achieved GFLOP/s, the fraction
   of the measured peak, peak memory. ``--sizes 1024`` adds our 1024² chain (diffusers has none).

Writes ``bench/results/compare-<host>.json`` and ``.md``. docs/benchmark.md explains the method.
``--quick`` is a seconds-long smoke run (tests use it); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.measure import StageClock, flop_counter, peak_for, peak_memory, peak_probes, timed
from bench.peer import build_peer, flop_matched, karlo_config
from bench.report import markdown_report
from models.clip import TextEncoding
from models.configs import (
    DEFAULT_AUTOCAST_STAGES,
    STAGES,
    UNET_STAGES,
    ModelConfig,
    SamplingConfig,
    StageName,
    get_config,
)
from models.execution import BASELINE, ExecutionConfig, network_call, prepare_network
from models.factory import create_stage_module
from models.host_memory import keep_freed_memory
from models.pipeline import GenerationRequest, UnclipPipeline, load_pipeline

RESULTS = Path(__file__).parent / "results"
VARIANTS: dict[str, ExecutionConfig] = {
    "baseline": BASELINE,
    "default": ExecutionConfig(),
    "fp32": replace(ExecutionConfig(), autocast="off"),
    "fused-off": replace(ExecutionConfig(), fused_attention=False),
    "no-micro-batch": replace(ExecutionConfig(), micro_batch_sr256=0, micro_batch_sr1024=0),
    "nchw": replace(ExecutionConfig(), channels_last=False),
    # The default before channels_last became CPU-only: NHWC on CUDA too.
    "channels-last-gpu": replace(ExecutionConfig(), channels_last_devices=("cpu", "cuda")),
    "nchw-fp32": replace(ExecutionConfig(), channels_last=False, autocast="off"),
    "bf16-all": replace(ExecutionConfig(), autocast_stages=UNET_STAGES),
    # The decoder in float32 on every device (the default on a CPU with native bf16 autocasts it).
    "fp32-decoder": replace(ExecutionConfig(), autocast_stages=DEFAULT_AUTOCAST_STAGES),
    "cast-per-call": replace(ExecutionConfig(), cast_weights_once=False),
    "compile": replace(ExecutionConfig(), compile=True),
    "compile-decoder": replace(ExecutionConfig(), compile=True, compile_stages=("decoder",)),
    "cuda-graphs": replace(ExecutionConfig(), cuda_graphs=True),
    "no-fold": replace(ExecutionConfig(), fold_scale_shift=False),
    "no-in-place": replace(ExecutionConfig(), in_place_activations=False),
    "separate-projections": replace(ExecutionConfig(), fuse_embedding_projections=False),
    # On CUDA, autocast runs GroupNorm in float32 whatever the switch says: the switch shows
    # alone only on stages that do not autocast (the decoder) or with autocast off.
    "native-norms": replace(ExecutionConfig(), native_norms_on_gpu=True),
    "fp32-native-norms": replace(ExecutionConfig(), autocast="off", native_norms_on_gpu=True),
    "channels-last-gpu-fp32-native-norms": replace(
        ExecutionConfig(), channels_last_devices=("cpu", "cuda"), autocast="off", native_norms_on_gpu=True
    ),
}
PEER_STAGES = {
    "prior": ("prior",),
    "decoder": ("text_proj", "decoder"),
    "sr256": ("super_res_first", "super_res_last"),
}


# -- inputs ---------------------------------------------------------------------------------------


def text_inputs(config: ModelConfig, n: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Random caption encodings for both sides: ours (CLIP states of ``text_width``) and diffusers'
    (``text_model_output``: states as wide as the embedding, which its projections expect)."""
    g = torch.Generator().manual_seed(seed)
    d, width, length = config.prior.embed_dim, config.prior.text_width, config.prior.context_length
    embed = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    mask = torch.arange(length)[None, :] < 12  # 12 real tokens of each caption
    mask = mask.expand(n, -1).clone()
    ours = TextEncoding(embed, torch.randn(n, length, width, generator=g), mask)
    peer = (embed.to(device), torch.randn(n, length, d, generator=g).to(device))
    return {"ours": ours.to(device), "peer": peer, "peer_mask": mask.to(device)}


def sampling_for(config: ModelConfig, steps: int | None) -> SamplingConfig:
    if steps is None:
        return config.sampling
    return config.sampling.with_overrides(
        {s: {"steps": steps} for s in ("prior", "decoder", "sr256", "sr1024")}
    )


def build_ours(
    args: argparse.Namespace, config: ModelConfig, device: torch.device, execution: ExecutionConfig
) -> UnclipPipeline:
    """Our pipeline: the bundled weights (``--config bundled``) or random weights of ``config``."""
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if args.config == "bundled":
        return load_pipeline(args.weights, device=str(device), dtype=dtype, execution=execution)
    torch.manual_seed(0)
    with device:  # initialise on the device: a Karlo-sized chain is 2.6 B parameters
        modules = {stage: create_stage_module(stage, config) for stage in STAGES}
    return UnclipPipeline(
        config, modules, model_id=f"random-{config.name}", device=device, dtype=dtype, execution=execution
    )


# -- end to end -----------------------------------------------------------------------------------


def run_ours(
    pipeline: UnclipPipeline, text: TextEncoding, size: int, sampling: SamplingConfig, clock: StageClock
) -> None:
    requests = [GenerationRequest("", 1, seed) for seed in range(len(text))]
    for stage in ("prior", *UNET_STAGES):
        network = pipeline.network_call(stage).network
        if isinstance(network, torch.nn.Module):
            clock.attach(stage, network)
    try:
        pipeline.generate(requests, size, sampling, text=text)
    finally:
        clock.detach()


def run_peer(pipe: Any, inputs: dict[str, Any], sampling: SamplingConfig, clock: StageClock) -> None:
    for stage, names in PEER_STAGES.items():
        for name in names:
            clock.attach(stage, getattr(pipe, name))
    # The caption encodings arrive in float32; the pipeline's projections take its own dtype.
    text_model_output = tuple(tensor.to(pipe.prior.dtype) for tensor in inputs["peer"])
    try:
        pipe(
            text_model_output=text_model_output,
            text_attention_mask=inputs["peer_mask"],
            prior_num_inference_steps=sampling.prior.steps,
            decoder_num_inference_steps=sampling.decoder.steps,
            super_res_num_inference_steps=sampling.sr256.steps,
            prior_guidance_scale=sampling.prior.guidance,
            decoder_guidance_scale=sampling.decoder.guidance,
            generator=torch.Generator(device=clock.device).manual_seed(0),
            output_type="np",
        )
    finally:
        clock.detach()


Runner = Callable[[StageClock], None]


def count_flops(run: Runner, device: torch.device, batch: int) -> dict[str, float]:
    """GFLOP per image by stage (and ``total``), from one counted run of ``batch`` images."""
    counter = flop_counter()
    clock = StageClock(device, counter)
    with counter:
        run(clock)
    per_image = {stage: flops / batch / 1e9 for stage, flops in clock.flops.items()}
    per_image["total"] = sum(per_image.values())
    return per_image


def timed_run(run: Runner, device: torch.device) -> dict[str, Any]:
    clock = StageClock(device)
    with peak_memory(device) as memory, timed(device) as t:
        run(clock)
    return {"wall_s": t.wall_s, "cpu_s": t.cpu_s, "stages_s": clock.seconds(), "peak_mib": memory["peak_mib"]}


def summarise(runs: list[dict[str, Any]], batch: int, flops: dict[str, float], peak: float) -> dict[str, Any]:
    """Medians over repeats, per image, with FLOP rates against the device's measured peak."""
    wall = statistics.median(r["wall_s"] for r in runs)
    stages = {s: statistics.median(r["stages_s"].get(s, 0.0) for r in runs) for s in runs[0]["stages_s"]}
    gflops_per_s = flops["total"] * batch / wall
    return {
        "batch": batch,
        "repeats": len(runs),
        "s_per_image": wall / batch,
        "images_per_s": batch / wall,
        "cpu_s_per_image": statistics.median(r["cpu_s"] for r in runs) / batch,
        "stage_s_per_image": {s: v / batch for s, v in stages.items()},
        "gflop_per_image": flops,
        "gflop_per_s": gflops_per_s,
        "fraction_of_peak": gflops_per_s / peak,
        "stage_gflop_per_s": {s: flops.get(s, 0.0) * batch / v for s, v in stages.items() if v > 0},
        "peak_mib": max(r["peak_mib"] for r in runs),
        "wall_s_runs": [r["wall_s"] for r in runs],
    }


def end_to_end(
    args: argparse.Namespace,
    config: ModelConfig,
    device: torch.device,
    probes: dict[str, float],
    rows: list[dict[str, Any]],
    measured: Callable[[], object],
) -> None:
    """Every contender at every size and batch, interleaved repeat by repeat, appended to ``rows``
    (``measured`` is called after each batch size)."""
    sampling = sampling_for(config, args.steps)
    contenders: dict[str, tuple[Any, bool]] = {}
    for name in args.variants:
        execution = VARIANTS[name]
        pipeline = build_ours(args, config, device, execution)
        # Against the bf16 peak only where some stage really computes in bf16 (autocast asks for
        # it only where the device has bf16 arithmetic).
        bf16 = pipeline.dtype == torch.bfloat16 or any(
            execution.autocast_dtype(stage, device) is not None for stage in UNET_STAGES
        )
        contenders[f"ours:{name}"] = (pipeline, bf16)
    if not args.no_peer:
        with device:
            pipe = build_peer(config, config.prior.context_length).to(device)
        if args.dtype == "bfloat16" or (args.dtype is None and device.type == "cuda"):
            pipe = pipe.to(device, torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)
        contenders["diffusers"] = (pipe, pipe.prior.dtype == torch.bfloat16)
    for size in args.sizes:
        for batch in args.batches:
            rows += _compare_at(args, config, device, probes, contenders, sampling, size, batch)
            measured()


def _runner(name: str, contender: Any, inputs: dict[str, Any], size: int, sampling: SamplingConfig) -> Runner:
    if name == "diffusers":
        return lambda clock: run_peer(contender, inputs, sampling, clock)
    return lambda clock: run_ours(contender, inputs["ours"], size, sampling, clock)


def _compare_at(
    args: argparse.Namespace,
    config: ModelConfig,
    device: torch.device,
    probes: dict[str, float],
    contenders: dict[str, tuple[Any, bool]],
    sampling: SamplingConfig,
    size: int,
    batch: int,
) -> list[dict[str, Any]]:
    inputs = text_inputs(config, batch, device)
    names = [n for n in contenders if size == 256 or n != "diffusers"]
    runners = {n: _runner(n, contenders[n][0], inputs, size, sampling) for n in names}
    for name in names:  # warm-up: first-call allocations, oneDNN primitive caches, compiles
        for _ in range(args.warmup):
            runners[name](StageClock(device))
    flops = {
        n: count_flops(
            _runner(n, contenders[n][0], text_inputs(config, 1, device), size, sampling), device, 1
        )
        for n in names
    }
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else list(reversed(names))
        for name in order:
            runs[name].append(timed_run(runners[name], device))
        print(f"  {device.type} {size}² batch {batch} repeat {repeat + 1}/{args.repeats}", flush=True)
    rows = []
    for name in names:
        peak = peak_for(probes, contenders[name][1])
        rows.append({"contender": name, "size": size, **summarise(runs[name], batch, flops[name], peak)})
    peer = next((r for r in rows if r["contender"] == "diffusers"), None)
    for row in rows:
        row["x_diffusers"] = peer["s_per_image"] / row["s_per_image"] if peer else None
    return rows


# -- one forward at equal FLOPs -------------------------------------------------------------------


Inputs = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]


def forward_inputs(
    config: ModelConfig, stage: StageName, n: int, device: torch.device
) -> tuple[Inputs, dict[str, Any]]:
    """One forward of ``n`` rows: ours as (x, t, kwargs), diffusers' as keyword arguments."""
    g = torch.Generator().manual_seed(n)
    t = torch.full((n,), 500, dtype=torch.long, device=device)
    text = text_inputs(config, n, device)
    if stage == "prior":
        d = config.prior.embed_dim
        x = torch.randn(n, d, generator=g).to(device)
        enc = text["ours"]
        ours = {"text_embed": enc.embedding, "text_tokens": enc.tokens, "text_mask": enc.mask}
        peer = {
            "hidden_states": x,
            "timestep": t,
            "proj_embedding": text["peer"][0],
            "encoder_hidden_states": text["peer"][1],
            "attention_mask": text["peer_mask"],
        }
        return (x, t, ours), peer
    unet = getattr(config, stage).unet
    x = torch.randn(n, 3, unet.image_size, unet.image_size, generator=g).to(device)
    if stage == "decoder":
        ctx_dim, tokens = unet.model_channels * 4, unet.clip_context_tokens + config.prior.context_length
        enc = text["ours"]
        ours = {"clip_embed": enc.embedding, "text_tokens": enc.tokens, "text_mask": enc.mask}
        peer = {
            "sample": x,
            "timestep": t,
            "encoder_hidden_states": torch.randn(n, tokens, ctx_dim, generator=g).to(device),
            "class_labels": torch.randn(n, ctx_dim, generator=g).to(device),
            "attention_mask": torch.ones(n, tokens, dtype=torch.bool, device=device),
        }
        return (x, t, ours), peer
    low = getattr(config, stage).low_res_size
    low_res = torch.randn(n, 3, low, low, generator=g).to(device)
    up = F.interpolate(low_res, size=x.shape[-2:], mode="bicubic")
    return (x, t, {"low_res": low_res}), {"sample": torch.cat([x, up], dim=1), "timestep": t}


def forwards(
    args: argparse.Namespace,
    config: ModelConfig,
    device: torch.device,
    probes: dict[str, float],
    rows: list[dict[str, Any]],
    measured: Callable[[], object],
) -> None:
    """Each network's forward, ours without the stem against diffusers', interleaved, appended
    to ``rows`` (``measured`` is called after each network and batch)."""
    matched = flop_matched(config)
    with device:
        peer = build_peer(config, config.prior.context_length).to(device)
    peer_nets: dict[StageName, Any] = {
        "prior": peer.prior,
        "decoder": peer.decoder,
        "sr256": peer.super_res_first,
    }
    dtype = (
        torch.bfloat16
        if (args.dtype == "bfloat16" or (args.dtype is None and device.type == "cuda"))
        else None
    )
    for stage, peer_net in peer_nets.items():
        torch.manual_seed(0)
        with device:
            module = create_stage_module(stage, matched).to(device).eval().requires_grad_(False)
        if dtype is not None:
            module, peer_net = module.to(dtype), peer_net.to(dtype)
        for batch in args.batches:
            rows += _forward_at(args, matched, stage, module, peer_net, batch, device, probes, dtype)
            measured()


def _forward_at(
    args: argparse.Namespace,
    config: ModelConfig,
    stage: StageName,
    module: torch.nn.Module,
    peer_net: torch.nn.Module,
    batch: int,
    device: torch.device,
    probes: dict[str, float],
    dtype: torch.dtype | None,
) -> list[dict[str, Any]]:
    (x, t, kwargs), peer_kwargs = forward_inputs(config, stage, batch, device)
    calls: dict[str, Callable[[], Any]] = {}
    bf16: dict[str, bool] = {}
    for name in args.variants:
        execution = VARIANTS[name]
        # A copy per variant: the switches convert modules in place (layout, memory format).
        network = prepare_network(stage, copy.deepcopy(module), execution, device)
        ours_call = network_call(stage, network, dtype or torch.float32, execution, device)
        calls[f"ours:{name}"] = partial(ours_call, x, t, **kwargs)
        bf16[f"ours:{name}"] = dtype is not None or execution.autocast_dtype(stage, device) is not None
    cast = {
        k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in peer_kwargs.items()
    }
    calls["diffusers"] = partial(peer_net, **cast)
    bf16["diffusers"] = dtype is not None
    with torch.no_grad():
        flops: dict[str, float] = {}
        for name, run in calls.items():
            counter = flop_counter()
            with counter:
                run()
            flops[name] = counter.get_total_flops() / batch / 1e9
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.warmup):
            for run in calls.values():
                run()
        for repeat in range(args.forward_repeats):
            for name in calls if repeat % 2 == 0 else list(reversed(calls)):
                with timed(device) as timing:
                    calls[name]()
                times[name].append(timing.wall_s)
    rows: list[dict[str, Any]] = []
    for name, values in times.items():
        seconds = statistics.median(values)
        rate = flops[name] * batch / seconds
        rows.append(
            {
                "network": stage,
                "contender": name,
                "batch": batch,
                "ms_per_forward": seconds * 1e3,
                "rows_per_s": batch / seconds,
                "gflop_per_row": flops[name],
                "gflop_per_s": rate,
                "fraction_of_peak": rate / peak_for(probes, bf16[name]),
            }
        )
    peer_s = statistics.median(times["diffusers"])
    for row in rows:
        row["x_diffusers"] = peer_s / (float(row["ms_per_forward"]) / 1e3)
    print(f"  {device.type} forward {stage} batch {batch}", flush=True)
    return rows


# -- the run --------------------------------------------------------------------------------------


def peer_version() -> str:
    """diffusers' version, or why it does not import (a ``--no-peer`` run goes on without it)."""
    try:
        import diffusers
    except Exception as error:  # an ImportError, or a transformers release it cannot work with
        return f"unavailable ({type(error).__name__})"
    return str(diffusers.__version__)


def environment(device: torch.device, kept_freed_memory: bool) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "malloc": "keeps freed memory" if kept_freed_memory else "glibc default",
        "torch": torch.__version__,
        "diffusers": peer_version(),
        "python": platform.python_version(),
        "load_1min_start": os.getloadavg()[0],
    }


def run_device(
    args: argparse.Namespace,
    config: ModelConfig,
    device: torch.device,
    result: dict[str, Any],
    measured: Callable[[], object],
) -> None:
    """Measure on ``device`` into ``result`` (one entry of the results' ``devices``)."""
    print(f"{device}: peak probes", flush=True)
    result["environment"] = environment(device, args.kept_freed_memory)
    result["probes_gflop_per_s"] = probes = peak_probes(device, quick=args.quick)
    if not args.skip_forward:
        forwards(args, config, device, probes, result.setdefault("forward", []), measured)
    if not args.skip_end_to_end:
        end_to_end(args, config, device, probes, result.setdefault("end_to_end", []), measured)
    result["environment"]["load_1min_end"] = os.getloadavg()[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        default="bundled",
        choices=["bundled", "tiny", "karlo"],
        help="bundled: the shipped weights; tiny/karlo: random weights of that size",
    )
    p.add_argument("--weights", default=None, help="weights directory for --config bundled")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--sizes", type=int, nargs="+", default=[256], help="256 (both) and/or 1024 (ours only)")
    p.add_argument("--repeats", type=int, default=3, help="timed end-to-end runs per contender and batch")
    p.add_argument("--forward-repeats", type=int, default=5, help="timed forwards per network and batch")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="override every stage's steps")
    p.add_argument("--variants", nargs="+", default=["baseline", "fp32", "default"], choices=sorted(VARIANTS))
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="weights' dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep freed memory, as the worker does; "
        "both contenders run under the same allocator either way)",
    )
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--skip-end-to-end", action="store_true")
    p.add_argument("--no-peer", action="store_true", help="ours only (no diffusers)")
    p.add_argument("--quick", action="store_true", help="a smoke run: batch 1, 1 repeat, 2 steps, no warm-up")
    p.add_argument(
        "--out", type=Path, default=None, help="output stem (default bench/results/compare-<host>)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.repeats, args.forward_repeats, args.warmup = [1], 1, 1, 0
        args.steps = args.steps or 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.kept_freed_memory = not args.malloc_default and keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights must not wander into slow denormals
    config = karlo_config() if args.config == "karlo" else get_config("tiny")
    if args.config == "bundled":
        config = load_pipeline(args.weights).config
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    started = time.time()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": config.name if args.config != "bundled" else "bundled",
        "sampling": asdict(sampling_for(config, args.steps)),
        "devices": {},
    }
    stem = args.out or RESULTS / f"compare-{platform.node() or 'machine'}"
    stem.parent.mkdir(parents=True, exist_ok=True)

    def write() -> str:
        # After every measured group, not only at the end: a run stopped by a time limit (a lent
        # GPU's short lease) still leaves what it measured.
        results["minutes"] = (time.time() - started) / 60
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        report = markdown_report(results)
        stem.with_suffix(".md").write_text(report)
        return report

    for name in devices:
        results["devices"][name] = {}
        run_device(args, config, torch.device(name), results["devices"][name], write)
    print(write())
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
