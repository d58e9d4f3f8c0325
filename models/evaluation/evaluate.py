"""``evaluate``: generate the held-out prompts and score them without trusting the model.

Three measures, as the shapes-world issue asks:

- prompt adherence, by model-free image analysis (:func:`models.evaluation.metrics.adherence`):
  the fraction of images whose object has the asked color, shape, size and position, and all four;
- CLIP R-precision with our CLIP (:func:`models.evaluation.metrics.clip_r_precision`, the true
  prompt among all ``n`` held-out prompts);
- an FID-style distance between generated and rendered held-out images in our CLIP's
  image-embedding space (:func:`models.evaluation.metrics.frechet_distance`);

and shape fidelity (:mod:`models.evaluation.fidelity`): the IoU of each object with the asked shape
drawn in its own box, per asked shape, with the worst images of each shape in a grid.

Prompt ``i`` of the held-out set is generated once with seed ``seed + i``, so a report does not
depend on the batch size.

With ``image_embeddings="rendered"`` the prior is skipped and each prompt is decoded from the CLIP
image embedding of its own held-out render: the figures then measure the decoder and upsamplers
alone, which tells whether the prior or the decoder loses an attribute.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from models.configs import SamplingConfig
from models.data.shapes import ShapesWorld, parse_caption
from models.evaluation.fidelity import WORST_IMAGES, ShapeFidelity, draw_fit, shape_fidelity, summarize
from models.evaluation.grid import save_grid
from models.evaluation.metrics import BAR_ATTRIBUTES, adherence, clip_r_precision, frechet_distance
from models.pipeline import GenerationRequest, UnclipPipeline

# The bar for the bundled model at 256x256, default steps, 200 held-out prompts (issue 3).
BAR: dict[str, float] = {"color": 0.95, "shape": 0.90, "size": 0.90, "position": 0.90}
HELDOUT_SEED = 0  # the world seed whose held-out set is the evaluation set
GRID_IMAGES = 32
FIDELITY_GRID = "shape_fidelity_worst.png"  # the worst images per asked shape, next to the report
EMBED_BATCH = 16
ImageEmbeddings = Literal["prior", "rendered"]


@dataclass
class EvaluationReport:
    """What ``unclip evaluate`` measured. Accuracies are fractions in [0, 1]."""

    model_id: str
    n: int
    size: int
    sampling: dict[str, Any]  # the SamplingConfig used, as plain data
    accuracy: dict[str, float]  # per attribute: color, shape, size, position (and background)
    asked: dict[str, int]  # how many prompts named each attribute (the accuracy's denominator)
    all_four: float  # color, shape, size and position all right at once
    r_precision: float  # CLIP R-precision@1 among the n held-out prompts
    clip_fid: float  # Fréchet distance of CLIP image embeddings, generated vs rendered
    reference_fid: float  # the same distance, rendered vs rendered of another seed: the floor
    seconds_per_image: float  # generation wall time / n
    stage_seconds: dict[str, float]  # total seconds per stage over the whole run
    device: str = "cpu"
    image_embeddings: str = "prior"  # what the decoder was given: the prior's samples or the renders'
    grid: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    shape_confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # asked -> read -> images
    # IoU with the asked shape drawn in the object's own box: see fidelity_section()
    shape_fidelity: dict[str, Any] = field(default_factory=dict)

    def stage_seconds_per_image(self) -> dict[str, float]:
        return {stage: seconds / self.n for stage, seconds in self.stage_seconds.items()}

    def passes_bar(self) -> bool:
        """Whether color, shape, size and position all reach the issue's bar."""
        return all(self.accuracy.get(a, 0.0) >= threshold for a, threshold in BAR.items())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stage_seconds_per_image"] = self.stage_seconds_per_image()
        data["passes_bar"] = self.passes_bar()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        source = "" if self.image_embeddings == "prior" else ", decoded from the renders' CLIP embeddings"
        lines = [
            f"### Evaluation: {self.n} held-out prompts at {self.size}×{self.size} "
            f"({self.model_id}, {self.device}{source})",
            "",
            "| measure | value |",
            "|---|---|",
        ]
        for attribute, value in self.accuracy.items():
            bar = f" (bar {BAR[attribute]:.0%})" if attribute in BAR else ""
            lines.append(f"| {attribute} | {value:.1%} of {self.asked[attribute]}{bar} |")
        lines += [
            f"| all four ({', '.join(BAR_ATTRIBUTES)}) | {self.all_four:.1%} |",
            f"| CLIP R-precision@1 (among {self.n} prompts) | {self.r_precision:.1%} |",
            f"| CLIP-FID (generated vs rendered) | {self.clip_fid:.4f} |",
            f"| CLIP-FID floor (rendered vs rendered, other seed) | {self.reference_fid:.4f} |",
            f"| seconds per image | {self.seconds_per_image:.3f} |",
            "",
            "| stage | steps | guidance | sampler | precision | seconds per image |",
            "|---|---|---|---|---|---|",
        ]
        precision = self.meta.get("precision", {})
        for stage, per_image in self.stage_seconds_per_image().items():
            s = self.sampling.get(stage, {})
            lines.append(
                f"| {stage} | {s.get('steps', '–')} | {s.get('guidance', '–')} | {s.get('sampler', '–')} "
                f"| {precision.get(stage, '–')} | {per_image:.3f} |"
            )
        if self.shape_confusion:
            read_as = list(next(iter(self.shape_confusion.values())))
            lines += [
                "",
                f"| asked shape \\ read as | {' | '.join(read_as)} |",
                "|---|" + "---:|" * len(read_as),
            ]
            for asked, row in self.shape_confusion.items():
                lines.append(f"| {asked} | {' | '.join(str(row[name]) for name in read_as)} |")
        if self.shape_fidelity:
            lines += ["", *self._fidelity_markdown()]
        return "\n".join(lines) + "\n"

    def _fidelity_markdown(self) -> list[str]:
        """The shape-fidelity table, with the analyser's reading of the same images beside it,
        and the worst images of each asked shape."""
        fidelity = self.shape_fidelity
        lines = [
            "Shape fidelity: IoU of the object with the asked shape drawn in its own box; "
            "best match: the asked shape fits better than every other shape.",
            "",
            "| asked shape | images | mean IoU | best match | analyser reads it |",
            "|---|---:|---:|---:|---:|",
        ]
        for shape, row in fidelity["per_shape"].items():
            read = self.shape_confusion.get(shape, {})
            analyser = f"{read[shape] / sum(read.values()):.1%}" if read else "–"
            lines.append(
                f"| {shape} | {row['n']} | {row['mean_iou']:.3f} | {row['best_match']:.1%} | {analyser} |"
            )
        analyser_all = f"{self.accuracy['shape']:.1%}" if "shape" in self.accuracy else "–"
        lines += [
            f"| **all** | {fidelity['n']} | {fidelity['mean_iou']:.3f} | {fidelity['best_match']:.1%} "
            f"| {analyser_all} |",
            "",
            f"Worst images per asked shape (lowest IoU with it; prompt index, IoU, best match)"
            f"{': ' + Path(fidelity['grid']).name if fidelity.get('grid') else ''}",
            "",
        ]
        for shape, worst in fidelity["worst"].items():
            listed = ", ".join(f"#{w['index']} {w['iou']:.2f} ({w['best']})" for w in worst)
            lines.append(f"- {shape}: {listed}")
        return lines


def to_model_input(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H x W x 3]`` images → ``[N x 3 x H x W]`` floats in [-1, 1], the range every stage
    works in (CLIP resizes them itself)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def embed_images(pipeline: UnclipPipeline, images: Sequence[np.ndarray]) -> torch.Tensor:
    """CLIP image embeddings ``[N x D]`` (unit norm) of uint8 images, in batches of ``EMBED_BATCH``."""
    chunks = [
        pipeline.clip.encode_image(to_model_input(images[i : i + EMBED_BATCH]).to(pipeline.device))
        .float()
        .cpu()
        for i in range(0, len(images), EMBED_BATCH)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def embed_texts(pipeline: UnclipPipeline, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP text embeddings ``[N x D]`` (unit norm) of prompts, in batches of ``EMBED_BATCH``."""
    chunks = [
        pipeline.clip.encode_text(list(prompts[i : i + EMBED_BATCH])).embedding.float().cpu()
        for i in range(0, len(prompts), EMBED_BATCH)
    ]
    return torch.cat(chunks)


def generate_images(
    pipeline: UnclipPipeline,
    prompts: Sequence[str],
    size: int,
    sampling: SamplingConfig,
    *,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    image_embeds: torch.Tensor | None = None,
) -> tuple[list[np.ndarray], dict[str, float], float]:
    """One image per prompt (prompt ``i`` with seed ``seed + i``), with a tqdm bar over batches;
    ``image_embeds`` (one row per prompt) replaces the prior's samples.

    Returns the uint8 ``[size x size x 3]`` images, the seconds spent per stage, and the wall time.
    """
    images: list[np.ndarray] = []
    stage_seconds: dict[str, float] = {}
    starts = range(0, len(prompts), batch_size)
    bar = tqdm(starts, desc=f"evaluate {size}px", unit="batch", disable=not progress, leave=False)

    def on_step(stage: str, step: int, total: int) -> None:
        bar.set_postfix_str(f"{stage} {step}/{total}", refresh=False)

    start = time.perf_counter()
    for first in bar:
        batch = prompts[first : first + batch_size]
        requests = [GenerationRequest(prompt, n=1, seed=seed + first + k) for k, prompt in enumerate(batch)]
        embeds = None if image_embeds is None else image_embeds[first : first + batch_size]
        output = pipeline.generate(
            requests, size, sampling, image_embeds=embeds, progress=on_step if progress else None
        )
        for request_images in output.images:
            assert request_images is not None  # nothing is canceled here
            images.append(request_images[0])
        for stage, seconds in output.timings.items():
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
    bar.close()
    return images, stage_seconds, time.perf_counter() - start


def evaluate(
    pipeline: UnclipPipeline,
    n: int = 200,
    size: int = 256,
    sampling: SamplingConfig | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    out_dir: str | Path | None = None,
    image_embeddings: ImageEmbeddings = "prior",
) -> EvaluationReport:
    """Generate the first ``n`` held-out prompts at ``size`` and score them.

    ``sampling`` defaults to the model's own defaults. With ``out_dir``, writes ``grid.png`` (the
    first :data:`GRID_IMAGES` images, captioned), :data:`FIDELITY_GRID` (the worst images per asked
    shape), ``report.json`` and ``report.md`` there.
    ``image_embeddings="rendered"`` decodes from the renders' CLIP embeddings instead of the prior's.
    """
    if n < 2:
        raise ValueError("evaluate needs n >= 2 (the Fréchet distance fits a covariance)")
    if image_embeddings not in ("prior", "rendered"):
        raise ValueError(f"image_embeddings must be 'prior' or 'rendered', not {image_embeddings!r}")
    sampling = sampling or pipeline.config.sampling
    heldout = _heldout(HELDOUT_SEED, n, size)
    prompts = [example.caption for example in heldout]
    rendered_emb = embed_images(pipeline, [example.image for example in heldout])  # [n x D]
    images, stage_seconds, wall = generate_images(
        pipeline,
        prompts,
        size,
        sampling,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        image_embeds=rendered_emb if image_embeddings == "rendered" else None,
    )
    adherence_report = adherence(images, [parse_caption(prompt) for prompt in prompts])
    generated_emb = embed_images(pipeline, images)  # [n x D]
    report = EvaluationReport(
        model_id=pipeline.model_id,
        n=n,
        size=size,
        sampling=asdict(sampling),
        accuracy=adherence_report.accuracy,
        asked=adherence_report.asked,
        all_four=adherence_report.all_four,
        r_precision=clip_r_precision(generated_emb, embed_texts(pipeline, prompts)),
        clip_fid=frechet_distance(generated_emb, rendered_emb),
        reference_fid=_reference_fid(pipeline, rendered_emb, n, size),
        seconds_per_image=wall / n,
        stage_seconds=stage_seconds,
        device=str(pipeline.device),
        image_embeddings=image_embeddings,
        meta={
            "seed": seed,
            "batch_size": batch_size,
            "heldout_seed": HELDOUT_SEED,
            "precision": stage_precisions(pipeline),
        },
        shape_confusion=adherence_report.shape_confusion,
        shape_fidelity=fidelity_section([shape_fidelity(image) for image in images], prompts),
    )
    if out_dir is not None:
        write_outputs(report, images, prompts, Path(out_dir))
    return report


def stage_precisions(pipeline: UnclipPipeline) -> dict[str, str]:
    """What each stage's network computes in under the pipeline's fast path: its weights' dtype,
    or bfloat16 where the stage autocasts on this device."""
    precisions: dict[str, str] = {}
    for stage in pipeline.networks:
        autocast = pipeline.execution.autocast_dtype(stage, pipeline.device)
        precisions[stage] = str(autocast or pipeline.dtype).removeprefix("torch.")
    return precisions


def _reference_fid(pipeline: UnclipPipeline, rendered_emb: torch.Tensor, n: int, size: int) -> float:
    """The distance between the held-out renders and ``n`` other renders of the world: what a perfect
    generator would score at this ``n`` (the estimate is biased upward for small ``n``)."""
    others = _heldout(HELDOUT_SEED + 1, n, size)
    return frechet_distance(rendered_emb, embed_images(pipeline, [example.image for example in others]))


@functools.lru_cache(maxsize=2)  # the held-out set and the reference set at one size
def _heldout(world_seed: int, n: int, size: int) -> tuple[Any, ...]:
    """The world's held-out examples, cached: a sweep evaluates the same set many times."""
    return tuple(ShapesWorld(world_seed).heldout(n, size))


def fidelity_section(results: Sequence[ShapeFidelity], prompts: Sequence[str]) -> dict[str, Any]:
    """The report's shape-fidelity section, as plain data: over the images whose prompt names a
    shape, ``n``, ``mean_iou`` (with the asked shape) and ``best_match`` (the fraction whose best
    match is the asked shape); the same per asked shape (``per_shape``); the :data:`WORST_IMAGES`
    lowest-IoU images of each asked shape (``worst``: index, prompt, IoU, best match, and where the
    shape was drawn: side, centre x, centre y in pixels of the analysed image); and every image's
    IoU with each shape (``per_image``)."""
    asked = [parse_caption(prompt).shape for prompt in prompts]
    summary = summarize(results, asked, WORST_IMAGES)
    return {
        "n": summary.n,
        "mean_iou": summary.mean_iou,
        "best_match": summary.best_match,
        "per_shape": summary.per_shape,
        "worst": {
            shape: [
                {
                    "index": i,
                    "prompt": prompts[i],
                    "iou": results[i].iou[shape],
                    "best": results[i].best,
                    "fit": results[i].fits.get(shape),
                }
                for i in indices
            ]
            for shape, indices in summary.worst.items()
        },
        "per_image": [
            {"asked": shape, "best": r.best, "iou": {k: round(v, 4) for k, v in r.iou.items()}}
            for r, shape in zip(results, asked, strict=True)
        ],
        "grid": None,
    }


def save_fidelity_grid(fidelity: dict[str, Any], images: Sequence[np.ndarray], path: Path) -> Path | None:
    """The worst images of each asked shape, one row per shape (blank tiles where a shape has
    fewer): each object close up with the asked shape's outline drawn where it was fitted
    (:func:`~models.evaluation.fidelity.draw_fit`), captioned with prompt index, asked shape, IoU
    and best match. ``None`` when there are none."""
    worst = fidelity.get("worst") or {}
    if not worst:
        return None
    blank = np.full_like(draw_fit(images[0], "circle", None), 255)
    tiles, captions = [], []
    for shape, rows in worst.items():
        for k in range(WORST_IMAGES):
            if k < len(rows):
                row = rows[k]
                tiles.append(draw_fit(images[row["index"]], shape, row["fit"]))
                captions.append(f"#{row['index']} {shape}: IoU {row['iou']:.2f}, best {row['best']}")
            else:
                tiles.append(blank)
                captions.append("")
    return save_grid(tiles, captions, path, columns=WORST_IMAGES)


def write_outputs(
    report: EvaluationReport, images: list[np.ndarray], prompts: list[str], out_dir: Path
) -> None:
    """``grid.png``, ``report.json``, ``report.md`` and the shape-fidelity grid under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    count = min(GRID_IMAGES, len(images))
    report.grid = str(save_grid(images[:count], prompts[:count], out_dir / "grid.png"))
    if report.shape_fidelity:
        worst_grid = save_fidelity_grid(report.shape_fidelity, images, out_dir / FIDELITY_GRID)
        report.shape_fidelity["grid"] = str(worst_grid) if worst_grid else None
    (out_dir / "report.json").write_text(report.to_json() + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(report.to_markdown(), encoding="utf-8")
