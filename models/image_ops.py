"""unCLIP's image operations as batches of :class:`GenerationRequest` (Ramesh et al. 2022, §3).

Each function turns one operation into the requests :meth:`UnclipPipeline.generate` samples (so
an operation batches with others of its kind, and its seed reproduces its images in any batch):

- :func:`variation_requests` (§3.1): the image's CLIP embedding decoded with fresh noise, or from
  the image's DDIM-inverted decoder latent (then the decoder's η sets how far it may wander);
- :func:`interpolation_requests` (§3.2): slerp between two ends' embeddings, every frame from the
  same noise, or from the slerped inverted latents of two images;
- :func:`text_diff_requests` (§3.3): the image embedding rotated towards a caption difference,
  every frame from the image's inverted latent;
- :func:`edit_requests`: the prompt drawn inside a mask, the source kept outside (RePaint).

The work that is per job rather than per row (CLIP image encoding, the prior for a prompt end,
DDIM inversion) is done here, before the batch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.configs import SamplingConfig
from models.latents import slerp, text_diff_direction, text_diff_frames
from models.pipeline import Edit, GenerationRequest, UnclipPipeline

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class End:
    """One end of an interpolation, or a text diff's source: an image or a prompt."""

    image: np.ndarray | None = None  # uint8 [H x W x 3], square
    prompt: str | None = None

    def __post_init__(self) -> None:
        if (self.image is None) == (self.prompt is None):
            raise ValueError("an end is an image or a prompt, exactly one of them")


def encode_animation(frames: Sequence[np.ndarray], fmt: str, frame_ms: int = 250) -> bytes:
    """uint8 frames [H x W x 3] → one looping GIF or WebP, each frame ``frame_ms`` long; the
    sequence plays forth and back so the loop has no jump."""
    if fmt not in ("gif", "webp"):
        raise ValueError(f"animation format must be gif or webp, got {fmt!r}")
    order = list(frames) + list(frames)[-2:0:-1]
    images = [Image.fromarray(frame, mode="RGB") for frame in order]
    buffer = io.BytesIO()
    options = {"lossless": True} if fmt == "webp" else {}
    images[0].save(
        buffer,
        format=fmt.upper(),
        save_all=True,
        append_images=images[1:],
        duration=frame_ms,
        loop=0,
        **options,
    )
    return buffer.getvalue()


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 [H x W x 3] images (one size) → float [N x 3 x H x W] in [-1, 1]."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # [N x 3 x H x W]
    return batch / 127.5 - 1


def to_mask(mask: np.ndarray) -> torch.Tensor:
    """[H x W] (bool, or uint8 with 255 = repaint) → bool [H x W]."""
    return torch.from_numpy(np.asarray(mask) > (0 if mask.dtype == np.bool_ else 127))


def variation_requests(
    pipeline: UnclipPipeline,
    image: np.ndarray,
    n: int,
    seed: int,
    *,
    inversion: bool,
    sampling: SamplingConfig,
    progress: Progress = None,
) -> list[GenerationRequest]:
    """``n`` variations of ``image`` [H x W x 3]: one request, decoded from the image's embedding
    with no caption; with ``inversion``, every image starts from the inverted latent (the decoder's
    η, set in ``sampling``, decides how far from the source it may go)."""
    pixels = to_tensor([image])  # [1 x 3 x H x W]
    embed = pipeline.encode_images(pixels)  # [1 x D]
    start = pipeline.invert_decoder(pixels, embed, sampling.decoder, progress)[0] if inversion else None
    return [GenerationRequest("", n, seed, image_embed=embed[0], decoder_start=start)]


def _end_embeddings(
    pipeline: UnclipPipeline, ends: Sequence[End], seed: int, sampling: SamplingConfig
) -> torch.Tensor:
    """z_i [len(ends) x D]: CLIP embeddings of image ends, the prior's sample for prompt ends."""
    embeds: list[torch.Tensor] = []
    for k, end in enumerate(ends):
        if end.image is not None:
            embeds.append(pipeline.encode_images(to_tensor([end.image]))[0])
        else:
            assert end.prompt is not None
            embeds.append(pipeline.embed_prompts([end.prompt], seed + k, sampling)[0])
    return torch.stack(embeds)


def interpolation_requests(
    pipeline: UnclipPipeline,
    a: End,
    b: End,
    steps: int,
    seed: int,
    *,
    inversion: bool,
    sampling: SamplingConfig,
    progress: Progress = None,
) -> list[GenerationRequest]:
    """``steps`` frames from a to b: one request per frame, all with ``seed`` (so every frame
    draws the same noise), frame k decoded from slerp(z_a, z_b, k / (steps - 1)). With
    ``inversion`` (two images), frame k starts from slerp(x_T(a), x_T(b), k / (steps - 1))."""
    if steps < 2:
        raise ValueError("an interpolation needs at least 2 frames")
    z = _end_embeddings(pipeline, (a, b), seed, sampling)  # [2 x D]
    latents = None
    if inversion:
        if a.image is None or b.image is None:
            raise ValueError("inversion needs two images")
        latents = pipeline.invert_decoder(to_tensor([a.image, b.image]), z, sampling.decoder, progress)
    requests = []
    for k in range(steps):
        weight = k / (steps - 1)
        embed = slerp(z[:1], z[1:], weight)[0]
        start = slerp(latents[:1], latents[1:], weight)[0] if latents is not None else None
        requests.append(GenerationRequest("", 1, seed, image_embed=embed, decoder_start=start))
    return requests


def text_diff_requests(
    pipeline: UnclipPipeline,
    source: End,
    base: str,
    target: str,
    angles: Sequence[float],
    seed: int,
    *,
    sampling: SamplingConfig,
    progress: Progress = None,
) -> list[GenerationRequest]:
    """One request per angle θ: z_θ = slerp(z_i, normalize(z_t(target) - z_t(base)), θ), decoded
    from the image's inverted latent (a prompt source: every frame from the same noise)."""
    z_i = _end_embeddings(pipeline, (source,), seed, sampling)  # [1 x D]
    captions = pipeline.encode_text([base, target]).embedding.float().to(z_i.device)  # [2 x D]
    direction = text_diff_direction(captions[:1], captions[1:])[0]  # [D]
    frames = text_diff_frames(z_i[0], direction, list(angles))  # [F x D]
    start = None
    if source.image is not None:
        start = pipeline.invert_decoder(to_tensor([source.image]), z_i, sampling.decoder, progress)[0]
    return [GenerationRequest("", 1, seed, image_embed=z, decoder_start=start) for z in frames]


def edit_requests(
    image: np.ndarray, mask: np.ndarray, prompt: str, n: int, seed: int, *, resample: int = 3
) -> list[GenerationRequest]:
    """``n`` edits of ``image`` [S x S x 3]: ``prompt`` drawn where ``mask`` [S x S] is set."""
    if image.shape[:2] != mask.shape[:2] or image.shape[0] != image.shape[1]:
        raise ValueError("an edit needs a square image and a mask of its size")
    edit = Edit(to_tensor([image])[0], to_mask(mask), resample)
    return [GenerationRequest(prompt, n, seed, edit=edit)]
