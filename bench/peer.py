"""The peer: diffusers' ``UnCLIPPipeline`` (Karlo's code) with random weights, sized like ours.

Built from one of our :class:`~models.configs.ModelConfig` so both sides have the same widths,
depths, heads and attention levels (``matched by parameters``); our side is then rebuilt without
its space-to-depth stem (:func:`flop_matched`) for the per-network comparison at equal FLOPs.
diffusers has no 256→1024 stage, so the chain compared end to end is text → prior → decoder 64² →
upsampler 256².

No tokenizer and no text model: the caption arrives as encodings (``text_model_output``), and the
empty caption of the unconditional half comes from :class:`FixedTextEncoder`, which returns
precomputed states at no cost (ours needs no encoding for it: guidance drops the text).

diffusers is imported only here, and only from the benchmark's optional extra (``pip install
-e '.[bench]'``); the service never depends on it.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from models.configs import ClipConfig, ModelConfig, SamplingConfig, StageSampling, UNetConfig, get_config


class FixedTokenizer:
    """Stands in for ``CLIPTokenizer``: the pipeline tokenizes only the empty unconditional caption."""

    def __init__(self, context_length: int):
        self.model_max_length = context_length

    def __call__(self, prompts: list[str] | str, **_: Any) -> SimpleNamespace:
        n = 1 if isinstance(prompts, str) else len(prompts)
        mask = torch.zeros(n, self.model_max_length, dtype=torch.long)
        mask[:, :2] = 1  # start and end tokens
        return SimpleNamespace(
            input_ids=torch.zeros(n, self.model_max_length, dtype=torch.long), attention_mask=mask
        )


class FixedTextEncoder(nn.Module):
    """Stands in for ``CLIPTextModelWithProjection``: returns the given states for every caption."""

    def __init__(self, embed: torch.Tensor, states: torch.Tensor):
        super().__init__()
        self.register_buffer("embed", embed)  # [1 x D]
        self.register_buffer("states", states)  # [1 x L x D]

    @property
    def device(self) -> torch.device:  # diffusers asks each component for its device
        return self.get_buffer("embed").device

    @property
    def dtype(self) -> torch.dtype:
        return self.get_buffer("embed").dtype

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        n = input_ids.shape[0]
        embed, states = self.get_buffer("embed"), self.get_buffer("states")
        return SimpleNamespace(text_embeds=embed.expand(n, -1), last_hidden_state=states.expand(n, -1, -1))


def _levels(unet: UNetConfig) -> list[bool]:
    """Per level, whether it has attention (our placement by feature-map side, after the stem)."""
    grid = unet.image_size // unet.patch_size
    attention_ds = {grid // res for res in unet.attention_resolutions}
    return [2**level in attention_ds for level in range(len(unet.channel_mult))]


def decoder_kwargs(config: ModelConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments for our decoder's widths (Karlo's block types)."""
    unet = config.decoder.unet
    attention = _levels(unet)
    down = ["SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention]
    up = ["SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention)]
    # diffusers' guided decoder step splits off a learned variance: it needs 2 x C outputs
    # (Karlo's learned range) even where ours predicts C.
    out = unet.out_channels * 2
    return {
        "sample_size": unet.image_size,
        "in_channels": unet.in_channels,
        "out_channels": out,
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "block_out_channels": tuple(unet.model_channels * m for m in unet.channel_mult),
        "layers_per_block": unet.num_res_blocks,
        "cross_attention_dim": unet.model_channels * 4,  # our context width = the time embedding's
        "attention_head_dim": unet.num_head_channels,
        "resnet_time_scale_shift": "scale_shift",
        "class_embed_type": "identity",
    }


def upsampler_kwargs(unet: UNetConfig) -> dict[str, Any]:
    """``UNet2DModel`` arguments for one of our upsamplers (no attention, like Karlo's)."""
    levels = len(unet.channel_mult)
    return {
        "sample_size": unet.image_size,
        "in_channels": unet.in_channels + unet.low_res_channels,
        "out_channels": unet.out_channels,
        "down_block_types": ("ResnetDownsampleBlock2D",) * levels,
        "up_block_types": ("ResnetUpsampleBlock2D",) * levels,
        "block_out_channels": tuple(unet.model_channels * m for m in unet.channel_mult),
        "layers_per_block": unet.num_res_blocks,
        "resnet_time_scale_shift": "scale_shift",
        "add_attention": False,
        "norm_num_groups": min(32, unet.model_channels),
    }


def build_peer(config: ModelConfig, text_length: int, seed: int = 0) -> Any:
    """diffusers' ``UnCLIPPipeline`` with random weights at our config's widths (prior, decoder,
    64→256 upsampler; the upsampler's first and last UNets are two networks, as in Karlo).

    :param text_length: tokens per caption (the text states' L).
    """
    from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(seed)
    p = config.prior
    d = p.embed_dim
    prior = PriorTransformer(
        num_attention_heads=p.heads,
        attention_head_dim=p.width // p.heads,
        num_layers=p.layers,
        embedding_dim=d,
        num_embeddings=text_length,
        additional_embeddings=4,
    )
    decoder = UNet2DConditionModel(**decoder_kwargs(config))
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=config.decoder.unet.clip_context_tokens,
        clip_embeddings_dim=d,
        time_embed_dim=config.decoder.unet.model_channels * 4,
        cross_attention_dim=config.decoder.unet.model_channels * 4,
    )
    sr = upsampler_kwargs(config.sr256.unet)
    g = torch.Generator().manual_seed(seed + 1)  # a CPU generator, whatever the default device
    empty = FixedTextEncoder(
        torch.randn(1, d, generator=g, device="cpu"),
        torch.randn(1, text_length, d, generator=g, device="cpu"),
    )
    return UnCLIPPipeline(
        prior=prior,
        decoder=decoder,
        text_encoder=empty,
        tokenizer=FixedTokenizer(text_length),
        text_proj=text_proj,
        super_res_first=UNet2DModel(**sr),
        super_res_last=UNet2DModel(**sr),
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
    )


def flop_matched(config: ModelConfig) -> ModelConfig:
    """Our config without the space-to-depth stems: every UNet's first level at full resolution,
    attention at the same levels, so its FLOPs per forward match diffusers' at the same widths."""

    def unstemmed(unet: UNetConfig) -> UNetConfig:
        p = unet.patch_size
        return replace(
            unet, patch_size=1, attention_resolutions=tuple(r * p for r in unet.attention_resolutions)
        )

    return replace(
        config,
        decoder=replace(config.decoder, unet=unstemmed(config.decoder.unet)),
        sr256=replace(config.sr256, unet=unstemmed(config.sr256.unet)),
    )


def karlo_config() -> ModelConfig:
    """Karlo's sizes (the GPU comparison): ViT-L/14 widths (768, 77 tokens), a 20 × 2048 prior,
    a 64² decoder of 320 channels (mult 1,2,3,4, 3 res blocks, attention at 32/16/8, heads of 64,
    learned variance), a 64→256 upsampler of 320 channels without attention; Karlo's sampling
    (25 prior steps at guidance 4, 25 decoder steps at 8, 7 upsampler steps, one prior sample)."""
    paper = get_config("paper")
    decoder_unet = replace(paper.decoder.unet, model_channels=320)
    return replace(
        paper,
        name="karlo",
        clip=ClipConfig(),  # never run: the benchmark passes text encodings
        prior=replace(paper.prior, layers=20, candidates=1),
        decoder=replace(paper.decoder, unet=decoder_unet),
        sampling=SamplingConfig(
            prior=StageSampling(steps=25, guidance=4.0),
            decoder=StageSampling(steps=25, guidance=8.0),
            sr256=StageSampling(steps=7),
            sr1024=StageSampling(steps=7),
        ),
    )
