"""Typed configuration for every stage of the unCLIP chain, and the named presets.

One frozen dataclass per stage (nanoGPT's ``GPTConfig``); presets are a base plus a delta
(GLIDE's ``model_and_diffusion_defaults_upsampler``). Configs serialise to plain JSON for the
weights manifest (:func:`config_to_dict` / :func:`model_config_from_dict`).

Sizes of ``paper`` follow Ramesh et al. 2022, Table 3; ``tiny`` is sized to train and sample
on two CPU cores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

ScheduleName = Literal["cosine", "linear"]
Prediction = Literal["epsilon", "x0", "v"]
SamplerName = Literal["ddpm", "ddim", "dpm++2m"]
Corruption = Literal["gaussian_blur", "bsr"]
StageName = Literal["clip", "prior", "decoder", "sr256", "sr1024"]
STAGES: tuple[StageName, ...] = ("clip", "prior", "decoder", "sr256", "sr1024")
UNET_STAGES: tuple[StageName, ...] = ("decoder", "sr256", "sr1024")
# The UNets that run under bf16 autocast by default where the device has native bf16
# (models.execution.default_autocast_stages). On a CPU with native bf16 (AMX or AVX-512 BF16) every
# UNet does: the decoder took 15% less time in bf16 on an AMX Xeon and 11-21% less on a Zen 4 EPYC
# with the same adherence. The decoder in bf16 on a GPU is unmeasured, so there only the
# upsamplers autocast (docs/benchmark.md, "The bf16 decoder").
DEFAULT_AUTOCAST_STAGES: tuple[StageName, ...] = ("sr256", "sr1024")
CPU_AUTOCAST_STAGES: tuple[StageName, ...] = UNET_STAGES


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and what the network predicts."""

    schedule: ScheduleName = "cosine"
    timesteps: int = 1000
    prediction: Prediction = "epsilon"
    # Learned variance (Nichol & Dhariwal 2021 "learned range"): the network outputs
    # 2x channels and is trained with L_simple + lambda * L_vlb. The paper's decoder uses it.
    learn_sigma: bool = False


@dataclass(frozen=True)
class ClipConfig:
    """An open_clip CLIP model.

    Either a small custom architecture (registered with open_clip under ``name``) or, when
    ``open_clip_name`` is set, one of open_clip's built-in architectures (e.g. ``ViT-B-32``)
    whose weights the user brings as a local checkpoint file.
    """

    name: str = "unclip-tiny-clip"
    open_clip_name: str | None = None
    embed_dim: int = 64
    image_size: int = 64
    vision_width: int = 128
    vision_layers: int = 3
    vision_patch_size: int = 8
    vision_head_width: int = 32
    context_length: int = 32
    vocab_size: int = 49408
    text_width: int = 128
    text_heads: int = 4
    text_layers: int = 3


@dataclass(frozen=True)
class PriorConfig:
    """The diffusion prior: a decoder-only Transformer over
    [text tokens, text embedding, timestep, noised image embedding, query]."""

    embed_dim: int = 64  # CLIP joint embedding width (must equal ClipConfig.embed_dim)
    text_width: int = 128  # width of CLIP's per-token text states (ClipConfig.text_width)
    context_length: int = 32  # number of text tokens (ClipConfig.context_length)
    width: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    # Unit-norm CLIP embeddings have per-component variance 1/embed_dim; the paper multiplies
    # by 17.2 (ViT-L, dim 768) to reach roughly unit variance. None means sqrt(embed_dim),
    # the same idea for any width.
    embedding_scale: float | None = None
    text_drop_prob: float = 0.1
    candidates: int = 2  # samples drawn per image; keep the best dot product with the text
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(schedule="cosine", prediction="x0")
    )


@dataclass(frozen=True)
class UNetConfig:
    """A GLIDE / guided-diffusion style UNet."""

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3  # doubled by the model when the diffusion learns sigma
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sides that get attention
    num_head_channels: int = 32
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    # Decoder conditioning (None for the upsamplers).
    clip_embed_dim: int | None = None
    text_width: int | None = None
    clip_context_tokens: int = 4
    # GLIDE adds its text encoder's final token embedding to the timestep embedding ("in place of
    # a class embedding"); its text encoder trains with the decoder. Ours is the frozen CLIP,
    # whose final token keeps little of what contrastive training did not need (the first
    # bundled CLIP told the 9 positions of one picture apart 40% of the time), and the decoder
    # then ignored the text tokens in attention (models/training/RECIPE.md). With this set the
    # decoder pools its projected text tokens with learned attention queries and adds the pool.
    text_pool_to_time: bool = False
    # Upsamplers: channels of the (upsampled) low-resolution image concatenated to the input.
    low_res_channels: int = 0
    # Space-to-depth stem (as in Hoogeboom et al. 2023, "simple diffusion"): the input is folded
    # into patch_size x patch_size patches on channels and the output unfolded, so the UNet's
    # first level runs at image_size / patch_size. 1 is the paper's UNet.
    patch_size: int = 1
    # A learned absolute position embedding added after the stem (fixed-size networks only: the
    # decoder; not the crop-trained upsamplers). Convolutions otherwise infer position only from
    # the zero padding, which a small network learns slowly.
    position_embedding: bool = False
    # Extra residual blocks at the first level after the decoder half, before the output
    # projection: depth where outlines are drawn, for a few percent of the cost. Each ends in a
    # zero-initialised convolution, so it starts as the identity and a trained network gains
    # them (``unclip train --init-from``) without changing what it computes
    # (models/training/RECIPE.md, section 10).
    output_res_blocks: int = 0


@dataclass(frozen=True)
class DecoderConfig:
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(clip_embed_dim=64, text_width=128))
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(schedule="cosine", learn_sigma=True)
    )
    clip_drop_prob: float = 0.1
    text_drop_prob: float = 0.5


@dataclass(frozen=True)
class UpsamplerConfig:
    low_res_size: int = 64
    unet: UNetConfig = field(
        default_factory=lambda: UNetConfig(
            image_size=256,
            model_channels=16,
            channel_mult=(1, 2, 3, 4),
            num_res_blocks=1,
            attention_resolutions=(),
            low_res_channels=3,
        )
    )
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(schedule="cosine"))
    corruption: Corruption = "gaussian_blur"
    blur_kernel: int = 3
    blur_sigma: float = 0.6
    crop_fraction: float = 0.25  # train on random crops of 1/4 of the target side


@dataclass(frozen=True)
class StageSampling:
    """How one stage samples at inference."""

    steps: int
    guidance: float = 1.0  # classifier-free guidance scale; 1.0 means no guidance
    sampler: SamplerName = "ddim"
    eta: float = 0.0  # DDIM stochasticity


@dataclass(frozen=True)
class SamplingConfig:
    prior: StageSampling = field(default_factory=lambda: StageSampling(steps=16, guidance=1.0))
    decoder: StageSampling = field(default_factory=lambda: StageSampling(steps=20, guidance=3.0))
    sr256: StageSampling = field(default_factory=lambda: StageSampling(steps=8))
    sr1024: StageSampling = field(default_factory=lambda: StageSampling(steps=5))

    def for_stage(self, stage: StageName) -> StageSampling:
        stage_sampling: StageSampling = getattr(self, stage)
        return stage_sampling

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> SamplingConfig:
        """These settings with ``{stage: {field: value}}`` applied; a value of None keeps the
        setting. The one conversion from a request's or a command line's overrides."""
        stages: dict[str, StageSampling] = {}
        for stage, changes in overrides.items():
            current = self.for_stage(stage)  # type: ignore[arg-type]  # unknown names raise
            given = {name: value for name, value in changes.items() if value is not None}
            stages[stage] = replace(current, **given)
        return replace(self, **stages)


@dataclass(frozen=True)
class ModelConfig:
    """The whole chain."""

    name: str = "tiny"
    clip: ClipConfig = field(default_factory=ClipConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    sr256: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    sr1024: UpsamplerConfig = field(
        default_factory=lambda: UpsamplerConfig(
            low_res_size=256,
            unet=UNetConfig(
                image_size=1024,
                model_channels=8,
                channel_mult=(1, 1, 2, 2, 4, 4),
                num_res_blocks=1,
                attention_resolutions=(),
                low_res_channels=3,
            ),
            diffusion=DiffusionConfig(schedule="linear"),
            corruption="bsr",
        )
    )
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def _tiny() -> ModelConfig:
    """Sized to train in about two hours and sample in seconds on two CPU cores.

    Measured choices (models/training/RECIPE.md): v-prediction everywhere (an epsilon network's
    error at high noise is amplified by 1/sqrt(alpha_bar) into x0 and a briefly trained decoder
    samples noise); a 2x2 space-to-depth stem for the decoder and the 64->256 upsampler (3x
    the decoder's training throughput at the same width); a learned position embedding so the
    decoder places the object early in training; fixed variance (DDIM samples by default).
    """
    base = ModelConfig()
    decoder = replace(
        base.decoder,
        unet=replace(
            base.decoder.unet,
            channel_mult=(1, 2, 4, 4),
            attention_resolutions=(16, 8, 4),
            patch_size=2,
            position_embedding=True,
            text_pool_to_time=True,
        ),
        diffusion=DiffusionConfig(schedule="cosine", prediction="v"),
        # The paper drops the caption 50% of the time; this decoder reads position mostly from
        # the caption (its frozen CLIP's image embedding barely tells positions apart), so it
        # keeps the caption in 80% of examples. Guidance's unconditional half (both dropped)
        # is then 2% of them. Measured with the high-noise timestep share of the decoder's
        # recipe (models/training/RECIPE.md, section 7).
        text_drop_prob=0.2,
    )
    sr256 = replace(
        base.sr256,
        unet=replace(base.sr256.unet, model_channels=32, patch_size=2),
        diffusion=DiffusionConfig(schedule="cosine", prediction="v"),
    )
    sr1024 = replace(base.sr1024, diffusion=DiffusionConfig(schedule="linear", prediction="v"))
    # Chosen by `python -m bench.sweep` on the bundled weights (README, "Sampling defaults"): prior
    # guidance 2 lifts color and size at 8 steps for the cost of 16 unguided ones; decoder
    # guidance 3 at 20 DDIM steps has the best R-precision and CLIP-FID (5 and 8 lose color,
    # 40 steps cost twice as much for a few points of shape).
    sampling = replace(
        base.sampling,
        prior=StageSampling(steps=8, guidance=2.0),
        decoder=StageSampling(steps=20, guidance=3.0),
    )
    return replace(base, decoder=decoder, sr256=sr256, sr1024=sr1024, sampling=sampling)


def _paper() -> ModelConfig:
    """Table 3 of the paper, with CLIP ViT-L/14 (width 768 joint embedding, 77 tokens)."""
    clip = ClipConfig(
        name="ViT-L-14",
        open_clip_name="ViT-L-14",
        embed_dim=768,
        image_size=224,
        vision_width=1024,
        vision_layers=24,
        vision_patch_size=14,
        vision_head_width=64,
        context_length=77,
        text_width=768,
        text_heads=12,
        text_layers=12,
    )
    prior = PriorConfig(
        embed_dim=768,
        text_width=768,
        context_length=77,
        width=2048,
        layers=24,
        heads=32,
        embedding_scale=17.2,
    )
    decoder = DecoderConfig(
        unet=UNetConfig(
            image_size=64,
            model_channels=512,
            channel_mult=(1, 2, 3, 4),
            num_res_blocks=3,
            attention_resolutions=(32, 16, 8),
            num_head_channels=64,
            clip_embed_dim=768,
            text_width=768,
        ),
    )
    base = ModelConfig()
    sr256 = replace(
        base.sr256,
        unet=replace(base.sr256.unet, model_channels=320, channel_mult=(1, 2, 3, 4), num_res_blocks=3),
    )
    sr1024 = replace(
        base.sr1024,
        unet=replace(base.sr1024.unet, model_channels=192, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2),
    )
    sampling = SamplingConfig(
        prior=StageSampling(steps=64, guidance=1.0),
        decoder=StageSampling(steps=250, guidance=1.25, sampler="ddpm"),
        sr256=StageSampling(steps=27),
        sr1024=StageSampling(steps=15),
    )
    return ModelConfig(
        name="paper", clip=clip, prior=prior, decoder=decoder, sr256=sr256, sr1024=sr1024, sampling=sampling
    )


PRESETS = {"tiny": _tiny, "paper": _paper}


def get_config(name: str) -> ModelConfig:
    """A named preset. Raises ``KeyError`` naming the known presets."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(PRESETS)}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as JSON-ready data (tuples become lists)."""
    return dataclasses.asdict(config)


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) dataclass from :func:`config_to_dict` output, refusing unknown keys."""
    kwargs: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    hints = _nested_types(cls)
    for key, value in data.items():
        if key in hints and isinstance(value, dict):
            kwargs[key] = _build(hints[key], value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _nested_types(cls: type) -> dict[str, type]:
    nested: dict[type, dict[str, type]] = {
        ModelConfig: {
            "clip": ClipConfig,
            "prior": PriorConfig,
            "decoder": DecoderConfig,
            "sr256": UpsamplerConfig,
            "sr1024": UpsamplerConfig,
            "sampling": SamplingConfig,
        },
        PriorConfig: {"diffusion": DiffusionConfig},
        DecoderConfig: {"unet": UNetConfig, "diffusion": DiffusionConfig},
        UpsamplerConfig: {"unet": UNetConfig, "diffusion": DiffusionConfig},
        SamplingConfig: {
            "prior": StageSampling,
            "decoder": StageSampling,
            "sr256": StageSampling,
            "sr1024": StageSampling,
        },
    }
    return nested.get(cls, {})


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    return _build(ModelConfig, data)
