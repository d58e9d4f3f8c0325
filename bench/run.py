"""``make bench``: parameter counts, FLOPs per image, and measured per-stage timings.

Prints markdown tables (for the README) and writes them as JSON to bench/results/<host>.json.
Usage: python -m bench.run [--weights DIR | --random tiny] [--device cpu] [--sizes 64 256 1024]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from models.configs import get_config
from models.pipeline import GenerationRequest, load_pipeline
from models.profiling import stage_costs


def machine_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"


def cost_table(preset: str, size: int) -> list[dict]:
    rows = []
    for cost in stage_costs(get_config(preset), size=size):
        rows.append(
            {
                "config": preset,
                "stage": cost.stage,
                "parameters": cost.parameters,
                "GFLOP per forward": round(cost.forward_flops / 1e9, 3),
                "evaluations per image": cost.evaluations_per_image,
                "GFLOP per image": round(cost.flops_per_image / 1e9, 1),
            }
        )
    return rows


def time_stages(weights: str, device: str, size: int, batch: int, repeats: int) -> dict:
    pipeline = load_pipeline(weights, device=device)
    requests = [
        GenerationRequest(f"a small red circle in the center on a white background {k}", seed=k)
        for k in range(batch)
    ]
    pipeline.generate(requests[:1], 64)  # warm-up
    best: dict[str, float] = {}
    for _ in range(repeats):
        output = pipeline.generate(requests, size)
        for stage, seconds in output.timings.items():
            best[stage] = min(best.get(stage, float("inf")), seconds)
    return {
        "size": size,
        "batch": batch,
        "seconds": best,
        "per_image": {s: v / batch for s, v in best.items()},
    }


def markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(f"{row[h]:,}" if isinstance(row[h], int) else str(row[h]) for h in header) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=None, help="model dir (default: bundled model)")
    parser.add_argument("--random", metavar="PRESET", help="time random weights of a preset instead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results: dict = {"machine": machine_description(args.device), "when": time.strftime("%Y-%m-%d")}
    results["costs"] = {p: cost_table(p, 1024) for p in ("tiny", "paper")}
    for preset, rows in results["costs"].items():
        print(f"\n### {preset}: parameters and FLOPs per 1024² image (default sampling)\n\n{markdown(rows)}")
    weights = f"random:{args.random}" if args.random else args.weights
    timings = []
    for size in args.sizes:
        print(f"timing size {size} ...", flush=True)
        timings.append(time_stages(weights, args.device, size, args.batch, args.repeats))
    results["timings"] = timings
    stages = ["clip", "prior", "decoder", "sr256", "sr1024"]  # every row gets every column
    rows = [
        {"size": t["size"], "batch": t["batch"], **{s: f"{t['per_image'].get(s, 0.0):.3f}" for s in stages}}
        for t in timings
    ]
    print(f"\n### seconds per image by stage ({results['machine']})\n\n{markdown(rows)}")
    out = Path(__file__).parent / "results" / f"{platform.node() or 'machine'}-{args.device}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
