"""The decoder's CLIP conditioning (diffusers' ``text_proj.py``, ``UnCLIPTextProjModel``).

Ramesh et al. 2022, §2.1: "we enable classifier-free guidance by randomly setting the CLIP
embeddings to zero (or a learned embedding) 10% of the time, and randomly dropping the text
caption 50% of the time during training" — and the conditioning itself: "We modify the
architecture described in Nichol et al. (2021) by projecting and adding CLIP embeddings to the
existing timestep embedding, and by projecting CLIP embeddings into four extra tokens of context
that are concatenated to the sequence of outputs from the GLIDE text encoder."
"""

from __future__ import annotations

import torch
from torch import nn

from models.nn import zero_module


class TextAttentionPool(nn.Module):
    """Multi-head attention pooling of text tokens with learned queries: one vector per caption.

    Each head scores every token with a learned linear query, softmaxes over the kept tokens and
    averages its slice of the tokens' values. At initialisation the scores are near zero, so it
    starts as the mean of the tokens and learns to single out the words that matter (a linear
    read-out of the mean of the bundled CLIP's token states names the position of 79% of
    captions, one of this pool 93%: models/training/RECIPE.md). Rows with no kept token pool to
    zero.
    """

    def __init__(self, width: int, heads: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"pool width {width} does not split into {heads} heads")
        self.heads = heads
        self.scores = nn.Linear(width, heads)
        self.values = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """
        :param tokens: [N x L x W] token states.
        :param keep: [N x L] bool, the tokens to pool over.
        :return: [N x W].
        """
        n, length, width = tokens.shape
        scores = self.scores(tokens).float().masked_fill(~keep[..., None], -1e4)  # [N x L x H]
        weights = scores.softmax(dim=1) * keep.any(dim=1)[:, None, None]  # [N x L x H]
        values = self.values(tokens).view(n, length, self.heads, width // self.heads)  # [N x L x H x W/H]
        return (weights.to(values.dtype)[..., None] * values).sum(1).reshape(n, width)  # [N x W]


class ClipTextConditioning(nn.Module):
    """Turns a CLIP image embedding and CLIP text states into a time-embedding addition and a context.

    We enable classifier-free guidance by ... "projecting and adding CLIP embeddings to the existing
    timestep embedding, and by projecting CLIP embeddings into four extra tokens of context that are
    concatenated to the sequence of outputs from the GLIDE text encoder" (Ramesh et al. 2022, §2.1).

    Here the "outputs from the GLIDE text encoder" are the frozen CLIP text model's per-token states
    [N x L x text_width], projected (LayerNorm + Linear) to ``context_dim``; we train no text
    Transformer of our own.

    Unconditional rows (classifier-free guidance):

    - ``drop_clip[i]``: row i's CLIP embedding is zeroed before projection ("randomly setting the
      CLIP embeddings to zero 10% of the time"); the projections' biases then act as a learned null.
    - ``drop_text[i]``: row i's text tokens are masked out entirely. The CLIP tokens stay visible, so
      every attention query keeps at least one key.

    :param clip_embed_dim: width D of the CLIP image embedding.
    :param text_width: width of CLIP's per-token text states (None: no text tokens, CLIP tokens only).
    :param time_embed_dim: width of the UNet's timestep embedding.
    :param context_dim: width of the context tokens the attention layers read.
    :param clip_context_tokens: extra context tokens projected from the CLIP embedding (4 in the paper).
    :param text_pool_to_time: also pool the kept projected text tokens (:class:`TextAttentionPool`)
        and add the pool, projected, to the time embedding (``UNetConfig.text_pool_to_time``).
    """

    def __init__(
        self,
        clip_embed_dim: int,
        text_width: int | None,
        time_embed_dim: int,
        context_dim: int,
        clip_context_tokens: int = 4,
        text_pool_to_time: bool = False,
    ):
        super().__init__()
        self.clip_embed_dim = clip_embed_dim
        self.context_dim = context_dim
        self.clip_context_tokens = clip_context_tokens
        self.clip_to_time = nn.Linear(clip_embed_dim, time_embed_dim)
        self.clip_to_tokens = nn.Linear(clip_embed_dim, clip_context_tokens * context_dim)
        self.text_proj: nn.Sequential | None = None
        self.text_pool: TextAttentionPool | None = None
        self.text_to_time: nn.Module | None = None
        if text_width is not None:
            self.text_proj = nn.Sequential(nn.LayerNorm(text_width), nn.Linear(text_width, context_dim))
            if text_pool_to_time:
                self.text_pool = TextAttentionPool(context_dim)
                # Zero-initialised: a network trained without the path starts out unchanged by it.
                self.text_to_time = zero_module(nn.Linear(context_dim, time_embed_dim))

    def forward(
        self,
        clip_embed: torch.Tensor | None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_clip: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        :param clip_embed: [N x D] CLIP image embedding; None is the unconditional (zero) embedding.
        :param text_tokens: [N x L x text_width] CLIP text states, or None for no text.
        :param text_mask: [N x L] bool, True for real (non-padding) tokens; None means all real.
        :param drop_clip: [N] bool, zero these rows' CLIP embeddings.
        :param drop_text: [N] bool, mask out all of these rows' text tokens.
        :param batch_size, dtype, device: used only when ``clip_embed`` is None.
        :return: (time_embed_addition [N x time_dim], context [N x (4+L) x context_dim],
            context_mask [N x (4+L)] bool, True where a token may be attended to).
        """
        if clip_embed is None:
            if batch_size is None:
                raise ValueError("batch_size is required when clip_embed is None")
            clip_embed = torch.zeros(batch_size, self.clip_embed_dim, dtype=dtype, device=device)
        n = clip_embed.shape[0]
        if drop_clip is not None:
            clip_embed = clip_embed.masked_fill(drop_clip.to(clip_embed.device, torch.bool)[:, None], 0.0)
        time_add = self.clip_to_time(clip_embed)  # [N x time_dim]
        clip_tokens = self.clip_to_tokens(clip_embed).view(n, self.clip_context_tokens, self.context_dim)
        clip_mask = torch.ones(n, self.clip_context_tokens, dtype=torch.bool, device=clip_embed.device)
        if text_tokens is None or self.text_proj is None:
            if text_tokens is not None:
                raise ValueError(
                    "text_tokens given but this network has no text projection (text_width=None)"
                )
            if self.text_to_time is not None:  # no text is dropped text: the pool is zero
                time_add = time_add + self.text_to_time(torch.zeros_like(clip_tokens[:, 0]))
            return time_add, clip_tokens, clip_mask
        text = self.text_proj(text_tokens.to(clip_embed.dtype))  # [N x L x context_dim]
        keep = self._text_keep(text_mask, drop_text, n, text_tokens.shape[1], clip_embed.device)  # [N x L]
        if self.text_pool is not None and self.text_to_time is not None:
            time_add = time_add + self.text_to_time(self.text_pool(text, keep))
        context = torch.cat([clip_tokens, text.to(clip_tokens.dtype)], dim=1)  # [N x (4+L) x context_dim]
        return time_add, context, torch.cat([clip_mask, keep], dim=1)

    @staticmethod
    def _text_keep(
        text_mask: torch.Tensor | None,
        drop_text: torch.Tensor | None,
        n: int,
        length: int,
        device: torch.device,
    ) -> torch.Tensor:
        """[N x L] bool: text tokens that are real and not dropped."""
        keep = torch.ones(n, length, dtype=torch.bool, device=device)
        if text_mask is not None:
            keep = keep & text_mask.to(device=device, dtype=torch.bool)
        if drop_text is not None:
            keep = keep & ~drop_text.to(device=device, dtype=torch.bool)[:, None]
        return keep
