"""What each stage trains on and how its loss is computed (the :class:`~models.training.loop.TrainTask`\\ s).

- ``clip``: contrastive (open_clip's ``ClipLoss``) on (image, caption) pairs with CLIP's learnable
  logit scale (clamped at 100 as in open_clip's training).
- ``prior``: "we train a diffusion prior ... to predict the unnoised z_i directly" (paper Sec. 2.2):
  x_start = CLIP image embedding * embedding_scale, x0 prediction with MSE, conditioned on the
  frozen CLIP's text embedding and token states; the text is dropped 10% of the time.
- ``decoder``: 64x64 images conditioned on the frozen CLIP's image embedding of the same image and
  the caption's token states; "we randomly set the CLIP embeddings to zero (or a learned
  embedding) 10% of the time, and randomly drop the text caption 50% of the time" (Sec. 2.1).
  The hybrid loss (L_simple + L_vlb) comes from the diffusion when it learns sigma.
- ``sr256`` / ``sr1024``: the target at 256 / 1024, its low-res input the target downsampled to
  64 / 256 and corrupted (:mod:`models.training.corruption`), trained on matching random crops of
  1/4 of the target side ("we train on random crops of images that are 1/4 of the target size").

Each task draws all its randomness from the step's generator (see :mod:`models.training.loop`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip.loss import ClipLoss
from torch import nn

from models.checkpoints import WeightsError, load_stage_into
from models.clip import build_clip_model, encode_images, encode_text_tokens, get_tokenizer
from models.configs import ModelConfig, StageName
from models.data.shapes import swap_twin
from models.data.source import ShapesSource, torch_batch
from models.evaluation.clip_probe import attribute_swap_retrieval
from models.factory import create_stage_diffusion, create_stage_module, stage_diffusion_config
from models.training.config import TrainConfig
from models.training.corruption import degrade_low_res, paired_random_crop
from models.training.edges import edge_weights
from models.training.stream import ExampleStream

MAX_LOGIT_SCALE = math.log(100.0)
EVAL_EXAMPLES = 64  # the held batch each stage reports on (``evaluate``)
EVAL_SEED = 1234


def make_source(data_dir: str | Path | None = None) -> Any:
    """The default data source (the shapes world), or a folder of image + caption pairs."""
    from models.data.source import FolderSource, ShapesSource

    return ShapesSource() if data_dir is None else FolderSource(Path(data_dir))


def load_frozen_clip(out_dir: str | Path, config: ModelConfig, device: torch.device) -> nn.Module:
    """The CLIP trained by the ``clip`` stage (exported to ``out_dir``), frozen."""
    model = build_clip_model(config.clip)
    try:
        load_stage_into(model, out_dir, "clip")
    except WeightsError as error:
        raise WeightsError(
            f"{error}; train CLIP first: `unclip train --stage clip --out {out_dir}`"
        ) from error
    return model.to(device).eval().requires_grad_(False)


def _training_source(ctx: StageContext) -> Any:
    """The source the training stream reads: ``ctx.source``, with the recipe's shape weights when
    it is the shapes world (held batches read ``ctx.source`` itself, so they stay comparable)."""
    if not ctx.train.shape_weights:
        return ctx.source
    from models.data.source import ShapesSource

    if not isinstance(ctx.source, ShapesSource):
        raise ValueError("shape weights apply to the shapes world only, not to a folder of images")
    return ctx.source.with_shape_weights(dict(ctx.train.shape_weights))


@dataclass
class StageContext:
    """What every task needs: the model config, its recipe, data and where the run lives."""

    config: ModelConfig
    train: TrainConfig
    source: Any
    out_dir: Path
    device: torch.device


class _Task:
    """The base of every stage's :class:`~models.training.loop.TrainTask`: a subclass sets ``stage``
    and ``module`` and implements ``make_batch``, ``loss`` and ``evaluate``."""

    stage: StageName
    module: nn.Module

    def __init__(self, ctx: StageContext, image_size: int):
        self.ctx = ctx
        self.batch_size = ctx.train.batch_size
        self.device = ctx.device
        self.stream = ExampleStream(
            _training_source(ctx),
            image_size,
            ctx.train.batch_size,
            ctx.train.seed,
            self.stage,
            ctx.train.block_batches,
        )
        self._held: dict[str, torch.Tensor] | None = None

    def batch(self, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The training batch of step ``step`` (data from the stream, randomness from ``generator``)."""
        images, captions = torch_batch(self.stream.batch(step))
        return self.make_batch(images.to(self.device), captions, generator)

    def make_batch(
        self, images: torch.Tensor, captions: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def held_batch(self) -> dict[str, torch.Tensor]:
        """A fixed batch of ``EVAL_EXAMPLES`` from a stream of its own (never trained on)."""
        if self._held is None:
            stream = ExampleStream(
                self.ctx.source, self.stream.size, EVAL_EXAMPLES, self.ctx.train.seed, f"{self.stage}-eval"
            )
            images, captions = torch_batch(stream.batch(0))
            with torch.no_grad():
                self._held = self.make_batch(
                    images.to(self.device), captions, torch.Generator().manual_seed(EVAL_SEED)
                )
        return self._held

    def loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of ``batch`` (a scalar) and metrics to log."""
        raise NotImplementedError

    def evaluate(self, module: nn.Module) -> dict[str, float]:
        """Metrics of ``module`` (the task's network or its EMA copy) on the held batch."""
        raise NotImplementedError

    def after_step(self) -> None:
        pass


class ClipTask(_Task):
    """Contrastive CLIP training on (image, caption) pairs."""

    stage: StageName = "clip"

    def __init__(self, ctx: StageContext, module: nn.Module | None = None):
        super().__init__(ctx, ctx.config.clip.image_size)
        self.module = module if module is not None else create_stage_module("clip", ctx.config)
        self.tokenizer = get_tokenizer(ctx.config.clip)
        self.clip_loss = ClipLoss()

    def batch(self, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        examples = self.stream.batch(step)
        if self.ctx.train.swap_twins > 0 and isinstance(self.ctx.source, ShapesSource):
            examples = self._with_twins(examples, generator)
        images, captions = torch_batch(examples)
        return self.make_batch(images.to(self.device), captions, generator)

    def _with_twins(self, examples: list[Any], generator: torch.Generator) -> list[Any]:
        """The first ``swap_twins / 2`` of the batch become (example, twin) pairs that differ in
        one attribute of ``swap_attributes``, replacing the last examples; held-out captions are
        still kept out (such a pair is skipped)."""
        train, world = self.ctx.train, self.ctx.source.world
        rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
        out = list(examples)
        pairs = int(train.swap_twins * len(out)) // 2
        for i in range(pairs):
            attribute = train.swap_attributes[int(rng.integers(len(train.swap_attributes)))]
            first, twin = swap_twin(out[i].spec, attribute, rng, self.stream.size)
            if world.is_heldout_caption(first.caption) or world.is_heldout_caption(twin.caption):
                continue
            out[i], out[len(out) - 1 - i] = first, twin
        return out

    def make_batch(
        self, images: torch.Tensor, captions: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        # Caption ids (equal captions share one) so that retrieval counts a duplicate as a hit.
        ids = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
        return {
            "images": images,
            "tokens": self.tokenizer(captions).to(self.device),
            "caption_ids": torch.tensor([ids[c] for c in captions]),
        }

    @torch.no_grad()
    def evaluate(self, module: nn.Module) -> dict[str, float]:
        """Caption <-> image retrieval top-1 within the held batch, both ways."""
        batch = self.held_batch()
        image_features = encode_images(module, batch["images"])  # [N x D]
        text_features = encode_text_tokens(module, batch["tokens"]).embedding  # [N x D]
        logits = image_features @ text_features.T  # [N x N]
        ids = batch["caption_ids"]
        metrics = {
            "held_i2t": float((ids[logits.argmax(1)] == ids).float().mean()),
            "held_t2i": float((ids[logits.argmax(0)] == ids).float().mean()),
        }
        if isinstance(self.ctx.source, ShapesSource):
            # In-batch retrieval rises on color and size alone; this shows position and shape.
            probe = attribute_swap_retrieval(
                lambda images: encode_images(module, images.to(self.device)),
                lambda captions: (
                    encode_text_tokens(module, self.tokenizer(captions).to(self.device)).embedding
                ),
                image_size=self.stream.size,
                seed=EVAL_SEED,
            )
            metrics.update(probe.to_metrics())
        return metrics

    def loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        image_features = encode_images(self.module, batch["images"])  # [N x D]
        text_features = encode_text_tokens(self.module, batch["tokens"]).embedding  # [N x D]
        logit_scale = self._logit_scale().exp()
        loss = self.clip_loss(image_features, text_features, logit_scale)
        with torch.no_grad():
            logits = image_features @ text_features.T  # [N x N]
            labels = torch.arange(len(logits), device=logits.device)
            accuracy = (logits.argmax(1) == labels).float().mean()
        return loss, {"logit_scale": float(logit_scale.detach()), "i2t_acc": float(accuracy)}

    def after_step(self) -> None:
        with torch.no_grad():
            self._logit_scale().clamp_(0, MAX_LOGIT_SCALE)

    def _logit_scale(self) -> torch.Tensor:
        """CLIP's learnable log temperature (a parameter of ``module``)."""
        logit_scale = self.module.logit_scale
        assert isinstance(logit_scale, torch.Tensor)
        return logit_scale


class _DiffusionTask(_Task):
    """Shared by the diffusion stages: timestep sampling and the training loss."""

    def __init__(self, ctx: StageContext, image_size: int, module: nn.Module | None):
        super().__init__(ctx, image_size)
        self.module = module if module is not None else create_stage_module(self.stage, ctx.config)
        self.diffusion = create_stage_diffusion(self.stage, ctx.config)
        snr = _snr(self.diffusion)
        self.snr_weight = _min_snr_weights(snr, self.prediction, ctx.train.min_snr_gamma).to(self.device)

    @torch.no_grad()
    def evaluate(self, module: nn.Module) -> dict[str, float]:
        """Errors of the predicted x0 on the held batch, at evenly spread timesteps with fixed noise
        (images clamped to [-1, 1] as in sampling).

        ``held_x0_mse``: over all timesteps; ``held_x0_mse_hi``: over the noisier half (t >= T/2),
        where layout and color are decided; for conditioned stages ``held_cond_gain_hi``: the
        fraction of that error the conditions remove (1 - conditioned / everything dropped).
        """
        batch = dict(self.held_batch())
        x_start = self.x_start(batch)
        n, steps = x_start.shape[0], self.diffusion.num_timesteps
        t = ((torch.arange(n) + 0.5) * steps / n).long().to(self.device)  # [N], spread over [0, T)
        noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(EVAL_SEED)).to(self.device)
        x_t = self.diffusion.q_sample(x_start, t, noise)
        hi = t >= steps // 2
        flags = [k for k in ("drop_clip", "drop_text") if k in batch]

        def x0_error(drop: bool) -> torch.Tensor:  # [N]
            kwargs = self.model_kwargs(batch)
            kwargs.update({k: torch.full_like(batch[k], drop) for k in flags})
            out = self.diffusion.p_mean_variance(
                module, x_t, t, clip_denoised=x_start.ndim == 4, model_kwargs=kwargs
            )
            return (out["pred_xstart"] - x_start).pow(2).flatten(1).mean(1)

        cond = x0_error(False)
        metrics = {"held_x0_mse": float(cond.mean()), "held_x0_mse_hi": float(cond[hi].mean())}
        if flags:
            metrics["held_cond_gain_hi"] = float(1 - cond[hi].mean() / x0_error(True)[hi].mean())
        return metrics

    def x_start(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["x_start"]

    def model_kwargs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k != "x_start"}

    def loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.diffusion_loss(self.x_start(batch), self.model_kwargs(batch), generator)

    @property
    def prediction(self) -> str:
        return stage_diffusion_config(self.stage, self.ctx.config).prediction

    def diffusion_loss(
        self, x_start: torch.Tensor, model_kwargs: dict[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        n = x_start.shape[0]
        t = sample_timesteps(
            n, self.diffusion.num_timesteps, self.ctx.train.high_noise_fraction, generator
        ).to(self.device)  # [N]
        noise = torch.randn(x_start.shape, generator=generator).to(self.device)  # like x_start
        strength = self.ctx.train.edge_loss_strength
        terms = self.diffusion.training_losses(
            self.module,
            x_start,
            t,
            model_kwargs=model_kwargs,
            noise=noise,
            pixel_weight=edge_weights(x_start, strength) if strength > 0 else None,
        )
        loss = terms["loss"]  # [N]
        metrics = {k: float(v.detach().mean()) for k, v in terms.items() if k != "loss"}
        if self.ctx.train.loss_weighting == "min_snr":
            # Min-SNR-gamma (Hang et al. 2023): reweight the simple term so every timestep counts
            # as min(SNR, gamma) in x0 units; the variational term (learned sigma) is unchanged.
            loss = loss - terms["mse"] + self.snr_weight[t] * terms["mse"]
        return loss.mean(), metrics


HIGH_NOISE_SPAN = 0.1  # the noisiest tenth of the schedule


def sample_timesteps(
    n: int, num_timesteps: int, high_noise_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """[N] training timesteps: uniform, except that each row is drawn from the noisiest
    :data:`HIGH_NOISE_SPAN` of the schedule with probability ``high_noise_fraction``.

    Sampling starts from pure noise, where the network's prediction can come only from its
    conditions; uniform draws put 2.5% of examples in the top 2.5% of the schedule, and the
    decoder learned to place objects from its conditions there last (models/training/RECIPE.md).
    """
    t = torch.randint(0, num_timesteps, (n,), generator=generator)  # [N]
    if high_noise_fraction > 0:
        low = num_timesteps - max(1, round(HIGH_NOISE_SPAN * num_timesteps))
        noisy = torch.randint(low, num_timesteps, (n,), generator=generator)  # [N]
        pick = torch.rand(n, generator=generator) < high_noise_fraction  # [N]
        t = torch.where(pick, noisy, t)
    return t


def _snr(diffusion: Any) -> np.ndarray:
    """[T] signal-to-noise ratio alpha_bar / (1 - alpha_bar) of each timestep."""
    alphas_cumprod = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
    return alphas_cumprod / np.maximum(1.0 - alphas_cumprod, 1e-20)


def _x0_error_factor(snr: np.ndarray, prediction: str) -> torch.Tensor:
    """[T] factor turning the squared error of the predicted quantity into that of x0:
    1 / SNR for epsilon, 1 / (SNR + 1) for v, 1 for x0."""
    factor = {"epsilon": 1.0 / snr, "v": 1.0 / (snr + 1.0), "x0": np.ones_like(snr)}[prediction]
    return torch.as_tensor(factor, dtype=torch.float32)


def _min_snr_weights(snr: np.ndarray, prediction: str, gamma: float) -> torch.Tensor:
    """[T] weights of the MSE on the predicted quantity equal to a min(SNR, gamma) x0-loss weight:
    min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, and min(SNR, gamma) for x0."""
    return _x0_error_factor(snr, prediction) * torch.as_tensor(np.minimum(snr, gamma), dtype=torch.float32)


class PriorTask(_DiffusionTask):
    """(text encoding, CLIP image embedding) pairs from the frozen trained CLIP."""

    stage: StageName = "prior"

    def __init__(self, ctx: StageContext, module: nn.Module | None = None, clip: nn.Module | None = None):
        super().__init__(ctx, ctx.config.clip.image_size, module)
        self.clip = clip if clip is not None else load_frozen_clip(ctx.out_dir, ctx.config, ctx.device)
        self.tokenizer = get_tokenizer(ctx.config.clip)
        self.scale = float(getattr(self.module, "embedding_scale", None) or _embedding_scale(ctx.config))

    @torch.no_grad()
    def make_batch(
        self, images: torch.Tensor, captions: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        text = encode_text_tokens(self.clip, self.tokenizer(captions).to(self.device))
        drop_text = torch.rand(len(captions), generator=generator) < self.ctx.config.prior.text_drop_prob
        return {
            "image_embed": encode_images(self.clip, images),  # [N x D] unit norm
            "text_embed": text.embedding,  # [N x D]
            "text_tokens": text.tokens,  # [N x L x W]
            "text_mask": text.mask,  # [N x L]
            "drop_text": drop_text.to(self.device),  # [N]
        }

    def x_start(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["image_embed"] * self.scale  # [N x D], about unit variance per component

    def model_kwargs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {k: batch[k] for k in ("text_embed", "text_tokens", "text_mask", "drop_text")}


def _embedding_scale(config: ModelConfig) -> float:
    return config.prior.embedding_scale or math.sqrt(config.prior.embed_dim)


class DecoderTask(_DiffusionTask):
    """64x64 images conditioned on their own CLIP image embedding and their caption's tokens."""

    stage: StageName = "decoder"

    def __init__(self, ctx: StageContext, module: nn.Module | None = None, clip: nn.Module | None = None):
        super().__init__(ctx, ctx.config.decoder.unet.image_size, module)
        self.clip = clip if clip is not None else load_frozen_clip(ctx.out_dir, ctx.config, ctx.device)
        self.tokenizer = get_tokenizer(ctx.config.clip)

    @torch.no_grad()
    def make_batch(
        self, images: torch.Tensor, captions: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        text = encode_text_tokens(self.clip, self.tokenizer(captions).to(self.device))
        n = len(captions)
        decoder = self.ctx.config.decoder
        return {
            "x_start": images,  # [N x 3 x 64 x 64]
            "clip_embed": encode_images(self.clip, images),  # [N x D] unit norm
            "text_tokens": text.tokens,  # [N x L x W]
            "text_mask": text.mask,  # [N x L]
            "drop_clip": (torch.rand(n, generator=generator) < decoder.clip_drop_prob).to(self.device),
            "drop_text": (torch.rand(n, generator=generator) < decoder.text_drop_prob).to(self.device),
        }


class UpsamplerTask(_DiffusionTask):
    """Crops of the target and of its downsampled, corrupted low-res input."""

    def __init__(self, ctx: StageContext, stage: StageName, module: nn.Module | None = None):
        self.stage = stage
        self.upsampler = getattr(ctx.config, stage)
        super().__init__(ctx, self.upsampler.unet.image_size, module)

    @torch.no_grad()
    def make_batch(
        self, target: torch.Tensor, captions: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        # target: [N x 3 x S x S]
        low_res = degrade_low_res(self.upsampler, target.cpu(), generator).to(self.device)  # [N x 3 x s x s]
        crop, low_crop = paired_random_crop(
            target, low_res, self.upsampler.crop_fraction, generator, self.ctx.train.crop_candidates
        )
        return {
            "x_start": crop.contiguous(),
            "low_res": low_crop.contiguous(),
        }  # [N x 3 x S/4 ...], [N x 3 x s/4 ...]


def create_task(stage: StageName, ctx: StageContext) -> _Task:
    """The task of one stage (prior and decoder load the frozen CLIP from ``ctx.out_dir``)."""
    if stage == "clip":
        return ClipTask(ctx)
    if stage == "prior":
        return PriorTask(ctx)
    if stage == "decoder":
        return DecoderTask(ctx)
    if stage in ("sr256", "sr1024"):
        return UpsamplerTask(ctx, stage)
    raise ValueError(f"unknown stage {stage!r}")
