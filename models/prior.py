"""The diffusion prior: a decoder-only Transformer that predicts the CLIP image embedding.

Ramesh et al. 2022, §2.2: "For the diffusion prior, we train a decoder-only Transformer with a
causal attention mask on a sequence consisting of, in order: the encoded text, the CLIP text
embedding, an embedding for the diffusion timestep, the noised CLIP image embedding, and a final
embedding whose output from the Transformer is used to predict the unnoised CLIP image embedding."

Token layout follows diffusers' ``prior_transformer.py``:
[text tokens (L), text embedding, timestep, noised image embedding, learned query] → L + 4 tokens.
The network predicts x0 in the *scaled* space (embedding × :attr:`DiffusionPrior.embedding_scale`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.configs import PriorConfig
from models.nn import timestep_embedding


def prior_embedding_scale(config: PriorConfig) -> float:
    """The factor that brings unit-norm CLIP embeddings to roughly unit per-component variance.

    A unit-norm D-dim vector has per-component variance 1/D, so sqrt(D) restores variance 1. The
    paper's 17.2 is for ViT-L/14 (D = 768, sqrt(768) ≈ 27.7): it is an empirical figure (the real
    embeddings are not isotropic), so the paper preset sets it explicitly and other sizes default
    to sqrt(D).
    """
    return config.embedding_scale if config.embedding_scale is not None else math.sqrt(config.embed_dim)


class PriorBlock(nn.Module):
    """A pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: [N x S x W] tokens.
        :param mask: [N x 1 x S x S] bool, True where query i may attend to key j.
        :return: [N x S x W].
        """
        n, s, w = x.shape
        q, k, v = (
            self.qkv(self.ln_1(x)).view(n, s, 3, self.heads, w // self.heads).unbind(2)
        )  # [N x S x h x d]
        drop = self.dropout if self.training else 0.0
        h = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=drop
        )  # [N x h x S x d]
        x = x + self.attn_out(h.transpose(1, 2).reshape(n, s, w))  # [N x S x W]
        return x + self.mlp(self.ln_2(x))  # [N x S x W]

    def residual_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The two layers that write into the residual stream: attention's and the MLP's output."""
        mlp_out = self.mlp[2]
        assert isinstance(mlp_out, nn.Linear), "the MLP's third layer is its output projection"
        return self.attn_out, mlp_out


class DiffusionPrior(nn.Module):
    """Predicts the (scaled) unnoised CLIP image embedding from the caption and the noised embedding.

    Classifier-free guidance: ``drop_text[i]`` replaces row i's text-embedding token with a learned
    null embedding and masks all of its text tokens (their values are zeroed too, so a dropped row
    does not depend on the caption at all) — "text dropped 10% of the time" in training, every row
    dropped for the unconditional half at sampling. Masked tokens are never read by later positions,
    so a learned null for them would get no gradient; only the text embedding has one.
    """

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        w, length = config.width, config.context_length
        self.text_proj = nn.Sequential(nn.LayerNorm(config.text_width), nn.Linear(config.text_width, w))
        self.text_embed_proj = nn.Linear(config.embed_dim, w)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.image_embed_proj = nn.Linear(config.embed_dim, w)
        self.query = nn.Parameter(torch.zeros(w))
        self.null_text_embed = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(length + 4, w))
        self.blocks = nn.ModuleList(PriorBlock(w, config.heads, config.dropout) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, config.embed_dim)
        self._init_weights()

    @property
    def embedding_scale(self) -> float:
        """Unit-norm CLIP embedding × this = the space the prior diffuses in (see :func:`prior_embedding_scale`)."""
        return prior_embedding_scale(self.config)

    def _init_weights(self) -> None:
        """GPT-2 / nanoGPT initialisation: N(0, 0.02), residual outputs scaled by 1/sqrt(2 × layers)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            assert isinstance(block, PriorBlock)
            for proj in block.residual_projections():
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.config.layers))
        for p in (self.query, self.null_text_embed, self.positional_embedding):
            nn.init.normal_(p, std=0.02)

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        text_embed: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x_t: [N x D] noised, scaled image embedding.
        :param timesteps: [N] timesteps (long, or float for respaced samplers).
        :param text_embed: [N x D] unit-norm CLIP text embedding.
        :param text_tokens: [N x L x text_width] CLIP per-token text states.
        :param text_mask: [N x L] bool, True for real (non-padding) tokens; None means all real.
        :param drop_text: [N] bool, rows conditioned on nothing (classifier-free guidance).
        :return: [N x D] predicted x0 in the scaled space.
        """
        n, dtype, device = x_t.shape[0], x_t.dtype, x_t.device
        length = text_tokens.shape[1]
        keep = torch.ones(n, length, dtype=torch.bool, device=device)
        if text_mask is not None:
            keep = keep & text_mask.to(device=device, dtype=torch.bool)
        dropped = torch.zeros(n, dtype=torch.bool, device=device)
        if drop_text is not None:
            dropped = drop_text.to(device=device, dtype=torch.bool)
            keep = keep & ~dropped[:, None]
        text = self.text_proj(text_tokens.to(dtype))  # [N x L x W]
        text = text.masked_fill(dropped[:, None, None], 0.0)
        text_tok = self.text_embed_proj(text_embed.to(dtype))  # [N x W]
        text_tok = torch.where(dropped[:, None], self.null_text_embed.to(text_tok.dtype), text_tok)
        time_tok = self.time_embed(timestep_embedding(timesteps, self.config.width).to(dtype))  # [N x W]
        image_tok = self.image_embed_proj(x_t)  # [N x W]
        query = self.query.to(image_tok.dtype).expand(n, -1)  # [N x W]
        singles = torch.stack([text_tok, time_tok.to(text_tok.dtype), image_tok, query], dim=1)  # [N x 4 x W]
        h = torch.cat([text.to(singles.dtype), singles], dim=1)  # [N x (L+4) x W]
        h = h + self.positional_embedding[: length + 4].to(h.dtype)
        mask = self._attention_mask(keep)  # [N x 1 x S x S]
        for block in self.blocks:
            h = block(h, mask)
        return self.out_proj(self.ln_final(h[:, -1]))  # [N x D]

    @staticmethod
    def _attention_mask(text_keep: torch.Tensor) -> torch.Tensor:
        """[N x 1 x S x S] bool: causal, padded / dropped text keys hidden, the diagonal always allowed.

        :param text_keep: [N x L] bool, True for text tokens that may be attended to.
        """
        n, length = text_keep.shape
        s = length + 4
        causal = torch.ones(s, s, dtype=torch.bool, device=text_keep.device).tril()  # [S x S]
        key_ok = torch.cat([text_keep, text_keep.new_ones(n, 4)], dim=1)  # [N x S]
        eye = torch.eye(s, dtype=torch.bool, device=text_keep.device)
        return ((causal[None] & key_ok[:, None, :]) | eye[None])[:, None]  # [N x 1 x S x S]
