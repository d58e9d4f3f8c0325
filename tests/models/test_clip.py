"""models/clip.py at tiny size on CPU, plus ViT-B-32 (no weights) for the checkpoint path."""

from __future__ import annotations

import open_clip
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from models.checkpoints import WeightsError
from models.clip import (
    FrozenClip,
    TextEncoding,
    build_clip_model,
    encode_images,
    encode_text_tokens,
    get_tokenizer,
    load_open_clip_checkpoint,
    open_clip_model_cfg,
)
from models.configs import ClipConfig

TINY = ClipConfig()
PROMPTS = ["a cat", "a photograph of an astronaut riding a horse", "!"]


@pytest.fixture(scope="module")
def clip(tiny_clip: torch.nn.Module) -> FrozenClip:
    return FrozenClip(tiny_clip, get_tokenizer(TINY))


def _random_encoding(n: int, seed: int = 0) -> TextEncoding:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(TINY.context_length)[None, :] < torch.randint(
        2, TINY.context_length, (n, 1), generator=g
    )
    return TextEncoding(
        embedding=F.normalize(torch.randn(n, TINY.embed_dim, generator=g), dim=-1),
        tokens=torch.randn(n, TINY.context_length, TINY.text_width, generator=g),
        mask=mask,
    )


def test_tiny_config_builds_and_registers() -> None:
    model = build_clip_model(TINY)
    assert isinstance(model, open_clip.CLIP)
    assert open_clip.get_model_config(TINY.name) == open_clip_model_cfg(TINY)
    assert model.text_projection.shape == (TINY.text_width, TINY.embed_dim)
    assert model.visual.image_size == (TINY.image_size, TINY.image_size)
    assert model.context_length == TINY.context_length


def test_changed_custom_config_is_re_registered() -> None:
    config = ClipConfig(name="unclip-test-clip", embed_dim=32, text_layers=1, vision_layers=1)
    assert build_clip_model(config).text_projection.shape[-1] == 32
    wider = ClipConfig(name="unclip-test-clip", embed_dim=48, text_layers=1, vision_layers=1)
    assert build_clip_model(wider).text_projection.shape[-1] == 48


def test_custom_config_may_not_shadow_a_builtin() -> None:
    with pytest.raises(ValueError, match="built-in"):
        build_clip_model(ClipConfig(name="ViT-B-32"))


def test_builtin_that_disagrees_with_config_is_refused() -> None:
    with pytest.raises(ValueError, match="embed_dim"):
        build_clip_model(ClipConfig(open_clip_name="RN50", embed_dim=64, image_size=224, context_length=77))


def test_tokenizer_uses_context_length() -> None:
    tokens = get_tokenizer(TINY)(PROMPTS)
    assert tokens.shape == (len(PROMPTS), TINY.context_length)
    assert tokens.dtype == torch.long


def test_encode_text_shapes_norm_and_matches_open_clip(clip: FrozenClip) -> None:
    encoding = clip.encode_text(PROMPTS)
    n, length, width = len(PROMPTS), TINY.context_length, TINY.text_width
    assert encoding.embedding.shape == (n, TINY.embed_dim)
    assert encoding.tokens.shape == (n, length, width)
    assert encoding.mask.shape == (n, length) and encoding.mask.dtype == torch.bool
    torch.testing.assert_close(encoding.embedding.norm(dim=-1), torch.ones(n))
    reference = clip.model.encode_text(clip.tokenize(PROMPTS), normalize=True)
    torch.testing.assert_close(encoding.embedding, reference, rtol=0, atol=1e-6)


def test_per_token_states_are_the_pooled_states_before_projection(clip: FrozenClip) -> None:
    tokens = clip.tokenize(PROMPTS)
    encoding = clip.encode_text(PROMPTS)
    eot = tokens.argmax(dim=-1)
    pooled = encoding.tokens[torch.arange(len(PROMPTS)), eot] @ clip.model.text_projection
    torch.testing.assert_close(F.normalize(pooled, dim=-1), encoding.embedding, rtol=0, atol=1e-6)
    # causal attention: a real token's state does not depend on what follows it
    short = clip.encode_text(["a cat"])
    longer = clip.encode_text(["a cat sitting on a mat"])
    torch.testing.assert_close(short.tokens[0, :3], longer.tokens[0, :3], rtol=0, atol=1e-5)


def test_mask_covers_sot_to_eot_only(clip: FrozenClip) -> None:
    encoding = clip.encode_text(["a cat", "!", "word " * 100])
    # "a cat" -> SOT, a, cat, EOT; "!" -> SOT, !, EOT; the long prompt is truncated and fills L
    assert encoding.mask.sum(dim=1).tolist() == [4, 3, TINY.context_length]
    assert encoding.mask[0, :4].all() and not encoding.mask[0, 4:].any()


def test_encode_text_tokens_keeps_gradients() -> None:
    model = build_clip_model(TINY)
    encoding = encode_text_tokens(model, get_tokenizer(TINY)(PROMPTS))
    (encoding.embedding.sum() + encoding.tokens.sum()).backward()
    assert model.token_embedding.weight.grad is not None


def test_encode_image_resizes_and_normalises(clip: FrozenClip) -> None:
    images = torch.rand(2, 3, 48, 48) * 2 - 1
    embedding = clip.encode_image(images)
    assert embedding.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    x = F.interpolate(images, size=(TINY.image_size,) * 2, mode="bicubic", antialias=True)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    x = (((x + 1) / 2).clamp(0, 1) - mean) / std
    reference = clip.model.encode_image(x, normalize=True)
    torch.testing.assert_close(embedding, reference, rtol=0, atol=1e-6)


def test_encode_images_keeps_gradients() -> None:
    model = build_clip_model(TINY)
    images = (torch.rand(2, 3, TINY.image_size, TINY.image_size) * 2 - 1).requires_grad_(True)
    encode_images(model, images).sum().backward()
    assert images.grad is not None and model.visual.conv1.weight.grad is not None


def test_frozen_clip_stays_frozen(clip: FrozenClip) -> None:
    clip.train()
    assert not clip.training and not clip.model.training
    assert not any(p.requires_grad for p in clip.parameters())
    assert (clip.embed_dim, clip.text_width, clip.context_length) == (
        TINY.embed_dim,
        TINY.text_width,
        TINY.context_length,
    )


def test_text_encoding_bytes_round_trip_exact(clip: FrozenClip) -> None:
    encoding = clip.encode_text(PROMPTS)
    restored = TextEncoding.from_bytes(encoding.to_bytes())
    for name in ("embedding", "tokens", "mask"):
        original, back = getattr(encoding, name), getattr(restored, name)
        assert back.dtype == original.dtype and torch.equal(back, original), name
    half = TextEncoding.from_bytes(encoding.to(dtype=torch.float16).to_bytes())
    assert torch.equal(half.tokens, encoding.tokens.half())


def test_text_encoding_select_cat_repeat_to() -> None:
    a, b = _random_encoding(3, seed=1), _random_encoding(2, seed=2)
    both = TextEncoding.cat([a, b])
    assert len(both) == 5
    picked = both.select([4, 0])
    assert torch.equal(picked.tokens, torch.stack([b.tokens[1], a.tokens[0]]))
    assert torch.equal(picked.mask, torch.stack([b.mask[1], a.mask[0]]))
    repeated = b.repeat_interleave(3)
    assert len(repeated) == 6 and torch.equal(repeated.embedding[2], b.embedding[0])
    assert torch.equal(repeated.embedding[3], b.embedding[1])
    half = a.to(dtype=torch.float16)
    assert half.embedding.dtype == half.tokens.dtype == torch.float16 and half.mask.dtype == torch.bool
    with pytest.raises(ValueError, match="shapes disagree"):
        TextEncoding(a.embedding, b.tokens, b.mask)


def test_tiny_safetensors_checkpoint_loads(tmp_path, clip: FrozenClip) -> None:
    path = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file(clip.model.state_dict(), str(path))
    loaded = FrozenClip.from_config(TINY, path)
    assert torch.equal(loaded.encode_text(PROMPTS).tokens, clip.encode_text(PROMPTS).tokens)


def test_missing_or_mismatched_checkpoint_is_refused(tmp_path, clip: FrozenClip) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_open_clip_checkpoint(TINY, tmp_path / "nope.bin")
    path = tmp_path / "tiny.bin"
    torch.save(clip.model.state_dict(), path)
    other = ClipConfig(name="unclip-test-clip-32", embed_dim=32)
    with pytest.raises(
        WeightsError, match=r"(?s)tiny\.bin.*unclip-test-clip-32.*size mismatch for text_projection"
    ):
        load_open_clip_checkpoint(other, path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"garbage\.safetensors"):
        load_open_clip_checkpoint(TINY, garbage)


@pytest.mark.slow
def test_vit_b_32_builds_and_its_checkpoint_loads_back(tmp_path) -> None:
    """ViT-B-32 (151M parameters): about 8 s on two CPU cores for build, save and load."""
    config = ClipConfig(
        name="ViT-B-32",
        open_clip_name="ViT-B-32",
        embed_dim=512,
        image_size=224,
        vision_width=768,
        vision_layers=12,
        vision_patch_size=32,
        vision_head_width=64,
        context_length=77,
        text_width=512,
        text_heads=8,
        text_layers=12,
    )
    torch.manual_seed(0)
    model = build_clip_model(config)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    original, loaded = FrozenClip(model, get_tokenizer(config)), FrozenClip.from_config(config, path)
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    assert torch.equal(loaded.encode_image(images), original.encode_image(images))
    assert torch.equal(loaded.encode_text(PROMPTS).tokens, original.encode_text(PROMPTS).tokens)
    assert loaded.encode_text(PROMPTS).tokens.shape == (3, 77, 512)
