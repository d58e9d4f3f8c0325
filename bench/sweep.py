"""Sampling-defaults sweep: measure prompt adherence and speed over steps, guidance and sampler.

For one weights directory, evaluates a small held-out set per setting and prints a markdown table
(accuracy per attribute, all four, R-precision, CLIP-FID, seconds per image), so the defaults in
``configs.py`` and the README are chosen by measurement. By default one stage is swept at a time
while the others keep the model's defaults (decoder: steps × guidance × sampler; prior: steps ×
guidance; sr256: steps, at sizes ≥ 256); ``--product`` sweeps the decoder and prior grids jointly.

Usage:
    python -m bench.sweep --weights DIR [--n 48] [--size 64] [--device cpu] \\
        [--decoder-steps 10 20] [--decoder-guidance 1 3 5] [--decoder-samplers ddim dpm++2m] \\
        [--prior-steps 8 16] [--prior-guidance 1 2] [--sr256-steps 4 8] [--product] [--json PATH]

The default grid is 15 settings at 64px (the defaults, 12 decoder and 4 prior settings, minus
repeats of the defaults; one more sr256 setting at 256px): about 700 images at n=48, so on two CPU
cores expect tens of minutes; narrow the lists or use a GPU.
Table rows go to stdout and progress bars to stderr, so ``> sweep.md`` captures a clean table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.configs import SamplingConfig
from models.evaluation.evaluate import EvaluationReport, evaluate
from models.evaluation.metrics import BAR_ATTRIBUTES
from models.pipeline import load_pipeline

COLUMNS = ["swept", "prior", "decoder", "sr256", *BAR_ATTRIBUTES, "all four", "R-prec", "CLIP-FID", "s/image"]


def _decoder_grid(args: argparse.Namespace, base: SamplingConfig) -> Iterator[tuple[str, SamplingConfig]]:
    for steps, guidance, sampler in itertools.product(
        args.decoder_steps, args.decoder_guidance, args.decoder_samplers
    ):
        decoder = replace(base.decoder, steps=steps, guidance=guidance, sampler=sampler)
        yield "decoder", replace(base, decoder=decoder)


def _prior_grid(args: argparse.Namespace, base: SamplingConfig) -> Iterator[tuple[str, SamplingConfig]]:
    for steps, guidance in itertools.product(args.prior_steps, args.prior_guidance):
        yield "prior", replace(base, prior=replace(base.prior, steps=steps, guidance=guidance))


def settings_to_try(args: argparse.Namespace, base: SamplingConfig) -> list[tuple[str, SamplingConfig]]:
    """(label of what varies, sampling settings) per evaluation, duplicates removed, defaults first."""
    runs: list[tuple[str, SamplingConfig]] = [("defaults", base)]
    if args.product:
        for (_, dec), (_, pri) in itertools.product(_decoder_grid(args, base), _prior_grid(args, base)):
            runs.append(("prior+decoder", replace(dec, prior=pri.prior)))
    else:
        runs += list(_decoder_grid(args, base)) + list(_prior_grid(args, base))
    if args.size >= 256:
        runs += [("sr256", replace(base, sr256=replace(base.sr256, steps=s))) for s in args.sr256_steps]
    seen: set[SamplingConfig] = set()
    unique = []
    for label, sampling in runs:
        if sampling not in seen:
            seen.add(sampling)
            unique.append((label, sampling))
    return unique


def _stage_cell(sampling: SamplingConfig, stage: str) -> str:
    s = sampling.for_stage(stage)  # type: ignore[arg-type]
    guidance = f" g{s.guidance:g}" if stage in ("prior", "decoder") else ""
    return f"{s.sampler} {s.steps}{guidance}"


def table_row(label: str, sampling: SamplingConfig, report: EvaluationReport) -> str:
    accuracy = [f"{report.accuracy.get(a, float('nan')):.1%}" for a in BAR_ATTRIBUTES]
    cells = [
        label,
        _stage_cell(sampling, "prior"),
        _stage_cell(sampling, "decoder"),
        _stage_cell(sampling, "sr256") if report.size >= 256 else "–",
        *accuracy,
        f"{report.all_four:.1%}",
        f"{report.r_precision:.1%}",
        f"{report.clip_fid:.3f}",
        f"{report.seconds_per_image:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--n", type=int, default=48, help="held-out prompts per setting")
    p.add_argument("--size", type=int, default=64, choices=[64, 256])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder-steps", type=int, nargs="+", default=[10, 20])
    p.add_argument("--decoder-guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    p.add_argument(
        "--decoder-samplers", nargs="+", default=["ddim", "dpm++2m"], choices=["ddpm", "ddim", "dpm++2m"]
    )
    p.add_argument("--prior-steps", type=int, nargs="+", default=[8, 16])
    p.add_argument("--prior-guidance", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--sr256-steps", type=int, nargs="+", default=[4, 8])
    p.add_argument(
        "--product", action="store_true", help="sweep decoder × prior jointly instead of one at a time"
    )
    p.add_argument("--json", type=Path, help="also write every report as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipeline = load_pipeline(args.weights, device=args.device)
    runs = settings_to_try(args, pipeline.config.sampling)
    print(
        f"### Sampling sweep: {args.n} held-out prompts at {args.size}px, {pipeline.model_id} on {args.device}\n"
    )
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)
    results: list[dict[str, Any]] = []
    for label, sampling in tqdm(runs, desc="sweep", unit="setting", file=sys.stderr):
        report = evaluate(pipeline, n=args.n, size=args.size, sampling=sampling, batch_size=args.batch_size)
        tqdm.write(table_row(label, sampling, report), file=sys.stdout)
        results.append({"swept": label, "sampling": asdict(sampling), "report": report.to_dict()})
    best = max(results, key=lambda r: (r["report"]["all_four"], -r["report"]["seconds_per_image"]))
    print(f"\nbest all-four: {best['report']['all_four']:.1%} with {json.dumps(best['sampling'])}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
