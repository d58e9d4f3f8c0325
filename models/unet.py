"""The GLIDE / guided-diffusion UNet used by the decoder and (subclassed) by the upsamplers.

Residual blocks with GroupNorm, SiLU and scale-shift norm from the timestep embedding; BigGAN-style
up/down residual blocks; multi-head self-attention at the feature-map sides in
``config.attention_resolutions`` that also reads an encoder context (GLIDE's ``encoder_kv``). The
network sees nothing of the diffusion process but ``x_t`` and ``t``.

Fully convolutional: any H, W divisible by ``2 ** (len(channel_mult) - 1)`` works (the upsamplers
train on crops and sample at full size). Attention placement is by downsampling level, fixed from
``config.image_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.conditioning import ClipTextConditioning
from models.configs import UNetConfig
from models.nn import normalization, timestep_embedding, zero_module


class Upsample(nn.Module):
    """Nearest-neighbour ×2, optionally followed by a 3×3 convolution.

    :param channels: input channels; ``out_channels`` defaults to the same.
    """

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # [N x C x 2H x 2W]
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """×½ by a strided 3×3 convolution, or by 2×2 average pooling when ``use_conv`` is False."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            assert out_channels == channels
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """A residual block conditioned on the timestep embedding, optionally resampling (BigGAN style).

    :param channels: input channels.
    :param emb_channels: width of the timestep embedding.
    :param out_channels: output channels (default: ``channels``).
    :param use_scale_shift_norm: condition by ``norm(h) * (1 + scale) + shift`` (FiLM) rather than ``h + emb``.
    :param up, down: resample inside the block (nearest up / average-pool down) instead of separately.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = nn.Sequential(normalization(channels), nn.SiLU())
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.updown = up or down
        self.resample: nn.Module = nn.Identity()
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_norm = normalization(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        # Set by models.execution.prepare_network (ExecutionConfig.in_place_activations).
        self.reuse_maps = False
        # This block's place in its UNet's EmbeddingProjections (UNetModel.fuse_embedding_projections).
        self.projection_slot = -1

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, emb_out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        :param x: [N x C x H x W] features.
        :param emb: [N x emb_channels] timestep (+ CLIP) embedding.
        :param emb_out: [N x (2*)out] ``emb_layers(emb)`` when computed already (EmbeddingProjections).
        :return: [N x out x H' x W'] (H' = 2H up, H/2 down, else H).
        """
        # Outside autograd, the SiLUs and the residual sum write over maps nothing reads again:
        # the same numbers, and a memory-bound pass that reads and writes one buffer instead of
        # filling a fresh one (sr1024 at 1024², one row: 17% of its forward on a 2-core EPYC).
        reuse = self.reuse_maps and not torch.is_grad_enabled()
        h = F.silu(self.in_norm[0](x), inplace=True) if reuse else self.in_norm(x)
        h = self.resample(h)  # [N x C x H' x W']
        x = self.resample(x)  # [N x C x H' x W']
        h = self.in_conv(h)  # [N x out x H' x W']
        if emb_out is None:
            emb_out = self.emb_layers(emb)  # [N x (2*)out]
        emb_out = emb_out.to(h.dtype)[..., None, None]  # [N x (2*)out x 1 x 1]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_norm.scale_shift(h, scale, shift)
        else:
            h = self.out_norm(h + emb_out)
        if not reuse:
            return self.skip(x) + self.out_layers(h)
        _, dropout, conv = self.out_layers
        out, skip = conv(dropout(F.silu(h, inplace=True))), self.skip(x)
        # In place only where the sum keeps out's dtype, as the out-of-place sum would.
        return out.add_(skip) if skip.dtype == out.dtype else skip + out


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the feature map, also attending to an encoder context.

    GLIDE's ``encoder_kv``: the context tokens get their own key/value projection and their keys and
    values are concatenated in front of the image's own, so each image position attends over
    [context tokens, image positions]. Padded / dropped context tokens are masked out.

    :param channels: feature channels; heads = ``channels // num_head_channels``.
    :param encoder_channels: context width (None: plain self-attention).
    """

    def __init__(self, channels: int, num_head_channels: int, encoder_channels: int | None = None):
        super().__init__()
        if channels >= num_head_channels and channels % num_head_channels:
            raise ValueError(f"{channels} channels do not split into heads of {num_head_channels}")
        self.num_heads = max(1, channels // num_head_channels)  # one head when narrower than a head
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.encoder_kv = nn.Conv1d(encoder_channels, 2 * channels, 1) if encoder_channels else None
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        # Token layout (models.execution.ExecutionConfig.fused_attention): q/k/v reach
        # scaled_dot_product_attention with unit last stride, which its fused CPU kernel needs.
        self.token_layout = True

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x: [N x C x H x W] features.
        :param context: [N x S x encoder_channels] context tokens, or None.
        :param context_mask: [N x S] bool, True where a context token may be attended to.
        :return: [N x C x H x W].
        """
        if self.token_layout:
            return x + self._attend_tokens(x, context, context_mask)
        n, c, height, width = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        flat = x.reshape(n, c, height * width)  # [N x C x T]
        q, k, v = (
            self.qkv(self.norm(flat)).reshape(n, heads, 3 * head_dim, -1).chunk(3, dim=2)
        )  # [N x h x d x T]
        mask = None
        if context is not None and self.encoder_kv is not None:
            ekv = self.encoder_kv(context.transpose(1, 2).to(flat.dtype))  # [N x 2C x S]
            ek, ev = ekv.reshape(n, heads, 2 * head_dim, -1).chunk(2, dim=2)  # [N x h x d x S]
            k = torch.cat([ek.to(k.dtype), k], dim=-1)  # [N x h x d x (S+T)]
            v = torch.cat([ev.to(v.dtype), v], dim=-1)  # [N x h x d x (S+T)]
            if context_mask is not None:
                own = torch.ones(n, height * width, dtype=torch.bool, device=x.device)
                mask = torch.cat([context_mask.to(x.device), own], dim=1)[
                    :, None, None, :
                ]  # [N x 1 x 1 x (S+T)]
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), attn_mask=mask
        )  # [N x h x T x d]
        out = out.transpose(-1, -2).reshape(n, c, height * width)  # [N x C x T]
        return x + self.proj_out(out).reshape(n, c, height, width)

    def _attend_tokens(
        self, x: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The attention branch computed on tokens [N x T x C]: the same weights as the channel
        layout (each 1×1 Conv1d is a Linear on tokens), but q, k and v come out as views with
        unit last stride, so ``scaled_dot_product_attention`` runs its fused (flash) kernel
        instead of the unfused math path, and a channels_last ``x`` is read without a copy.

        :param x: [N x C x H x W] features (either memory format).
        :return: [N x C x H x W] the branch's output (channels_last strides), before the residual.
        """
        n, c, height, width = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [N x T x C]
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # [N x T x 3C]
        q, k, v = qkv.view(n, -1, heads, 3 * head_dim).transpose(1, 2).chunk(3, dim=-1)  # [N x h x T x d]
        mask = None
        if context is not None and self.encoder_kv is not None:
            ctx = context.to(tokens.dtype)  # [N x S x E]
            ekv = F.linear(ctx, self.encoder_kv.weight.squeeze(-1), self.encoder_kv.bias)  # [N x S x 2C]
            ek, ev = ekv.view(n, -1, heads, 2 * head_dim).transpose(1, 2).chunk(2, dim=-1)  # [N x h x S x d]
            k = torch.cat([ek.to(k.dtype), k], dim=2)  # [N x h x (S+T) x d]
            v = torch.cat([ev.to(v.dtype), v], dim=2)  # [N x h x (S+T) x d]
            if context_mask is not None:
                own = torch.ones(n, height * width, dtype=torch.bool, device=x.device)
                keys_ok = torch.cat([context_mask.to(x.device), own], dim=1)  # [N x (S+T)]
                mask = keys_ok[:, None, None, :]  # [N x 1 x 1 x (S+T)]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N x h x T x d]
        out = out.transpose(1, 2).reshape(n, height * width, c)  # [N x T x C]
        out = F.linear(out, self.proj_out.weight.squeeze(-1), self.proj_out.bias)  # [N x T x C]
        return out.transpose(1, 2).view(n, c, height, width)  # [N x C x H x W], channels_last strides


class EmbeddingProjections(nn.Module):
    """Every residual block's embedding projection (``emb_layers``: SiLU, then a Linear, of the
    one embedding) as a single matmul whose output is split per block.

    At a few rows each projection is a matrix-vector product whose time is the call and the cold
    read of its weights, not arithmetic: the bundled decoder's 20 took 2–4 ms of a 25 ms forward at
    two rows (the guided pair of one image), and one matmul over the same weights about 0.1 ms
    (2-core Zen 4 EPYC, 2026-12-06). The weights are a copy of the blocks' own, made when the
    network is prepared for sampling (``models.execution.prepare_network``). :class:`UNetModel`
    uses it only outside autograd, so training a prepared network goes through the blocks' own
    layers; sampling it afterwards needs the projections fused again.
    """

    def __init__(self, blocks: Sequence[ResBlock]):
        super().__init__()
        linears: list[nn.Linear] = []
        for block in blocks:
            layer = block.emb_layers[1]
            if not isinstance(layer, nn.Linear) or layer.bias is None:
                raise TypeError("every block's emb_layers must be (SiLU, Linear with a bias)")
            linears.append(layer)
        self.sizes = [layer.out_features for layer in linears]
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        weight = torch.cat([layer.weight.detach() for layer in linears])  # [sum(out) x E]
        bias = torch.cat([layer.bias.detach() for layer in linears if layer.bias is not None])  # [sum(out)]
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:param emb: [N x E] → one [N x (2*)out] tensor per block, in slot order."""
        return F.linear(F.silu(emb), self.weight, self.bias).split(self.sizes, dim=1)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence that hands the embedding to residual blocks and the context to attention blocks."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        projections: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:param projections: every residual block's ``emb_layers(emb)``, by ``projection_slot``."""
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, None if projections is None else projections[layer.projection_slot])
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """The GLIDE UNet, optionally conditioned on a CLIP image embedding and CLIP text tokens.

    :param config: widths, depths, attention placement and conditioning (``clip_embed_dim`` set:
        the decoder's :class:`~models.conditioning.ClipTextConditioning` is used).
    :param learn_sigma: output 2 × ``out_channels`` (ε and the variance interpolation v).
    """

    def __init__(self, config: UNetConfig, learn_sigma: bool = False):
        super().__init__()
        self.config = config
        self.learn_sigma = learn_sigma
        self.out_channels = config.out_channels * (2 if learn_sigma else 1)
        ch = config.model_channels
        self.time_embed_dim = ch * 4
        self.time_embed = nn.Sequential(
            nn.Linear(ch, self.time_embed_dim), nn.SiLU(), nn.Linear(self.time_embed_dim, self.time_embed_dim)
        )
        # The context is as wide as the time embedding (2048 for the paper decoder, GLIDE's xf_width).
        self.context_dim: int | None = None
        self.conditioning: ClipTextConditioning | None = None
        if config.clip_embed_dim is not None:
            self.context_dim = self.time_embed_dim
            self.conditioning = ClipTextConditioning(
                config.clip_embed_dim,
                config.text_width,
                self.time_embed_dim,
                self.context_dim,
                config.clip_context_tokens,
                config.text_pool_to_time,
            )
        patch = config.patch_size
        grid = config.image_size // patch  # side of the first level's feature map
        self.attention_ds = {grid // res for res in config.attention_resolutions}
        in_ch = (config.in_channels + config.low_res_channels) * patch * patch
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_ch, ch, 3, padding=1))])
        self.position: nn.Parameter | None = None
        if config.position_embedding:
            self.position = nn.Parameter(torch.zeros(1, ch, grid, grid))
        skip_chans = self._build_down(ch, [ch])
        ch = skip_chans[-1]
        mid: list[nn.Module] = [self._res(ch, ch)]
        if self.attention_ds:
            mid.append(self._attn(ch))
        mid.append(self._res(ch, ch))
        self.middle_block = TimestepEmbedSequential(*mid)
        self.output_blocks = nn.ModuleList()
        ch = self._build_up(ch, skip_chans)
        # Identity at initialisation (each block's last convolution is zero): see UNetConfig.
        self.refine_blocks = TimestepEmbedSequential(
            *(self._res(ch, ch) for _ in range(config.output_res_blocks))
        )
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, self.out_channels * patch * patch, 3, padding=1)),
        )
        self.embedding_projections: EmbeddingProjections | None = None

    def fuse_embedding_projections(self) -> None:
        """Compute every residual block's embedding projection in one matmul from now on, outside
        autograd (:class:`EmbeddingProjections`, from the weights as they are now: call it again
        after changing them)."""
        blocks = [layer for layer in self.modules() if isinstance(layer, ResBlock)]
        for slot, block in enumerate(blocks):
            block.projection_slot = slot
        self.embedding_projections = EmbeddingProjections(blocks)

    # -- construction -----------------------------------------------------------------------------
    def _res(self, channels: int, out_channels: int, up: bool = False, down: bool = False) -> ResBlock:
        c = self.config
        return ResBlock(
            channels, self.time_embed_dim, c.dropout, out_channels, c.use_scale_shift_norm, up, down
        )

    def _attn(self, channels: int) -> AttentionBlock:
        return AttentionBlock(channels, self.config.num_head_channels, self.context_dim)

    def _build_down(self, ch: int, skip_chans: list[int]) -> list[int]:
        """Append the encoder half to ``input_blocks``; return the channels of every skip connection."""
        c, ds = self.config, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in self.attention_ds:
                    layers.append(self._attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = self._res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2
        return skip_chans

    def _build_up(self, ch: int, skip_chans: list[int]) -> int:
        """Append the decoder half to ``output_blocks`` (consuming ``skip_chans``); return its width."""
        c = self.config
        ds = 2 ** (len(c.channel_mult) - 1)
        skip_chans = list(skip_chans)
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res(ch + skip_chans.pop(), mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in self.attention_ds:
                    layers.append(self._attn(ch))
                if level and i == c.num_res_blocks:
                    layers.append(
                        self._res(ch, ch, up=True) if c.resblock_updown else Upsample(ch, use_conv=True)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        return ch

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        clip_embed: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_clip: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x: [N x C x H x W] noised images (C = in_channels + low_res_channels).
        :param timesteps: [N] timesteps (long, or float for respaced samplers).
        :param clip_embed: [N x D] CLIP image embedding (decoder only; None = unconditional).
        :param text_tokens: [N x L x text_width] CLIP text states (decoder only).
        :param text_mask: [N x L] bool, True for real tokens.
        :param drop_clip: [N] bool, rows whose CLIP embedding is zeroed (classifier-free guidance).
        :param drop_text: [N] bool, rows whose text tokens are all masked.
        :return: [N x out x H x W], out = out_channels × (2 if learn_sigma else 1).
        """
        emb = self.time_embed(
            timestep_embedding(timesteps, self.config.model_channels).to(x.dtype)
        )  # [N x E]
        context, context_mask = None, None
        if self.conditioning is not None:
            time_add, context, context_mask = self.conditioning(
                None if clip_embed is None else clip_embed.to(x.dtype),
                None if text_tokens is None else text_tokens.to(x.dtype),
                text_mask,
                drop_clip,
                drop_text,
                batch_size=x.shape[0],
                dtype=x.dtype,
                device=x.device,
            )
            emb = emb + time_add.to(emb.dtype)  # [N x E]
        elif clip_embed is not None or text_tokens is not None:
            raise ValueError("this UNet has no CLIP/text conditioning (config.clip_embed_dim is None)")
        projections = None
        if self.embedding_projections is not None and not torch.is_grad_enabled():
            projections = self.embedding_projections(emb)  # one [N x (2*)out] per residual block
        patch = self.config.patch_size
        h = F.pixel_unshuffle(x, patch) if patch > 1 else x  # [N x C*p*p x H/p x W/p]
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context, context_mask, projections)  # [N x ch x H/(p*ds) x W/(p*ds)]
            if i == 0 and self.position is not None:
                h = h + self.position.to(h.dtype)
            skips.append(h)
        h = self.middle_block(h, emb, context, context_mask, projections)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask, projections)
        h = self.refine_blocks(h, emb, context, context_mask, projections)
        out = self.out(h)  # [N x out*p*p x H/p x W/p]
        return F.pixel_shuffle(out, patch) if patch > 1 else out  # [N x out x H x W]
