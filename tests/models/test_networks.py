"""The networks at tiny width on CPU: shapes, dtypes, masks, guidance flags, and that they train.

The diffusion math is tested elsewhere; here a network is only ``model(x, t, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from torch import nn

from models.conditioning import ClipTextConditioning, TextAttentionPool
from models.configs import ModelConfig, UNetConfig, get_config
from models.nn import count_parameters, normalization, timestep_embedding, zero_module
from models.prior import DiffusionPrior
from models.unet import AttentionBlock, UNetModel
from models.upsampler import SuperResUNet

TINY = ModelConfig()
D, TW, L = TINY.decoder.unet.clip_embed_dim, TINY.decoder.unet.text_width, TINY.clip.context_length


def _randomize_zeros(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give zero-initialised parameters (output convs, biases) random values, so every path shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module


def _decoder_inputs(n: int = 2, side: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, L, dtype=torch.bool)
    mask[1:, L // 2 :] = False  # later rows have padding
    return {
        "x": torch.randn(n, 3, side, side, generator=gen),
        "timesteps": torch.randint(0, 1000, (n,), generator=gen),
        "clip_embed": torch.randn(n, D, generator=gen),
        "text_tokens": torch.randn(n, L, TW, generator=gen),
        "text_mask": mask,
    }


@pytest.fixture(scope="module")
def decoder() -> UNetModel:
    torch.manual_seed(0)
    return _randomize_zeros(UNetModel(TINY.decoder.unet, learn_sigma=True)).eval()


# -- nn helpers -----------------------------------------------------------------------------------
def test_timestep_embedding_is_float32_sinusoids() -> None:
    emb = timestep_embedding(torch.tensor([0, 10, 999]), 32)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb[0, :16], torch.ones(16)) and torch.allclose(emb[0, 16:], torch.zeros(16))
    assert timestep_embedding(torch.tensor([2.5]), 7).shape == (1, 7)  # float steps, odd width


@pytest.mark.parametrize(("channels", "groups"), [(8, 8), (16, 16), (48, 16), (96, 32), (512, 32), (3, 1)])
def test_normalization_groups_fit_small_widths(channels: int, groups: int) -> None:
    norm = normalization(channels)
    assert norm.num_groups == groups
    x = torch.randn(2, channels, 4, 4, dtype=torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16


def test_zero_module() -> None:
    conv = zero_module(nn.Conv2d(4, 4, 3))
    assert not any(p.any() for p in conv.parameters())


# -- shapes and dtypes ----------------------------------------------------------------------------
def test_decoder_shapes_and_learned_sigma(decoder: UNetModel) -> None:
    with torch.no_grad():
        out = decoder(**_decoder_inputs(side=64))
    assert out.shape == (2, 6, 64, 64) and out.dtype == torch.float32
    plain = UNetModel(replace(TINY.decoder.unet, clip_embed_dim=None, text_width=None))
    assert plain(torch.randn(1, 3, 32, 32), torch.tensor([5])).shape == (1, 3, 32, 32)


def test_decoder_without_clip_or_text_is_unconditional(decoder: UNetModel) -> None:
    inputs = _decoder_inputs()
    n = inputs["x"].shape[0]
    yes = torch.ones(n, dtype=torch.bool)
    with torch.no_grad():
        dropped = decoder(**inputs, drop_clip=yes, drop_text=yes)
        missing = decoder(inputs["x"], inputs["timesteps"])
    torch.testing.assert_close(dropped, missing)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decoder_runs_in_half_precision(decoder: UNetModel, dtype: torch.dtype) -> None:
    half = UNetModel(TINY.decoder.unet, learn_sigma=True)
    half.load_state_dict(decoder.state_dict())
    half = half.to(dtype)
    inputs = _decoder_inputs()
    with torch.no_grad():
        out = half(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()})
        ref = decoder(**inputs)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_decoder_under_bf16_autocast(decoder: UNetModel) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(**_decoder_inputs())
    assert out.shape == (2, 6, 32, 32) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    ("stage", "side", "low"), [("sr256", 64, 16), ("sr256", 256, 64), ("sr1024", 128, 32)]
)
def test_upsampler_shapes_on_crops_and_full_size(stage: str, side: int, low: int) -> None:
    torch.manual_seed(0)
    model = SuperResUNet(getattr(TINY, stage).unet)
    with torch.no_grad():
        out = model(torch.randn(1, 3, side, side), torch.tensor([7]), low_res=torch.randn(1, 3, low, low))
    assert out.shape == (1, 3, side, side)
    assert not any(isinstance(m, AttentionBlock) for m in model.modules())


def test_upsampler_reads_low_res_and_runs_bf16() -> None:
    torch.manual_seed(0)
    model = _randomize_zeros(SuperResUNet(TINY.sr256.unet)).eval()
    x, t = torch.randn(1, 3, 64, 48), torch.tensor([3])
    with torch.no_grad():
        a = model(x, t, low_res=torch.zeros(1, 3, 16, 12))
        b = model(x, t, low_res=torch.ones(1, 3, 16, 12))
        half = model.to(torch.bfloat16)(x.bfloat16(), t, low_res=torch.ones(1, 3, 16, 12))
    assert a.shape == (1, 3, 64, 48) and not torch.allclose(a, b)
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="low_res"):
        model(x, t)


# -- conditioning ---------------------------------------------------------------------------------
def test_clip_text_conditioning_shapes_and_masks() -> None:
    cond = ClipTextConditioning(clip_embed_dim=8, text_width=12, time_embed_dim=16, context_dim=10)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    time_add, context, context_mask = cond(
        torch.randn(2, 8), torch.randn(2, 3, 12), mask, drop_text=torch.tensor([False, True])
    )
    assert time_add.shape == (2, 16) and context.shape == (2, 7, 10)
    assert context_mask.tolist() == [[True] * 4 + [True, True, False], [True] * 4 + [False] * 3]
    zeroed, _, _ = cond(torch.randn(2, 8), drop_clip=torch.tensor([True, True]))
    torch.testing.assert_close(zeroed, cond.clip_to_time.bias.expand(2, -1))


@pytest.mark.parametrize("flag", ["drop_clip", "drop_text"])
def test_decoder_drop_flags_change_output(decoder: UNetModel, flag: str) -> None:
    inputs = _decoder_inputs()
    with torch.no_grad():
        kept = decoder(**inputs, **{flag: torch.tensor([False, False])})
        dropped = decoder(**inputs, **{flag: torch.tensor([True, False])})
    assert not torch.allclose(kept[0], dropped[0])
    torch.testing.assert_close(kept[1], dropped[1])  # rows are independent


def test_decoder_ignores_padded_and_dropped_text(decoder: UNetModel) -> None:
    inputs = _decoder_inputs()
    changed = dict(inputs, text_tokens=inputs["text_tokens"].clone())
    changed["text_tokens"][1, -1] += 5.0  # row 1's last token is padding
    with torch.no_grad():
        torch.testing.assert_close(decoder(**inputs), decoder(**changed))
        changed["text_tokens"][0] += 5.0  # row 0: all real tokens, but dropped
        drop = torch.tensor([True, False])
        torch.testing.assert_close(decoder(**inputs, drop_text=drop), decoder(**changed, drop_text=drop))
        changed["text_tokens"][1, 0] += 5.0  # a real token matters
        assert not torch.allclose(decoder(**inputs)[1], decoder(**changed)[1])


# -- the diffusion prior --------------------------------------------------------------------------
def _prior_inputs(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cfg = TINY.prior
    mask = torch.ones(n, cfg.context_length, dtype=torch.bool)
    mask[1:, cfg.context_length // 2 :] = False
    return {
        "x_t": torch.randn(n, cfg.embed_dim, generator=gen),
        "timesteps": torch.randint(0, 1000, (n,), generator=gen),
        "text_embed": nn.functional.normalize(torch.randn(n, cfg.embed_dim, generator=gen), dim=-1),
        "text_tokens": torch.randn(n, cfg.context_length, TINY.prior.text_width, generator=gen),
        "text_mask": mask,
    }


@pytest.fixture(scope="module")
def prior() -> DiffusionPrior:
    torch.manual_seed(0)
    return DiffusionPrior(TINY.prior).eval()


def test_prior_shapes_dtypes_and_scale(prior: DiffusionPrior) -> None:
    with torch.no_grad():
        out = prior(**_prior_inputs())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = prior(**_prior_inputs())
    assert out.shape == (3, TINY.prior.embed_dim) and auto.shape == out.shape
    half = DiffusionPrior(TINY.prior)
    half.load_state_dict(prior.state_dict())
    half = half.to(torch.bfloat16)
    inputs = {k: v.bfloat16() if v.is_floating_point() else v for k, v in _prior_inputs().items()}
    with torch.no_grad():
        assert half(**inputs).dtype == torch.bfloat16
    assert prior.embedding_scale == pytest.approx(TINY.prior.embed_dim**0.5)
    with torch.device("meta"):
        assert DiffusionPrior(get_config("paper").prior).embedding_scale == 17.2


def _prior_states(prior: DiffusionPrior, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N x S x W] every position's output of the last Transformer block."""
    states: list[torch.Tensor] = []
    handle = prior.blocks[-1].register_forward_hook(lambda _m, _i, out: states.append(out))
    with torch.no_grad():
        prior(**inputs)
    handle.remove()
    return states[0]


@pytest.mark.parametrize(
    ("name", "position", "perturb"),
    [
        (
            "text_tokens",
            3,
            lambda v: v.index_add(1, torch.tensor([3]), torch.ones(v.shape[0], 1, v.shape[2])),
        ),
        ("text_embed", L, lambda v: -v),
        ("timesteps", L + 1, lambda v: v + 17),
        ("x_t", L + 2, lambda v: v + 1.0),
    ],
)
def test_prior_mask_is_causal(
    prior: DiffusionPrior, name: str, position: int, perturb: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    inputs = _prior_inputs()
    base = _prior_states(prior, inputs)
    moved = _prior_states(prior, dict(inputs, **{name: perturb(inputs[name])}))
    torch.testing.assert_close(base[:, :position], moved[:, :position])  # earlier positions untouched
    assert not torch.allclose(base[0, position], moved[0, position])
    assert not torch.allclose(base[:, -1], moved[:, -1])  # the final query sees it


def test_prior_padding_and_drop_text(prior: DiffusionPrior) -> None:
    inputs = _prior_inputs()
    changed = dict(inputs, text_tokens=inputs["text_tokens"].clone())
    changed["text_tokens"][1:, -1] += 5.0  # padding in rows 1 and 2
    with torch.no_grad():
        torch.testing.assert_close(prior(**inputs), prior(**changed))
        drop = torch.tensor([True, False, False])
        dropped = prior(**inputs, drop_text=drop)
        assert not torch.allclose(dropped[0], prior(**inputs)[0])
        torch.testing.assert_close(dropped[1:], prior(**inputs)[1:])
        other = dict(inputs, text_tokens=inputs["text_tokens"] + 1.0, text_embed=-inputs["text_embed"])
        torch.testing.assert_close(dropped[0], prior(**other, drop_text=drop)[0])  # no caption leaks


# -- gradients flow everywhere ----------------------------------------------------------------------
def _train_steps(
    model: nn.Module, forward: Callable[[], torch.Tensor], target: torch.Tensor, steps: int
) -> None:
    """Adam on MSE: the first step lowers the loss, and every parameter gets a gradient within ``steps``
    (from the real zero-initialised output layers, gradients reach the inner layers on steps 2-3)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    touched = {name: False for name, _ in model.named_parameters()}
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(forward(), target)
        loss.backward()
        losses.append(loss.item())
        for name, p in model.named_parameters():
            touched[name] |= p.grad is not None and bool(p.grad.any())
        opt.step()
    with torch.no_grad():
        final = nn.functional.mse_loss(forward(), target).item()
    assert losses[1] < losses[0] and final < losses[0]
    assert not [name for name, ok in touched.items() if not ok]


def test_decoder_one_step_lowers_loss() -> None:
    torch.manual_seed(0)
    model = UNetModel(TINY.decoder.unet, learn_sigma=True)
    inputs = _decoder_inputs(n=2, side=16)
    drop_clip, drop_text = torch.tensor([False, True]), torch.tensor([False, True])
    target = torch.randn(2, 6, 16, 16, generator=torch.Generator().manual_seed(1))
    _train_steps(model, lambda: model(**inputs, drop_clip=drop_clip, drop_text=drop_text), target, steps=3)


@pytest.mark.parametrize(("stage", "side"), [("sr256", 32), ("sr1024", 64)])
def test_upsampler_one_step_lowers_loss(stage: str, side: int) -> None:
    torch.manual_seed(0)
    model = SuperResUNet(getattr(TINY, stage).unet)
    gen = torch.Generator().manual_seed(1)
    x, low = (
        torch.randn(2, 3, side, side, generator=gen),
        torch.randn(2, 3, side // 4, side // 4, generator=gen),
    )
    t, target = torch.tensor([3, 900]), torch.randn(2, 3, side, side, generator=gen)
    _train_steps(model, lambda: model(x, t, low_res=low), target, steps=3)


def test_prior_one_step_lowers_loss() -> None:
    torch.manual_seed(0)
    model = DiffusionPrior(TINY.prior)
    inputs = _prior_inputs(n=4)
    drop = torch.tensor([False, False, True, False])
    target = torch.randn(4, TINY.prior.embed_dim, generator=torch.Generator().manual_seed(1))
    _train_steps(model, lambda: model(**inputs, drop_text=drop), target, steps=2)


# -- construction -----------------------------------------------------------------------------------
def test_paper_configs_build_on_meta_device() -> None:
    """Parameter counts of the paper's chain (Table 3: 1B, 3.5B, 700M, 300M).

    The decoder lacks GLIDE's ~1.2B text Transformer (we read frozen CLIP text states instead),
    so it counts ~2.25B; the prior's 24 × 2048 Transformer alone is ~1.2B.
    """
    paper = get_config("paper")
    with torch.device("meta"):
        counts = {
            "prior": count_parameters(DiffusionPrior(paper.prior)),
            "decoder": count_parameters(UNetModel(paper.decoder.unet, learn_sigma=True)),
            "sr256": count_parameters(SuperResUNet(paper.sr256.unet)),
            "sr1024": count_parameters(SuperResUNet(paper.sr1024.unet)),
        }
    assert 1.0e9 < counts["prior"] < 1.4e9
    assert 2.0e9 < counts["decoder"] < 2.6e9
    assert 0.6e9 < counts["sr256"] < 0.8e9
    assert 0.25e9 < counts["sr1024"] < 0.35e9


def test_bad_head_split_is_refused() -> None:
    with pytest.raises(ValueError, match="heads"):
        UNetModel(UNetConfig(model_channels=40, channel_mult=(1, 2), attention_resolutions=(64,)))


# -- the tiny preset's space-to-depth stem and position embedding ---------------------------------
def test_patch_stem_runs_the_first_level_at_half_side_and_returns_full_size() -> None:
    tiny = get_config("tiny")
    assert tiny.decoder.unet.patch_size == 2 and tiny.decoder.unet.position_embedding
    torch.manual_seed(0)
    model = _randomize_zeros(UNetModel(tiny.decoder.unet, learn_sigma=True)).eval()
    stem = model.input_blocks[0][0]
    assert isinstance(stem, nn.Conv2d) and stem.in_channels == 3 * 4  # 2x2 patches of RGB
    assert model.position is not None and model.position.shape[-2:] == (32, 32)
    with torch.no_grad():
        out = model(**_decoder_inputs(side=64))
    assert out.shape == (2, 6, 64, 64)


def test_patch_stem_keeps_pixels_in_place() -> None:
    """The output unfold is the exact inverse of the input fold: a network that passes its input
    through (identity stem and head, no blocks) returns the image unchanged."""
    config = UNetConfig(
        image_size=8, model_channels=12, channel_mult=(1,), attention_resolutions=(), patch_size=2
    )
    model = UNetModel(config)
    x = torch.randn(1, 3, 8, 8)
    folded = nn.functional.pixel_unshuffle(x, 2)
    assert folded.shape == (1, 12, 4, 4)
    assert torch.equal(nn.functional.pixel_shuffle(folded, 2), x)
    assert model(x, torch.tensor([1])).shape == x.shape


def test_position_embedding_is_added_after_the_stem() -> None:
    """The learned embedding reaches the output (zero-initialised, so a fresh network is
    unchanged by it), and it is a parameter the optimizer trains."""
    tiny = get_config("tiny")
    torch.manual_seed(0)
    model = _randomize_zeros(UNetModel(tiny.decoder.unet)).eval()
    assert model.position is not None and model.position.requires_grad
    inputs = _decoder_inputs(side=64)
    with torch.no_grad():
        model.position.zero_()
        plain = model(**inputs)
        model.position.normal_()
        placed = model(**inputs)
    assert (placed - plain).abs().mean() > 1e-3


@pytest.mark.parametrize("stage", ["decoder", "sr256"])
def test_tiny_patch_networks_train(stage: str) -> None:
    tiny = get_config("tiny")
    torch.manual_seed(0)
    if stage == "decoder":
        model: nn.Module = UNetModel(tiny.decoder.unet)
        inputs = _decoder_inputs(n=2, side=64)
        target = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        # The text pool sits behind one more zero-initialised layer (text_to_time): a fourth step.
        _train_steps(model, lambda: model(**inputs), target, steps=4)
    else:
        model = SuperResUNet(tiny.sr256.unet)
        gen = torch.Generator().manual_seed(1)
        x, low = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
        target = torch.randn(2, 3, 32, 32, generator=gen)
        _train_steps(model, lambda: model(x, torch.tensor([3, 900]), low_res=low), target, steps=3)


def test_pooled_text_reaches_the_time_embedding_and_ignores_padding() -> None:
    """``text_pool_to_time``: the attention pool of the kept, projected text tokens is added to the
    time embedding; padded tokens do not count, dropped text pools to zero (as with no text at
    all), and the path starts at zero."""
    torch.manual_seed(0)
    cond = ClipTextConditioning(8, 12, time_embed_dim=16, context_dim=8, text_pool_to_time=True)
    plain = ClipTextConditioning(8, 12, time_embed_dim=16, context_dim=8)
    plain.load_state_dict(
        {k: v for k, v in cond.state_dict().items() if "text_pool" not in k and "text_to_time" not in k}
    )
    embed, tokens = torch.randn(2, 8), torch.randn(2, 3, 12)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(cond(embed, tokens, mask)[0], plain(embed, tokens, mask)[0])  # zero init
    for p in cond.text_to_time.parameters():
        p.data.normal_()
    time_add = cond(embed, tokens, mask)[0]
    pooled = cond.text_pool(cond.text_proj(tokens), mask)
    torch.testing.assert_close(time_add, plain(embed, tokens, mask)[0] + cond.text_to_time(pooled))
    padded = tokens.clone()
    padded[0, 2] = 100.0
    torch.testing.assert_close(cond(embed, padded, mask)[0], time_add)
    dropped = cond(embed, tokens, mask, drop_text=torch.tensor([True, True]))[0]
    torch.testing.assert_close(dropped, plain(embed)[0] + cond.text_to_time.bias)
    torch.testing.assert_close(cond(embed)[0], dropped)
    assert get_config("tiny").decoder.unet.text_pool_to_time


def test_text_attention_pool_starts_as_the_mean_and_can_single_out_a_word() -> None:
    torch.manual_seed(0)
    pool = TextAttentionPool(8, heads=2)
    tokens = torch.randn(2, 4, 8)
    keep = torch.tensor([[True, True, True, False], [False, False, False, False]])
    with torch.no_grad():
        pool.scores.weight.zero_()
        pool.scores.bias.zero_()
        values = pool.values(tokens)
        out = pool(tokens, keep)
        torch.testing.assert_close(out[0], values[0, :3].mean(0))  # equal scores: the mean
        assert torch.all(out[1] == 0)  # nothing kept
        pool.scores.weight.copy_(100.0 * tokens[0, 1] / tokens[0, 1].norm() * torch.ones(2, 1))
        torch.testing.assert_close(pool(tokens, keep)[0], values[0, 1], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="heads"):
        TextAttentionPool(6, heads=4)


def test_output_res_blocks_start_as_the_identity_and_then_count() -> None:
    """A network with extra output blocks, given another's weights for everything else, computes
    exactly what that network does (the fine-tune of RECIPE.md section 10 starts there); once the
    new blocks' weights move, the output does."""
    tiny = get_config("tiny").decoder.unet
    assert tiny.output_res_blocks == 0  # the bundled decoder has none (RECIPE.md, section 10)
    torch.manual_seed(0)
    plain = _randomize_zeros(UNetModel(tiny)).eval()
    grown = UNetModel(replace(tiny, output_res_blocks=2)).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("refine_blocks.") for k in missing)
    assert len(grown.refine_blocks) == 2
    inputs = _decoder_inputs(side=64)
    with torch.no_grad():
        torch.testing.assert_close(grown(**inputs), plain(**inputs), rtol=0, atol=0)
        _randomize_zeros(grown.refine_blocks, seed=3)
        assert (grown(**inputs) - plain(**inputs)).abs().mean() > 1e-3
