"""The figures of docs/image-operations.md ("Measured on the bundled model"): each image operation
on the bundled model at 64x64, default sampling, judged by the project's image analyser on
shapes-world renders. Fixed seeds: run it again to reproduce them (about 5 CPU-minutes).

    .venv/bin/python scripts/measure-image-ops.py
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from models.data.shapes import render, sample_spec
from models.evaluation.analysis import analyze
from models.image_ops import (
    End,
    edit_requests,
    interpolation_requests,
    text_diff_requests,
    variation_requests,
)
from models.pipeline import load_pipeline

RED_CIRCLE = "a large red circle in the center on a white background"
BLUE_SQUARE = "a large blue square in the center on a white background"


def main() -> None:
    torch.set_num_threads(1)
    pipeline = load_pipeline()
    sampling = pipeline.config.sampling
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng, size="large", background="white") for _ in range(16)]
    renders = [render(spec, 64) for spec in specs]

    color = shape = 0
    for k, (spec, image) in enumerate(tqdm(list(zip(specs, renders, strict=True)), desc="variations")):
        output = pipeline.generate(
            variation_requests(pipeline, image, 2, k, inversion=False, sampling=sampling), 64
        )
        for found in map(analyze, output.images[0]):  # type: ignore[arg-type]
            color += found.color == spec.color
            shape += found.shape == spec.shape
    print(f"variations (embedding), 16 renders x 2: color kept {color}/32, shape kept {shape}/32")

    errors = []
    for strength in (0.0, 0.25, 0.5, 1.0):
        ddim = sampling.with_overrides({"decoder": {"sampler": "ddim", "eta": strength}})
        per_image = []
        for k, image in enumerate(renders[:8]):
            requests = variation_requests(pipeline, image, 1, k, inversion=True, sampling=ddim)
            out = pipeline.generate(requests, 64, ddim).images[0][0]  # type: ignore[index]
            per_image.append(np.abs(out.astype(float) - image.astype(float)).mean())
        errors.append(f"{strength:g}: {np.mean(per_image):.1f}")
    print("inversion, mean absolute pixel error (of 255) on 8 renders: " + " / ".join(errors))

    frames = interpolation_requests(
        pipeline, End(prompt=RED_CIRCLE), End(prompt=BLUE_SQUARE), 7, 5, inversion=False, sampling=sampling
    )
    colors = [analyze(images[0]).color for images in pipeline.generate(frames, 64).images]  # type: ignore[index]
    print(f"interpolation red circle -> blue square, 7 frames: colors {colors}")

    ddim = sampling.with_overrides({"decoder": {"sampler": "ddim", "eta": 0.0}})
    squares = reds = 0
    for k in range(8):
        spec = sample_spec(
            np.random.default_rng(100 + k), color="red", shape="circle", size="large", background="white"
        )
        requests = text_diff_requests(
            pipeline, End(image=render(spec, 64)), "a red circle", "a red square", [0.5], k, sampling=ddim
        )
        found = analyze(pipeline.generate(requests, 64, ddim).images[0][0])  # type: ignore[index]
        squares += found.shape == "square"
        reds += found.color == "red"
    print(
        f"text diff 'a red circle' -> 'a red square' at theta 0.5, 8 seeds: square {squares}/8, red {reds}/8"
    )

    white = np.full((64, 64, 3), 255, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[12:52, 12:52] = 255
    blue, kept = 0, 0.0
    for seed in range(8):
        requests = edit_requests(
            white, mask, "a large blue circle in the center on a white background", 1, seed
        )
        out = pipeline.generate(requests, 64).images[0][0]  # type: ignore[index]
        blue += analyze(out).color == "blue"
        kept = max(kept, float(np.abs(out[mask == 0].astype(int) - white[mask == 0]).max()))
    print(
        f"edit, a blue circle into an empty 40x40 region, 8 seeds: blue {blue}/8, outside max change {kept:g}"
    )


if __name__ == "__main__":
    main()
