"""CLIP through open_clip: build, load a local checkpoint, and a small frozen facade.

The facade follows GLIDE's ``CLIPModel``: one object that turns prompts and images into
normalised CLIP embeddings. unCLIP also needs the text encoder's per-token states ("the
text encodings ... are projected and appended to the sequence of tokens the decoder
attends to", Ramesh et al. 2022, Sec. 2.1), so :func:`encode_text_tokens` runs open_clip's
text tower step by step and keeps the states after ``ln_final``.

Notation: N batch, L context length (tokens), W text width, D joint embedding width.

Nothing here downloads: custom architectures are registered with open_clip from a
:class:`~models.configs.ClipConfig`, built-in ones (``ViT-B-32`` ...) are built without
weights, and weights only come from a local file the user brings.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import models.open_clip_lean  # noqa: F401  # before open_clip: imports it without timm/transformers/hf hub

# isort: split
import open_clip
import safetensors.torch
import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import text_global_pool
from torch import nn

from models.checkpoints import WeightsError
from models.configs import ClipConfig

Tokenizer = Callable[..., torch.Tensor]

_registry_dir: Path | None = None


# ----------------------------------------------------------------------------- building


def open_clip_model_cfg(config: ClipConfig) -> dict[str, Any]:
    """The open_clip model config dict (the JSON format of ``open_clip/model_configs``)."""
    return {
        "embed_dim": config.embed_dim,
        "vision_cfg": {
            "image_size": config.image_size,
            "layers": config.vision_layers,
            "width": config.vision_width,
            "patch_size": config.vision_patch_size,
            "head_width": config.vision_head_width,
        },
        "text_cfg": {
            "context_length": config.context_length,
            "vocab_size": config.vocab_size,
            "width": config.text_width,
            "heads": config.text_heads,
            "layers": config.text_layers,
        },
    }


def _architecture_name(config: ClipConfig) -> str:
    """The name open_clip knows the architecture by, registering a custom one first."""
    if config.open_clip_name is not None:
        if config.open_clip_name not in open_clip.list_models():
            raise ValueError(
                f"open_clip has no built-in architecture {config.open_clip_name!r}; "
                f"see open_clip.list_models()"
            )
        return config.open_clip_name
    register_clip_config(config)
    return config.name


def register_clip_config(config: ClipConfig) -> None:
    """Register ``config`` with open_clip under ``config.name`` (a no-op when already there).

    open_clip's public way is :func:`open_clip.add_model_config` with a JSON file, so the
    config is written to a per-process temporary folder (removed at exit).
    """
    model_cfg = open_clip_model_cfg(config)
    registered = open_clip.get_model_config(config.name)
    if registered == model_cfg:
        return
    builtin = Path(open_clip.__file__).parent / "model_configs" / f"{config.name}.json"
    if builtin.exists():
        raise ValueError(
            f"ClipConfig.name {config.name!r} is an open_clip built-in architecture with a different "
            f"shape; set open_clip_name={config.name!r} to use it, or rename the custom config"
        )
    path = _config_registry_dir() / f"{config.name}.json"
    path.write_text(json.dumps(model_cfg, indent=2))
    open_clip.add_model_config(path)


def _config_registry_dir() -> Path:
    global _registry_dir
    if _registry_dir is None:
        _registry_dir = Path(tempfile.mkdtemp(prefix="unclip-open-clip-configs-"))
        atexit.register(shutil.rmtree, _registry_dir, ignore_errors=True)
    return _registry_dir


def build_clip_model(config: ClipConfig) -> open_clip.CLIP:
    """A CLIP with random weights, built by open_clip's factory (nothing is downloaded)."""
    with _quiet_random_init_warning():
        model = open_clip.create_model(_architecture_name(config), pretrained=None)
    _check_matches_config(model, config)
    return model


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Drop open_clip's root-logger warning that a model was "initialized randomly": here that
    is intended (weights come from our checkpoints afterwards) and would mislead in worker logs."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_open_clip_checkpoint(config: ClipConfig, path: str | Path) -> open_clip.CLIP:
    """Build the architecture and load a local open_clip checkpoint into it.

    ``path`` is a file such as ViT-B-32's ``open_clip_pytorch_model.bin`` (``torch.save`` of a
    state dict, optionally under ``"state_dict"``) or a ``.safetensors`` file. Loading goes
    through open_clip's ``create_model(pretrained=<path>)``, which converts third-party
    layouts and loads strictly. Raises :class:`WeightsError` naming the file when it is
    missing, unreadable or does not match the architecture.
    """
    path = Path(path).expanduser().resolve()  # absolute, so it can never be read as a download tag
    if not path.is_file():
        raise WeightsError(f"CLIP checkpoint {path} not found (weights are only loaded from local files)")
    name = _architecture_name(config)
    try:
        model = open_clip.create_model(name, pretrained=str(path))
    except Exception as error:  # torch / safetensors raise many types for bad files
        raise WeightsError(
            f"CLIP checkpoint {path} does not load into architecture {name!r}: {error}"
        ) from error
    _check_matches_config(model, config)
    return model


def _check_matches_config(model: open_clip.CLIP, config: ClipConfig) -> None:
    """Refuse a model whose sizes disagree with ``config`` (the other stages are sized by it)."""
    found = {
        "embed_dim": model.text_projection.shape[-1],
        "context_length": model.context_length,
        "text_width": model.transformer.width,
        "image_size": _image_size(model)[0],
    }
    wrong = [
        f"{key}: config {getattr(config, key)}, model {value}"
        for key, value in found.items()
        if getattr(config, key) != value
    ]
    if wrong:
        raise ValueError(
            f"CLIP architecture {_label(config)} does not match its ClipConfig: {'; '.join(wrong)}"
        )


def _label(config: ClipConfig) -> str:
    return repr(config.open_clip_name or config.name)


def get_tokenizer(config: ClipConfig) -> Tokenizer:
    """open_clip's tokenizer for the architecture, at ``config.context_length``.

    Call it with a list of strings; it returns a LongTensor [N x L] (SOT, BPE tokens, EOT,
    zero padding; long prompts are truncated and keep EOT last).
    """
    return open_clip.get_tokenizer(_architecture_name(config), context_length=config.context_length)


# ----------------------------------------------------------------------------- encodings


@dataclass
class TextEncoding:
    """CLIP's view of a batch of prompts.

    :param embedding: [N x D] unit-norm pooled text embedding (float).
    :param tokens: [N x L x W] per-token states after ``ln_final``, before the projection.
    :param mask: [N x L] bool, True for real tokens (SOT ... EOT), False for padding.
    """

    embedding: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        n = self.embedding.shape[0]
        if self.tokens.shape[0] != n or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"TextEncoding shapes disagree: embedding {tuple(self.embedding.shape)}, "
                f"tokens {tuple(self.tokens.shape)}, mask {tuple(self.mask.shape)}"
            )
        if self.mask.dtype != torch.bool:
            raise ValueError(f"TextEncoding.mask must be bool, got {self.mask.dtype}")

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def select(self, rows: Sequence[int]) -> TextEncoding:
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.embedding.device)
        return TextEncoding(self.embedding[index], self.tokens[index], self.mask[index])

    def repeat_interleave(self, n: int) -> TextEncoding:
        """Each row ``n`` times in a row (one prompt, ``n`` images)."""
        return TextEncoding(
            self.embedding.repeat_interleave(n, dim=0),
            self.tokens.repeat_interleave(n, dim=0),
            self.mask.repeat_interleave(n, dim=0),
        )

    @staticmethod
    def cat(encodings: Sequence[TextEncoding]) -> TextEncoding:
        if not encodings:
            raise ValueError("TextEncoding.cat needs at least one encoding")
        return TextEncoding(
            torch.cat([e.embedding for e in encodings]),
            torch.cat([e.tokens for e in encodings]),
            torch.cat([e.mask for e in encodings]),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoding:
        """Move to ``device``; ``dtype`` applies to the float tensors only (not the mask)."""
        return TextEncoding(
            self.embedding.to(device=device, dtype=dtype),
            self.tokens.to(device=device, dtype=dtype),
            self.mask.to(device=device),
        )

    def to_bytes(self) -> bytes:
        """safetensors bytes (for a Redis cache); :meth:`from_bytes` restores them exactly."""
        tensors = {
            "embedding": self.embedding,
            "tokens": self.tokens,
            "mask": self.mask,
        }
        return safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})

    @classmethod
    def from_bytes(cls, data: bytes) -> TextEncoding:
        tensors = safetensors.torch.load(data)
        return cls(tensors["embedding"], tensors["tokens"], tensors["mask"])


def encode_text_tokens(model: open_clip.CLIP, tokens: torch.Tensor) -> TextEncoding:
    """Run CLIP's text tower on token ids, keeping the per-token states (gradients allowed).

    :param tokens: LongTensor [N x L] from :func:`get_tokenizer`.
    :return: a :class:`TextEncoding`; ``embedding`` equals open_clip's
        ``encode_text(tokens, normalize=True)``.
    """
    tokens = tokens.to(model.token_embedding.weight.device)
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # [N x L x W]
    x = x + model.positional_embedding.to(cast_dtype)  # [N x L x W]
    x = model.transformer(x, attn_mask=model.attn_mask)  # [N x L x W], causal
    x = model.ln_final(x)  # [N x L x W]
    pooled = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=model.text_eos_id)  # [N x W]
    if isinstance(model.text_projection, nn.Linear):
        pooled = model.text_projection(pooled)  # [N x D]
    elif model.text_projection is not None:
        pooled = pooled @ model.text_projection  # [N x D]
    embedding = F.normalize(pooled.float(), dim=-1)  # [N x D]
    return TextEncoding(embedding=embedding, tokens=x.float(), mask=token_mask(model, tokens))


def token_mask(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """[N x L] bool: True up to and including the end-of-text token.

    The EOT position is found the way the model pools (``argmax`` of the ids, or the first
    ``eos`` id), not by ``tokens != 0``: id 0 is a real BPE token ("!") in CLIP's vocabulary.
    """
    if model.text_pool_type == "argmax":
        eot = tokens.argmax(dim=-1)  # [N]
    elif model.text_pool_type == "eos":
        eot = (tokens == model.text_eos_id).int().argmax(dim=-1)  # [N]
    else:
        raise ValueError(f"unsupported text pool type {model.text_pool_type!r} (need 'argmax' or 'eos')")
    positions = torch.arange(tokens.shape[1], device=tokens.device)  # [L]
    return positions[None, :] <= eot[:, None]  # [N x L]


def encode_images(model: open_clip.CLIP, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm CLIP image embeddings (gradients allowed).

    :param images: [N x 3 x H x W] in [-1, 1], any size; resized (bicubic, antialiased) to
        the model's input size and normalised with the model's mean/std (OpenAI's by default).
    :return: [N x D] float, unit norm.
    """
    size = _image_size(model)
    param = next(model.visual.parameters())
    x = images.to(device=param.device, dtype=torch.float32)  # [N x 3 x H x W]
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    x = ((x + 1) / 2).clamp(0, 1)  # [N x 3 x h x w] in [0, 1]
    mean, std = _image_mean_std(model, x.device)
    x = ((x - mean) / std).to(param.dtype)  # [N x 3 x h x w]
    return model.encode_image(x, normalize=True).float()  # [N x D]


def _image_size(model: open_clip.CLIP) -> tuple[int, int]:
    """(height, width) the vision tower expects (open_clip stores an int or a pair)."""
    size = model.visual.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _image_mean_std(model: open_clip.CLIP, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
    return mean, std


# ----------------------------------------------------------------------------- frozen facade


class FrozenClip(nn.Module):
    """A frozen CLIP for inference and conditioning (GLIDE's ``CLIPModel``).

    Always in eval mode with ``requires_grad`` off; ``.train()`` does not change that.
    """

    def __init__(self, model: open_clip.CLIP, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer or open_clip.SimpleTokenizer(context_length=model.context_length)
        self.train(False)

    @classmethod
    def from_config(cls, config: ClipConfig, checkpoint: str | Path | None = None) -> FrozenClip:
        """Random weights, or those of a local open_clip ``checkpoint`` file."""
        model = (
            build_clip_model(config) if checkpoint is None else load_open_clip_checkpoint(config, checkpoint)
        )
        return cls(model, get_tokenizer(config))

    def train(self, mode: bool = True) -> FrozenClip:
        del mode  # frozen: stays in eval mode
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.model.text_projection.shape[-1]

    @property
    def text_width(self) -> int:
        return self.model.transformer.width

    @property
    def context_length(self) -> int:
        return self.model.context_length

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """LongTensor [N x L] on the model's device."""
        return self.tokenizer(list(prompts)).to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> TextEncoding:
        return encode_text_tokens(self.model, self.tokenize(prompts))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[N x 3 x H x W] in [-1, 1] -> [N x D] unit norm."""
        return encode_images(self.model, images)
