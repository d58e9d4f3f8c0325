"""The batched unCLIP chain: text → CLIP → prior → decoder 64² → SR 256² → SR 1024².

``UnclipPipeline.generate`` takes several requests (prompt, n, seed) and samples all their images
as one batch per stage. Each image row draws its noise from its own generator, seeded from its
request's seed, image index and stage (:func:`row_seed`), so a request gives the same images
whatever batch it is sampled in. Every stage runs through one generic :func:`denoise` helper.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoints import load_into, load_stage_state, read_manifest
from models.clip import FrozenClip, TextEncoding
from models.configs import STAGES, ModelConfig, SamplingConfig, StageName, StageSampling, get_config
from models.diffusion import ClassifierFreeGuidance, RowNoise, sample
from models.diffusion.editing import ddim_invert, masked_step, repaint_sample_loop
from models.diffusion.samplers import SAMPLERS, initial_noise
from models.execution import ExecutionConfig, NetworkCall, chunks, network_call, prepare_network
from models.factory import create_stage_diffusion, create_stage_module
from models.prior import prior_embedding_scale

DEFAULT_WEIGHTS_DIR = Path(__file__).parent / "default_weights"
# Output side of each image stage of the chain (Ramesh et al. 2022: 64² decoder, two upsamplers).
STAGE_SIDES: tuple[tuple[StageName, int], ...] = (("decoder", 64), ("sr256", 256), ("sr1024", 1024))
MIN_SIZE = 16  # smaller images say nothing; refuse rather than resize to a few pixels
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

ProgressCallback = Callable[[str, int, int], None]
# preview(stage, x̂_0): each step's prediction of the clean output, [N x 3 x H x W] in [-1, 1]
# (or [N x D] image embeddings for the prior), by reference: copy what you keep.
PreviewCallback = Callable[[str, torch.Tensor], None]
CancelCheck = Callable[[], Collection[int]]


@dataclass(frozen=True)
class Edit:
    """What an edit keeps: the source image and where to repaint (Lugmayr et al. 2022).

    ``image`` [3 x S x S] in [-1, 1]; ``mask`` [S x S] bool, True where the prompt's content is
    drawn; ``resample``: RePaint passes per decoder step (the upsamplers paste without resampling).
    """

    image: torch.Tensor
    mask: torch.Tensor
    resample: int = 3


@dataclass(frozen=True)
class GenerationRequest:
    """One request of a batch: ``n`` images of ``prompt`` from ``seed``.

    The image operations (Ramesh et al. 2022, §3) add to that: ``image_embed`` [D] (unit norm) is
    decoded instead of the prior's sample; ``decoder_start`` [3 x 64 x 64] is the decoder's x_T for
    every image of the request (an inverted latent) instead of noise; ``edit`` keeps the source
    outside a mask. An empty ``prompt`` means no caption: the decoder sees the embedding alone.
    """

    prompt: str
    n: int = 1
    seed: int = 0
    image_embed: torch.Tensor | None = field(default=None, compare=False)
    decoder_start: torch.Tensor | None = field(default=None, compare=False)
    edit: Edit | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Masked:
    """A stage's masked sampling: ``known`` [N x 3 x H x W], ``mask`` [N x 1 x H x W] (1 = repaint)."""

    known: torch.Tensor
    mask: torch.Tensor
    resample: int = 1


@dataclass
class GenerationOutput:
    images: list[np.ndarray | None]  # per request: uint8 [n x H x W x 3]; None when canceled
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


class _AllCanceled(Exception):
    """Raised from a progress hook to abandon a batch whose every request was canceled."""


def stages_for_size(size: int) -> tuple[StageName, ...]:
    """The diffusion stages that make a ``size`` x ``size`` image: the chain runs up to the first
    stage whose output is at least that side, and a side between two stages' outputs is the
    larger output resized (512 is the 1024 output resized). Which sizes the service offers is
    the job contract's business (``contract.schemas.SIZES``), not the chain's."""
    chain: tuple[StageName, ...] = ("prior",)
    for stage, side in STAGE_SIDES:
        chain += (stage,)
        if size <= side:
            if size < MIN_SIZE:
                break
            return chain
    raise ValueError(f"size must be between {MIN_SIZE} and {STAGE_SIDES[-1][1]}, got {size}")


def row_seed(seed: int, image_index: int, stage: str, candidate: int = 0) -> int:
    """A 63-bit seed for one image row of one stage, from the request's seed alone."""
    key = f"{seed}/{image_index}/{stage}/{candidate}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """[N x 3 x H x W] in [-1, 1] → uint8 [N x H x W x 3]."""
    pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


class _CastModel:
    """Runs a network in its own dtype while the sampler's math stays in float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.model = model
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        cast = {
            k: v.to(self.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in kwargs.items()
        }
        return self.model(x.to(self.dtype), t, **cast).float()


def denoise(
    stage: StageName,
    config: ModelConfig,
    model: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    seeds: Sequence[int],
    settings: StageSampling,
    *,
    cond: dict[str, Any],
    uncond: dict[str, Any] | None = None,
    guided_channels: int | None = None,
    clip_denoised: bool,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
    starts: Sequence[torch.Tensor | None] | None = None,
    masked: Masked | None = None,
) -> torch.Tensor:
    """Sample one stage: respace its schedule, wrap guidance, run the chosen sampler.

    ``starts`` gives some rows their own x_T (others draw it from their seed); ``masked`` keeps
    the known image outside the mask (RePaint, :func:`repaint_sample_loop`).
    """
    diffusion = create_stage_diffusion(stage, config, steps=settings.steps)
    model, kwargs = guided(model, settings, cond, uncond, guided_channels)
    if starts is not None or masked is not None:
        noise = RowNoise(seeds)
        x = initial_noise(tuple(shape), noise, device)  # x_T [N x ...]
        if starts is not None:
            given = [k for k, start in enumerate(starts) if start is not None]
            if given:
                x[given] = torch.stack([starts[k] for k in given]).to(x)  # type: ignore[misc]
        if masked is not None:
            step = masked_step(settings.sampler, diffusion, noise, settings.eta)
            return repaint_sample_loop(
                model,
                x,
                diffusion,
                step,
                known=masked.known,
                mask=masked.mask,
                noise=noise,
                resample=masked.resample,
                model_kwargs=kwargs,
                callback=progress,
                clip_denoised=clip_denoised,
            )
        eta: dict[str, Any] = {"eta": settings.eta} if settings.sampler == "ddim" else {}
        return SAMPLERS[settings.sampler](
            model,
            x,
            diffusion,
            model_kwargs=kwargs,
            callback=progress,
            noise=noise,
            clip_denoised=clip_denoised,
            **eta,
        )
    return sample(
        settings.sampler,
        model,
        shape,
        diffusion,
        RowNoise(seeds),
        model_kwargs=kwargs,
        callback=progress,
        clip_denoised=clip_denoised,
        eta=settings.eta,
        device=device,
    )


def guided(
    model: Callable[..., torch.Tensor],
    settings: StageSampling,
    cond: dict[str, Any],
    uncond: dict[str, Any] | None,
    guided_channels: int | None,
) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
    """The model and kwargs to sample with: wrapped in classifier-free guidance when the stage has
    an unconditional branch and a scale other than 1."""
    if uncond is not None and settings.guidance != 1.0:
        return ClassifierFreeGuidance(model, settings.guidance, cond, uncond, guided_channels), {}
    return model, cond


class UnclipPipeline:
    """The five stages, resident on one device, sampled in batches."""

    def __init__(
        self,
        config: ModelConfig,
        modules: dict[StageName, nn.Module],
        *,
        model_id: str,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        execution: ExecutionConfig | None = None,
    ):
        self.config = config
        self.model_id = model_id
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        for module in modules.values():
            module.to(self.device).eval().requires_grad_(False)
        self.clip = FrozenClip(modules["clip"]).to(self.device)
        self.networks: dict[StageName, nn.Module] = {
            s: modules[s].to(self.dtype) for s in STAGES if s != "clip"
        }
        # The fast path (models.execution): what the samplers call for each stage, while
        # ``networks`` stay the plain modules (training, probes and evaluation read them).
        self.execution = execution or ExecutionConfig()
        self._calls: dict[StageName, Callable[..., torch.Tensor]] = {
            s: prepare_network(s, net, self.execution, self.device) for s, net in self.networks.items()
        }

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls,
        directory: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        execution: ExecutionConfig | None = None,
    ) -> UnclipPipeline:
        """Our safetensors + manifest directory; hashes and shapes are checked on load."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        modules: dict[StageName, nn.Module] = {}
        for stage in STAGES:
            module = create_stage_module(stage, manifest.config)
            load_into(
                module, load_stage_state(directory, stage), file_label=str(directory / f"{stage}.safetensors")
            )
            modules[stage] = module
        digest = hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()[:16]
        return cls(
            manifest.config,
            modules,
            model_id=f"weights-{digest}",
            device=device,
            dtype=dtype,
            execution=execution,
        )

    @classmethod
    def random(
        cls,
        config_name: str = "tiny",
        device: str = "cpu",
        dtype: str = "float32",
        seed: int = 0,
        execution: ExecutionConfig | None = None,
    ) -> UnclipPipeline:
        """Random weights (seeded): runs the whole chain before any model is trained."""
        config = get_config(config_name)
        torch.manual_seed(seed)
        modules = {stage: create_stage_module(stage, config) for stage in STAGES}
        model_id = f"random-{config_name}-{seed}"
        return cls(config, modules, model_id=model_id, device=device, dtype=dtype, execution=execution)

    # -- inference ----------------------------------------------------------------------------
    def encode_text(self, prompts: Sequence[str]) -> TextEncoding:
        return self.clip.encode_text(list(prompts))

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        size: int,
        sampling: SamplingConfig | None = None,
        *,
        text: TextEncoding | None = None,
        image_embeds: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        canceled: CancelCheck | None = None,
        preview: PreviewCallback | None = None,
    ) -> GenerationOutput:
        """Sample every request's images as one batch per stage.

        ``text`` holds one row per request (e.g. from a cache); ``canceled`` is polled every
        step and the rows of canceled requests are dropped at the next stage boundary.
        ``image_embeds`` (``[len(requests) x D]``, unit norm) replaces the prior: each request is
        decoded from its given CLIP image embedding (the paper's image variations, Sec. 3.1, and
        the evaluator's way to score the decoder apart from the prior). ``preview`` is handed
        every step's x̂_0 (live previews), except inside micro-batched upsamplers.
        """
        sampling = sampling or self.config.sampling
        chain = stages_for_size(size)
        image_embeds = self._request_embeds(requests, image_embeds)
        if image_embeds is not None:
            if tuple(image_embeds.shape) != (len(requests), self.config.prior.embed_dim):
                raise ValueError(
                    f"image_embeds must be [{len(requests)} x {self.config.prior.embed_dim}], "
                    f"got {list(image_embeds.shape)}"
                )
            chain = tuple(stage for stage in chain if stage != "prior")
        timings: dict[str, float] = {}
        # One row per image: (request index, image index within the request).
        rows = [(i, j) for i, request in enumerate(requests) for j in range(request.n)]
        dropped: set[int] = set()

        def hook(stage: str) -> Callable[[int, int], None]:
            def on_step(step: int, total: int) -> None:
                if progress is not None:
                    progress(stage, step, total)
                if canceled is not None:
                    dropped.update(canceled())
                    if dropped >= set(range(len(requests))):
                        raise _AllCanceled

            return on_step if preview is None else _WithPreview(on_step, stage, preview)

        try:
            start = self._start_timer()
            if text is None:
                text = self.encode_text([r.prompt for r in requests])
            text = text.to(self.device)
            timings["clip"] = self._stop_timer(start)
            hook("clip")(1, 1)
            x: torch.Tensor | None = None
            image_embed: torch.Tensor | None = None
            if image_embeds is not None:
                image_embed = image_embeds.to(self.device, torch.float32)[[i for i, _ in rows]]  # [R x D]
            for stage in chain:
                rows, keep = self._drop_canceled(rows, dropped)
                if not rows:
                    break
                if keep is not None:
                    x = x[keep] if x is not None else None
                    image_embed = image_embed[keep] if image_embed is not None else None
                row_text = text.select([i for i, _ in rows])
                seeds = [row_seed(requests[i].seed, j, stage) for i, j in rows]
                start = self._start_timer()
                settings = sampling.for_stage(stage)
                if stage == "prior":
                    image_embed = self._sample_prior(requests, rows, row_text, settings, hook(stage))
                elif stage == "decoder":
                    x = self._sample_decoder(
                        image_embed, row_text, seeds, settings, hook(stage), requests=requests, rows=rows
                    )
                else:
                    masked = self._masked(stage, requests, rows, resample=1)
                    x = self._sample_upsampler(stage, x, seeds, settings, hook(stage), masked)
                timings[stage] = self._stop_timer(start)
        except _AllCanceled:
            return GenerationOutput(images=[None] * len(requests), timings=timings)

        rows, keep = self._drop_canceled(rows, dropped)
        if x is not None and keep is not None:
            x = x[keep]
        if x is not None and rows and requests[rows[0][0]].edit is not None:
            x = self._paste_known(x, requests, rows, size)
        return GenerationOutput(images=self._collect(requests, rows, x, size), timings=timings)

    # -- stages -------------------------------------------------------------------------------
    def _sample_prior(
        self,
        requests: Sequence[GenerationRequest],
        rows: list[tuple[int, int]],
        text: TextEncoding,
        settings: StageSampling,
        progress: Callable[[int, int], None],
    ) -> torch.Tensor:
        """Draw ``candidates`` embeddings per image; keep the one closest to the text (paper §2.2)."""
        k = self.config.prior.candidates
        cand_text = text.repeat_interleave(k)  # [R*k rows]
        seeds = [row_seed(requests[i].seed, j, "prior", c) for i, j in rows for c in range(k)]
        n = len(seeds)
        cond = {
            "text_embed": cand_text.embedding,
            "text_tokens": cand_text.tokens,
            "text_mask": cand_text.mask,
            "drop_text": torch.zeros(n, dtype=torch.bool, device=self.device),
        }
        uncond = {**cond, "drop_text": torch.ones(n, dtype=torch.bool, device=self.device)}
        x0 = denoise(
            "prior",
            self.config,
            self.network_call("prior"),
            (n, self.config.prior.embed_dim),
            seeds,
            settings,
            cond=cond,
            uncond=uncond,
            clip_denoised=False,
            device=self.device,
            progress=progress,
        )
        embeds = F.normalize(x0 / prior_embedding_scale(self.config.prior), dim=-1).view(
            len(rows), k, -1
        )  # [R x k x D]
        scores = (embeds * text.embedding.float()[:, None, :]).sum(-1)  # [R x k]
        best = scores.argmax(dim=1)
        return embeds[torch.arange(len(rows), device=self.device), best]  # [R x D]

    def _decoder_conditions(
        self, image_embed: torch.Tensor, text: TextEncoding, captioned: Sequence[bool]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(cond, uncond) kwargs of the decoder for rows [R]; rows without a caption drop the text
        in both halves (decoded from the image embedding alone, as the paper's variations)."""
        n = len(captioned)
        yes = torch.ones(n, dtype=torch.bool, device=self.device)
        cond = {
            "clip_embed": image_embed,
            "text_tokens": text.tokens,
            "text_mask": text.mask,
            "drop_clip": ~yes,
            "drop_text": ~torch.tensor(list(captioned), dtype=torch.bool, device=self.device),
        }
        # The unconditional half drops both the CLIP embedding and the caption.
        return cond, {**cond, "drop_clip": yes, "drop_text": yes}

    def _sample_decoder(
        self,
        image_embed: torch.Tensor | None,
        text: TextEncoding,
        seeds: list[int],
        settings: StageSampling,
        progress: Callable[[int, int], None],
        *,
        requests: Sequence[GenerationRequest] | None = None,
        rows: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        assert image_embed is not None
        n = len(seeds)
        side = self.config.decoder.unet.image_size
        row_requests = [requests[i] for i, _ in rows] if requests is not None and rows is not None else []
        captioned = [bool(r.prompt) for r in row_requests] or [True] * n
        cond, uncond = self._decoder_conditions(image_embed, text, captioned)
        starts = [r.decoder_start for r in row_requests] or None
        masked = self._masked("decoder", requests, rows) if requests is not None and rows else None
        return denoise(
            "decoder",
            self.config,
            self.network_call("decoder"),
            (n, 3, side, side),
            seeds,
            settings,
            cond=cond,
            uncond=uncond,
            guided_channels=3,
            clip_denoised=True,
            device=self.device,
            progress=progress,
            starts=starts if starts is not None and any(s is not None for s in starts) else None,
            masked=masked,
        )

    def _sample_upsampler(
        self,
        stage: StageName,
        low_res: torch.Tensor | None,
        seeds: list[int],
        settings: StageSampling,
        progress: Callable[[int, int], None],
        masked: Masked | None = None,
    ) -> torch.Tensor:
        assert low_res is not None
        side = getattr(self.config, stage).unet.image_size
        # Micro-batches (ExecutionConfig.micro_batch_*): each row keeps its own seed's noise.
        parts = chunks(len(seeds), self.execution.micro_batch(stage, self.device))
        outs = [
            denoise(
                stage,
                self.config,
                self.network_call(stage),
                (len(rows), 3, side, side),
                seeds[rows.start : rows.stop],
                settings,
                cond={"low_res": low_res[rows.start : rows.stop].clamp(-1, 1)},  # [n x 3 x h x w]
                clip_denoised=True,
                device=self.device,
                progress=_part_progress(progress, part, len(parts)),
                masked=_masked_rows(masked, rows),
            )  # [n x 3 x side x side]
            for part, rows in enumerate(parts)
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def network_call(self, stage: StageName) -> NetworkCall:
        """``stage``'s network as the samplers call it, under the pipeline's execution config."""
        return network_call(stage, self._calls[stage], self.dtype, self.execution, self.device)

    # -- image operations (Ramesh et al. 2022, §3) --------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings z_i [N x D] (unit norm) of images [N x 3 x H x W] in [-1, 1]."""
        return self.clip.encode_image(images.to(self.device)).float()

    @torch.no_grad()
    def embed_prompts(
        self, prompts: Sequence[str], seed: int, sampling: SamplingConfig | None = None
    ) -> torch.Tensor:
        """The prior's image embedding [N x D] for each prompt (prompt k from ``seed`` + k), as
        :meth:`generate` would draw for its first image."""
        sampling = sampling or self.config.sampling
        requests = [GenerationRequest(p, 1, seed + k) for k, p in enumerate(prompts)]
        text = self.encode_text(list(prompts)).to(self.device)
        rows = [(k, 0) for k in range(len(requests))]
        return self._sample_prior(requests, rows, text, sampling.prior, lambda step, total: None)

    @torch.no_grad()
    def invert_decoder(
        self,
        images: torch.Tensor,
        image_embeds: torch.Tensor,
        settings: StageSampling,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """DDIM-invert the decoder (§3.1): the latent x_T [N x 3 x 64 x 64] from which DDIM (η = 0)
        with the same settings decodes ``images`` back, conditioned on ``image_embeds`` alone.

        :param images: [N x 3 x H x W] in [-1, 1], resized (antialiased) to the decoder's side.
        :param image_embeds: [N x D] unit norm (usually the images' own CLIP embeddings).
        """
        side = self.config.decoder.unet.image_size
        x0 = _resize(images.to(self.device).float(), side).clamp(-1, 1)  # [N x 3 x s x s]
        n = x0.shape[0]
        text = self.encode_text([""] * n).to(self.device)
        cond, uncond = self._decoder_conditions(image_embeds.to(self.device).float(), text, [False] * n)
        model, kwargs = guided(self.network_call("decoder"), settings, cond, uncond, guided_channels=3)
        diffusion = create_stage_diffusion("decoder", self.config, steps=settings.steps)
        return ddim_invert(model, x0, diffusion, model_kwargs=kwargs, callback=progress)

    def _request_embeds(
        self, requests: Sequence[GenerationRequest], image_embeds: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The batch's image embeddings [len(requests) x D]: given, from the requests, or None
        (the prior samples them). Requests either all carry one or none do."""
        carried = [r.image_embed for r in requests]
        if all(e is None for e in carried):
            return image_embeds
        if image_embeds is not None or any(e is None for e in carried):
            raise ValueError("either every request of a batch carries an image embedding or none does")
        return torch.stack([e.float().reshape(-1) for e in carried if e is not None])

    def _masked(
        self,
        stage: StageName,
        requests: Sequence[GenerationRequest] | None,
        rows: list[tuple[int, int]] | None,
        resample: int | None = None,
    ) -> Masked | None:
        """The known images and masks of an edit batch at ``stage``'s side, or None (no edits)."""
        if not requests or not rows:
            return None
        edits = [requests[i].edit for i, _ in rows]
        if all(e is None for e in edits):
            return None
        if any(e is None for e in edits):
            raise ValueError("either every request of a batch is an edit or none is")
        side = getattr(self.config, stage).unet.image_size
        known = torch.stack([_resize(e.image[None].float(), side)[0] for e in edits if e is not None])
        mask = torch.stack(
            [_resize(e.mask[None, None].float(), side)[0] for e in edits if e is not None]
        )  # [R x 1 x s x s]
        # A pixel partly inside the painted region is repainted: the seam falls outside it.
        mask = (mask > 1e-3).float()
        passes = resample if resample is not None else max(e.resample for e in edits if e is not None)
        return Masked(known.to(self.device), mask.to(self.device), passes)

    def _paste_known(
        self, x: torch.Tensor, requests: Sequence[GenerationRequest], rows: list[tuple[int, int]], size: int
    ) -> torch.Tensor:
        """Edits keep the source exactly outside the mask, at the output size [R x 3 x size x size]."""
        x = _resize(x.float(), size)
        known = torch.stack([_resize(requests[i].edit.image[None].float(), size)[0] for i, _ in rows])  # type: ignore[union-attr]
        mask = torch.stack(
            [_resize(requests[i].edit.mask[None, None].float(), size)[0] for i, _ in rows]  # type: ignore[union-attr]
        )
        mask = (mask > 1e-3).float().to(x.device)
        return mask * x + (1 - mask) * known.to(x.device)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _drop_canceled(
        rows: list[tuple[int, int]], dropped: set[int]
    ) -> tuple[list[tuple[int, int]], list[int] | None]:
        """Rows of requests not canceled, and the positions kept (None when nothing changed)."""
        keep = [pos for pos, (i, _) in enumerate(rows) if i not in dropped]
        if len(keep) == len(rows):
            return rows, None
        return [rows[pos] for pos in keep], keep

    def _collect(
        self,
        requests: Sequence[GenerationRequest],
        rows: list[tuple[int, int]],
        x: torch.Tensor | None,
        size: int,
    ) -> list[np.ndarray | None]:
        images: list[np.ndarray | None] = [None] * len(requests)
        if x is None or not rows:
            return images
        if x.shape[-1] != size:
            # 512 is the 1024 output resized (antialiased area filter).
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
        pixels = to_uint8_images(x)
        for i in sorted({i for i, _ in rows}):
            images[i] = np.stack([pixels[pos] for pos, (r, _) in enumerate(rows) if r == i])
        return images

    def _start_timer(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _stop_timer(self, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


class _WithPreview:
    """A stage's step hook that also takes each step's x̂_0 (the samplers' ``report_step``)."""

    def __init__(self, on_step: Callable[[int, int], None], stage: str, preview: PreviewCallback):
        self.on_step = on_step
        self.stage = stage
        self.preview = preview

    def __call__(self, step: int, total: int) -> None:
        self.on_step(step, total)

    def xstart(self, pred_xstart: torch.Tensor) -> None:
        self.preview(self.stage, pred_xstart)


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """[N x C x H x W] → [N x C x side x side] (antialiased bilinear; unchanged when equal)."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def _part_progress(progress: Callable[[int, int], None], part: int, parts: int) -> Callable[[int, int], None]:
    """A stage's step hook for micro-batch ``part`` of ``parts``: steps counted over all parts."""
    if parts == 1:
        return progress

    def on_step(step: int, total: int) -> None:
        progress(part * total + step, parts * total)

    return on_step


def _masked_rows(masked: Masked | None, rows: range) -> Masked | None:
    """The rows ``rows`` of a masked (edit) batch."""
    if masked is None:
        return None
    return Masked(masked.known[rows.start : rows.stop], masked.mask[rows.start : rows.stop], masked.resample)


def load_pipeline(
    weights: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    execution: ExecutionConfig | None = None,
) -> UnclipPipeline:
    """``None``: the bundled default model; ``random:<preset>``: random weights; else a weights dir.
    ``execution``: the fast path's switches (default: :class:`~models.execution.ExecutionConfig`)."""
    if weights is not None and weights.startswith("random:"):
        preset = weights.split(":", 1)[1]
        return UnclipPipeline.random(preset, device=device, dtype=dtype, execution=execution)
    directory = Path(weights) if weights else DEFAULT_WEIGHTS_DIR
    if not (directory / "manifest.json").is_file():
        hint = "train one with `unclip train --all --out DIR`, or use random weights (`random:tiny`)"
        raise FileNotFoundError(f"no model weights at {directory} (manifest.json missing): {hint}")
    return UnclipPipeline.from_weights(directory, device=device, dtype=dtype, execution=execution)
