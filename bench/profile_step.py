"""``python -m bench.profile_step``: where one network forward spends its time, on a CPU or a GPU.

``bench.compare`` says how fast a forward is; this says why. It runs one stage's network the way
the pipeline calls it (an ``ExecutionConfig`` variant of ``bench.compare``), optionally diffusers'
network at the same widths beside it, and ``torch.profiler`` records a few forwards:

- wall time per forward (timed apart from the profiler, which slows the host side);
- the device's busy time per forward: the sum of CUDA kernel times on a GPU, of operator self
  times on a CPU; ``busy / wall`` near 1 means the forward is bound by its kernels, far under 1
  that the host (Python, dispatch, launches) is the limit, which is what CUDA graphs remove;
- kernels (GPU) or operators (CPU) launched per forward, and the ones that take the most time.

The first GPU lease (2026-12-04) measured the bundled decoder at 20.6 ms a step at batch 2 and
34 ms at batch 32 for about 1 GFLOP a row, and CUDA graphs changed neither: this tells whether
that time is the host's or the kernels'. Writes ``<out>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from bench.compare import VARIANTS, build_ours, forward_inputs
from bench.measure import synchronize
from bench.peer import build_peer, karlo_config
from models.configs import StageName, get_config
from models.host_memory import keep_freed_memory

NETWORKS: tuple[StageName, ...] = ("prior", "decoder", "sr256", "sr1024")
PEER_NETWORKS = {"prior": "prior", "decoder": "decoder", "sr256": "super_res_first"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__)
    parser.add_argument("--config", choices=("bundled", "tiny", "karlo"), default="bundled")
    parser.add_argument("--weights", default=None, help="weights directory for --config bundled")
    parser.add_argument("--stage", choices=NETWORKS, default="decoder")
    parser.add_argument(
        "--batch", type=int, default=2, help="rows per forward (guidance doubles a request's)"
    )
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--peer", action="store_true", help="also diffusers' network (not for sr1024)")
    parser.add_argument("--forwards", type=int, default=5, help="forwards timed and profiled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="kernels / operators listed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="output stem (default: print only)")
    args = parser.parse_args(argv)
    if args.peer and args.stage not in PEER_NETWORKS:
        parser.error(f"diffusers has no {args.stage} network")
    return args


def profile_forward(
    run: Callable[[], Any], device: torch.device, forwards: int, warmup: int, top: int
) -> dict[str, Any]:
    """Wall ms per forward, the device's busy ms per forward and what it was busy with."""
    with torch.no_grad():
        for _ in range(warmup):
            run()
        walls = []
        for _ in range(forwards):
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            walls.append(time.perf_counter() - started)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(forwards):
                run()
            synchronize(device)
    events = prof.key_averages()
    if device.type == "cuda":
        # Device-side events: kernels and memcpy/memset, each with its own device time.
        busy = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        time_of: Callable[[Any], float] = lambda e: e.self_device_time_total  # noqa: E731
    else:
        busy = [e for e in events if e.key.startswith("aten::")]
        time_of = lambda e: e.self_cpu_time_total  # noqa: E731
    busy = [e for e in busy if time_of(e) > 0]
    busy_us = sum(time_of(e) for e in busy) / forwards
    launches = sum(e.count for e in busy) / forwards
    wall_ms = statistics.median(walls) * 1e3
    ranked = sorted(busy, key=time_of, reverse=True)[:top]
    return {
        "wall_ms": round(wall_ms, 3),
        "busy_ms": round(busy_us / 1e3, 3),
        "busy_fraction": round(busy_us / 1e3 / wall_ms, 3) if wall_ms else None,
        "launches_per_forward": round(launches, 1),
        "top": [
            {
                "name": e.key[:90],
                "ms_per_forward": round(time_of(e) / forwards / 1e3, 3),
                "calls_per_forward": round(e.count / forwards, 1),
                "share": round(time_of(e) / forwards / busy_us, 3) if busy_us else None,
            }
            for e in ranked
        ],
    }


def contenders(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], Any]]:
    """What gets profiled: ours as the pipeline calls it, and diffusers' network with ``--peer``."""
    # --config bundled: build_ours loads the weights, whose manifest carries the config.
    sizes = karlo_config() if args.config == "karlo" else get_config("tiny")
    build = SimpleNamespace(config=args.config, weights=args.weights, dtype=args.dtype)
    pipeline = build_ours(build, sizes, device, VARIANTS[args.variant])  # type: ignore[arg-type]
    config = pipeline.config
    (x, t, kwargs), peer_kwargs = forward_inputs(config, args.stage, args.batch, device)
    call = pipeline.network_call(args.stage)
    runs: dict[str, Callable[[], Any]] = {f"ours:{args.variant}": lambda: call(x, t, **kwargs)}
    if args.peer:
        with device:
            peer = build_peer(config, config.prior.context_length).to(device)
        network = getattr(peer, PEER_NETWORKS[args.stage])
        if pipeline.dtype != torch.float32:
            network = network.to(pipeline.dtype)
        cast = {k: v.to(pipeline.dtype) if v.is_floating_point() else v for k, v in peer_kwargs.items()}
        runs["diffusers"] = lambda: network(**cast)
    return runs


def report(results: dict[str, Any]) -> str:
    lines = [
        f"## {results['stage']} forward, batch {results['batch']}, {results['config']} on "
        f"{results['device']} ({results['device_name']})",
        "",
        "| contender | wall ms | busy ms | busy / wall | launches |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results["contenders"].items():
        lines.append(
            f"| {name} | {r['wall_ms']:.2f} | {r['busy_ms']:.2f} | {r['busy_fraction']:.2f} | "
            f"{r['launches_per_forward']:.0f} |"
        )
    for name, r in results["contenders"].items():
        lines += [
            "",
            f"### {name}: the most time",
            "",
            "| kernel / operator | ms | calls | share |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{k['name']}` | {k['ms_per_forward']:.3f} | {k['calls_per_forward']:.0f} | {k['share']:.1%} |"
            for k in r["top"]
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "config": args.config,
        "stage": args.stage,
        "batch": args.batch,
        "variant": args.variant,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "contenders": {},
    }
    for name, run in contenders(args, device).items():
        print(f"profiling {name}", flush=True)
        results["contenders"][name] = profile_forward(run, device, args.forwards, args.warmup, args.top)
    text = report(results)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        args.out.with_suffix(".md").write_text(text + "\n")
        print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
