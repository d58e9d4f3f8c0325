"""The fast path (models/execution.py): each switch keeps the images within a measured tolerance,
and with the switches off the code runs exactly as before. Never timed: bench.compare measures speed.

Tolerances were measured on the bundled model at 256² (3 images, prior 4 / decoder 6 / sr256 3
steps): fused attention, micro-batches and channels_last change no pixel by more than 1/255;
bfloat16 autocast on the upsamplers moves pixels by 0.38/255 on average (99th percentile 2/255).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from models.configs import DEFAULT_AUTOCAST_STAGES, UNET_STAGES, SamplingConfig, StageSampling, UNetConfig
from models.execution import (
    BASELINE,
    ExecutionConfig,
    NetworkCall,
    bf16_supported,
    bucket_for,
    chunks,
    network_call,
    pad_rows,
    prepare_network,
    set_fused_attention,
    with_autocast_weights,
)
from models.nn import GroupNorm32, norm_groups
from models.pipeline import GenerationRequest, UnclipPipeline, _CastModel, load_pipeline
from models.unet import AttentionBlock, ResBlock, UNetModel

FEW_STEPS = SamplingConfig(
    prior=StageSampling(steps=3, guidance=2.0),
    decoder=StageSampling(steps=4, guidance=3.0),
    sr256=StageSampling(steps=2),
    sr1024=StageSampling(steps=1),
)
REQUESTS = [
    GenerationRequest("a small red circle in the center", n=2, seed=1),
    GenerationRequest("a big blue star on the left", n=1, seed=2),
]


class OpNames(TorchDispatchMode):
    """Records the name of every aten op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class KernelInputs(TorchDispatchMode):
    """Records the first tensor argument of every call of the aten op named ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.inputs: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if self.name in str(func):
            self.inputs.append(args[0])
        return func(*args, **(kwargs or {}))


def attention_block(seed: int = 0) -> AttentionBlock:
    torch.manual_seed(seed)
    block = AttentionBlock(64, 32, encoder_channels=48)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)  # zero-initialised: make it matter
    return block.eval()


def attention_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 64, 8, 8, generator=g)
    context = torch.randn(3, 6, 48, generator=g)
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False], [True] * 3 + [False] * 3])
    return x, context, mask


def test_token_layout_matches_channel_layout() -> None:
    block = attention_block()
    x, context, mask = attention_inputs()
    block.token_layout = False
    reference = block(x, context, mask)
    block.token_layout = True
    for features in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(block(features, context, mask), reference, atol=1e-5, rtol=1e-5)
    without_context = block(x)
    block.token_layout = False
    torch.testing.assert_close(without_context, block(x), atol=1e-5, rtol=1e-5)


def test_token_layout_takes_the_fused_kernel_and_the_channel_layout_does_not() -> None:
    block = attention_block()
    x, context, mask = attention_inputs()
    for token_layout, fused in ((True, True), (False, False)):
        block.token_layout = token_layout
        with torch.no_grad(), OpNames() as ops:
            block(x, context, mask)
        flash = any("_scaled_dot_product_flash_attention_for_cpu" in name for name in ops.names)
        assert flash is fused, ops.names


def test_token_layout_trains() -> None:
    block = attention_block().train()
    x, context, mask = attention_inputs()
    block(x.requires_grad_(), context, mask).square().mean().backward()
    assert block.qkv.weight.grad is not None and block.qkv.weight.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_switches_off_call_the_network_as_before() -> None:
    """BASELINE's NetworkCall is the pre-fast-path _CastModel, bit for bit."""
    torch.manual_seed(0)
    unet = UNetModel(
        UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
    )
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    set_fused_attention(unet, False)
    before = _CastModel(unet, torch.float32)(x, t)
    call = network_call(
        "decoder", prepare_network("decoder", unet, BASELINE, x.device), torch.float32, BASELINE, x.device
    )
    assert torch.equal(call(x, t), before)


def test_weights_cast_once_compute_what_autocast_computes() -> None:
    """The copy with bf16 conv/linear weights gives autocast's output bit for bit, runs fewer
    casts per forward, and leaves the plain module in float32 (training and probes read it)."""
    torch.manual_seed(0)
    unet = UNetModel(
        UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
    ).eval()
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    per_call = NetworkCall(unet, torch.float32, autocast_dtype=torch.bfloat16)
    cast_once = NetworkCall(
        with_autocast_weights(unet, torch.bfloat16), torch.float32, autocast_dtype=torch.bfloat16
    )
    with torch.no_grad(), OpNames() as per_call_ops:
        expected = per_call(x, t)
    with torch.no_grad(), OpNames() as cast_once_ops:
        got = cast_once(x, t)
    assert torch.equal(got, expected)
    per_call_casts = sum(1 for n in per_call_ops.names if "_to_copy" in n)
    cast_once_casts = sum(1 for n in cast_once_ops.names if "_to_copy" in n)
    assert cast_once_casts < per_call_casts - 20, (cast_once_casts, per_call_casts)
    assert {p.dtype for p in unet.parameters()} == {torch.float32}


def test_chunks_and_buckets() -> None:
    assert chunks(5, 0) == [range(5)]
    assert chunks(5, 8) == [range(5)]
    assert chunks(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 3, 4, 5, 9)] == [1, 4, 4, 8, 9]
    padded = pad_rows(torch.arange(6).view(3, 2), 3, 5)
    assert padded.tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_rows("text", 3, 5) == "text"


def test_bucket_padding_keeps_each_rows_output() -> None:
    """CUDA graphs replay fixed batch buckets: padding rows must not change the real rows."""
    torch.manual_seed(0)
    unet = UNetModel(
        UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
    )
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    plain = NetworkCall(unet, torch.float32)(x, t)
    padded = NetworkCall(unet, torch.float32, buckets=(1, 2, 4, 8))(x, t)
    assert padded.shape == plain.shape
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def baseline_images() -> np.ndarray:
    return _images(load_pipeline(None, execution=BASELINE))


def _images(pipeline: UnclipPipeline) -> np.ndarray:
    """The bundled model's 256² images of REQUESTS (the decoder's and sr256's work), as int16."""
    images = pipeline.generate(REQUESTS, 256, FEW_STEPS).images
    return np.concatenate([i for i in images if i is not None]).astype(np.int16)


@pytest.mark.slow
@pytest.mark.parametrize(
    "execution",
    [
        replace(ExecutionConfig(), autocast="off"),
        replace(ExecutionConfig(), autocast="off", micro_batch_sr256=2),
        replace(BASELINE, channels_last=True),
        replace(BASELINE, fused_attention=True),
    ],
    ids=["default-in-fp32", "micro-batch-2", "channels_last-only", "fused-only"],
)
def test_float32_switches_keep_the_images(baseline_images: np.ndarray, execution: ExecutionConfig) -> None:
    images = _images(load_pipeline(None, execution=execution))
    assert np.abs(images - baseline_images).max() <= 2


@pytest.mark.slow
@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no bfloat16 arithmetic on this CPU")
@pytest.mark.parametrize("stages", [DEFAULT_AUTOCAST_STAGES, UNET_STAGES], ids=["upsamplers", "every-unet"])
def test_bf16_autocast_keeps_the_images_close(baseline_images: np.ndarray, stages: tuple[str, ...]) -> None:
    """The two defaults: the upsamplers in bf16 (a GPU), and every UNet (a CPU with native bf16)."""
    images = _images(load_pipeline(None, execution=replace(ExecutionConfig(), autocast_stages=stages)))
    diff = np.abs(images - baseline_images)
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8


@pytest.mark.parametrize(
    ("amx", "avx512_bf16"),
    [(True, True), (False, True), (False, False)],
    ids=["amx", "avx512-bf16", "no-bf16"],
)
def test_every_unet_autocasts_by_default_on_a_cpu_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    cpu = torch.device("cpu")
    default = ExecutionConfig()
    native = torch.bfloat16 if amx or avx512_bf16 else None
    assert default.stages_autocast(cpu) == UNET_STAGES
    assert [default.autocast_dtype(stage, cpu) for stage in UNET_STAGES] == [native] * 3
    chosen = replace(default, autocast_stages=("sr1024",))  # a choice wins over the device's default
    assert chosen.autocast_dtype("decoder", cpu) is None and chosen.autocast_dtype("sr256", cpu) is None
    assert chosen.autocast_dtype("sr1024", cpu) == native
    assert replace(default, autocast_stages=()).stages_autocast(cpu) == ()
    assert replace(default, autocast="off").autocast_dtype("decoder", cpu) is None


def test_a_gpu_autocasts_only_the_upsamplers_by_default() -> None:
    # The decoder in bf16 on a GPU is unmeasured; the list is the device's, whatever the GPU.
    assert (
        ExecutionConfig().stages_autocast(torch.device("cuda"))
        == DEFAULT_AUTOCAST_STAGES
        == ("sr256", "sr1024")
    )


def test_micro_batches_report_progress_over_all_rows() -> None:
    pipeline = UnclipPipeline.random("tiny", execution=replace(ExecutionConfig(), micro_batch_sr256=2))
    seen: list[tuple[str, int, int]] = []
    pipeline.generate(
        REQUESTS, 256, FEW_STEPS, progress=lambda stage, step, total: seen.append((stage, step, total))
    )
    sr = [(step, total) for stage, step, total in seen if stage == "sr256"]
    assert sr == [(k, 4) for k in range(1, 5)], "3 rows in chunks of 2: two chunks of 2 steps"


# Ops that make the host wait for the device on CUDA: a tensor read as a Python number or bool
# (.item(), if tensor:, float(tensor)) and data-dependent shapes (nonzero, boolean-mask indexing).
SYNCING_OPS = (
    "aten._local_scalar_dense",
    "aten.item",
    "aten.nonzero",
    "aten.masked_select",
    "aten.is_nonzero",
)


def test_sampling_never_reads_a_tensor_on_the_host() -> None:
    """No host-device synchronisation inside the sampling loop (checked on the CPU by the ops that
    would force one on CUDA), for the whole chain with guidance and micro-batches."""
    pipeline = UnclipPipeline.random("tiny", execution=replace(ExecutionConfig(), micro_batch_sr256=1))
    text = pipeline.encode_text([r.prompt for r in REQUESTS])
    with OpNames() as ops:
        pipeline.generate(REQUESTS, 256, FEW_STEPS, text=text)
    assert ops.names, "the dispatch mode saw the ops"
    assert not [name for name in ops.names if name.startswith(SYNCING_OPS)]


def test_schedule_constants_are_copied_to_a_device_once() -> None:
    from models.diffusion.gaussian import _ON_DEVICE, _constants_on

    constants = np.linspace(0.1, 0.9, 7)
    first = _constants_on(constants, torch.device("meta"))
    assert _constants_on(constants, torch.device("meta")) is first
    assert _constants_on(constants, torch.device("cpu")).data_ptr() == constants.ctypes.data  # no copy
    key = (id(constants), "meta")
    del constants
    assert key not in _ON_DEVICE, "freed with its array"


@pytest.mark.slow
def test_compile_stages_choose_which_unets_compile() -> None:
    """Only the stages in ``compile_stages`` are wrapped (torch.compile compiles lazily: nothing
    is compiled here) and only they pad to buckets."""
    execution = replace(ExecutionConfig(), compile=True, compile_stages=("decoder",), graph_buckets=(4,))
    config = UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
    cpu = torch.device("cpu")
    decoder = prepare_network("decoder", UNetModel(config), execution, cpu)
    upsampler = prepare_network("sr256", UNetModel(config), execution, cpu)
    assert isinstance(decoder, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(upsampler, UNetModel)
    assert network_call("decoder", decoder, torch.float32, execution, cpu).buckets == (4,)
    assert network_call("sr256", upsampler, torch.float32, execution, cpu).buckets == ()


def test_compiled_unet_matches_eager() -> None:
    """torch.compile (Inductor, CPU) on a small UNet: the same outputs, batches padded to buckets."""
    torch.manual_seed(0)
    unet = UNetModel(
        UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
    )
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)
    unet.eval().requires_grad_(False)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    eager = NetworkCall(unet, torch.float32)(x, t)
    # float32 on both sides (the default autocasts the decoder on a CPU with native bf16).
    execution = replace(ExecutionConfig(), autocast="off", compile=True, graph_buckets=(4,))
    device = torch.device("cpu")
    compiled = network_call(
        "decoder", prepare_network("decoder", unet, execution, device), torch.float32, execution, device
    )
    assert compiled.buckets == (4,)
    torch.testing.assert_close(compiled(x, t), eager, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_match_eager_on_gpu() -> None:
    """CUDA graphs ("reduce-overhead") for fixed buckets: the same images as eager, bf16 weights."""
    eager = load_pipeline(None, device="cuda", dtype="bfloat16", execution=ExecutionConfig())
    graphs = load_pipeline(
        None, device="cuda", dtype="bfloat16", execution=replace(ExecutionConfig(), cuda_graphs=True)
    )
    reference = np.concatenate([i for i in eager.generate(REQUESTS, 256, FEW_STEPS).images if i is not None])
    for _ in range(2):  # capture, then replay
        images = np.concatenate(
            [i for i in graphs.generate(REQUESTS, 256, FEW_STEPS).images if i is not None]
        )
    assert np.abs(images.astype(np.int16) - reference).mean() < 1.5


@pytest.mark.parametrize(
    ("channels", "side", "dtype", "kernel_input"),
    [
        (8, 24, torch.bfloat16, ("nchw", torch.bfloat16)),  # channels span < 32 bytes
        (4, 24, torch.float32, ("nchw", torch.float32)),
        (32, 24, torch.bfloat16, ("channels_last", torch.float32)),  # < 1024 pixels, 1 channel a group
        (256, 8, torch.bfloat16, ("channels_last", torch.float32)),  # 8 channels a group
        (512, 8, torch.bfloat16, ("channels_last", torch.bfloat16)),  # 16 channels a group: 32 bytes
        (32, 32, torch.bfloat16, ("channels_last", torch.bfloat16)),  # 1024 pixels
        (128, 16, torch.float32, ("channels_last", torch.float32)),
    ],
)
def test_group_norm_on_channels_last_keeps_values_and_layout(
    channels: int, side: int, dtype: torch.dtype, kernel_input: tuple[str, torch.dtype]
) -> None:
    """Channels-last maps go to the kernel that is fast for them (models.nn: narrow maps through
    NCHW, small bf16 maps with narrow groups through float32) and come back channels-last in their
    own dtype. Whichever kernel runs, the numbers are the contiguous input's."""
    torch.manual_seed(0)
    norm = GroupNorm32(norm_groups(channels), channels)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    norm.upcast = dtype == torch.float32
    x = torch.randn(2, channels, side, side).to(dtype)
    expected = norm(x)
    with KernelInputs("native_group_norm") as kernel:
        got = norm(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == dtype
    layout, kernel_dtype = kernel_input
    assert [(t.is_contiguous(), t.dtype) for t in kernel.inputs] == [(layout == "nchw", kernel_dtype)]
    torch.testing.assert_close(
        got.float(), expected.float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0
    )


def test_micro_batches_apply_on_the_cpu_only() -> None:
    """Chunks pay on the CPU (cache, malloc's kept memory); a GPU runs every stage whole."""
    config = ExecutionConfig()
    assert config.micro_batch("sr256", torch.device("cpu")) == config.micro_batch_sr256 > 0
    assert config.micro_batch("sr1024", torch.device("cpu")) == config.micro_batch_sr1024 > 0
    assert config.micro_batch("sr256", torch.device("cuda")) == 0
    on_both = replace(config, micro_batch_devices=("cpu", "cuda"))
    assert on_both.micro_batch("sr256", torch.device("cuda")) == config.micro_batch_sr256


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_scale_shift_is_the_film_it_replaces(dtype: torch.dtype) -> None:
    """One row: the FiLM folded into the norm's affine gives norm(h) * (1 + scale) + shift; more
    rows, or the switch off, run the unfused expression itself (bit for bit)."""
    torch.manual_seed(0)
    norm = GroupNorm32(norm_groups(64), 64)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
        norm.bias.normal_(0.0, 0.2)
    x = (torch.randn(3, 64, 16, 16) * 3 + 1).to(dtype)
    scale, shift = (torch.randn(3, 64, 1, 1).to(dtype) for _ in range(2))

    def film(rows: slice) -> torch.Tensor:
        return norm(x[rows]) * (1 + scale[rows]) + shift[rows]

    for fold in (False, True):
        norm.fold_scale_shift = fold
        assert torch.equal(norm.scale_shift(x, scale, shift), film(slice(None)))  # 3 rows: unfused
    one = slice(0, 1)
    norm.fold_scale_shift = False
    assert torch.equal(norm.scale_shift(x[one], scale[one], shift[one]), film(one))
    norm.fold_scale_shift = True
    folded = norm.scale_shift(x[one], scale[one], shift[one])
    assert folded.dtype == dtype
    # The fold rounds once (float32 affine) where the FiLM rounds after each op: in bf16 a few
    # units in the last place of the unfused result.
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.07, rtol=0.02)
    torch.testing.assert_close(folded.float(), film(one).float(), **tolerance)


def test_prepare_network_sets_the_fold_from_the_config() -> None:
    torch.manual_seed(0)
    unet = UNetModel(UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2)))
    assert not any(m.fold_scale_shift for m in unet.modules() if isinstance(m, GroupNorm32))  # training
    for config, expected in ((ExecutionConfig(), True), (BASELINE, False)):
        network = prepare_network("sr256", copy.deepcopy(unet), config, torch.device("cpu"))
        assert isinstance(network, nn.Module)
        norms = [m for m in network.modules() if isinstance(m, GroupNorm32)]
        assert norms and all(m.fold_scale_shift == expected for m in norms)
    # The whole network, one row: the folded forward matches the unfused one.
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    plain = prepare_network("sr256", copy.deepcopy(unet), BASELINE, torch.device("cpu"))
    folded = prepare_network(
        "sr256", copy.deepcopy(unet), replace(BASELINE, fold_scale_shift=True), torch.device("cpu")
    )
    for block in (plain, folded):  # out_layers start at zero: give the residual branches weight
        torch.manual_seed(1)
        for p in block.parameters():
            p.data.normal_(0, 0.1)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, t), plain(x, t), atol=1e-5, rtol=1e-4)


def test_in_place_activations_change_no_number_and_leave_autograd_alone() -> None:
    """Maps written over in place give the same output bit for bit; with autograd recording (a
    prepared network fine-tuned, say) the blocks keep their fresh buffers and backward works."""
    torch.manual_seed(0)
    unet = UNetModel(UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2)))
    for p in unet.parameters():  # out_layers start at zero: give the residual branches weight
        p.data.normal_(0, 0.1)
    assert not any(b.reuse_maps for b in unet.modules() if isinstance(b, ResBlock))  # training
    config = replace(BASELINE, in_place_activations=True)
    plain = prepare_network("sr256", copy.deepcopy(unet), BASELINE, torch.device("cpu"))
    reusing = prepare_network("sr256", copy.deepcopy(unet), config, torch.device("cpu"))
    assert isinstance(reusing, nn.Module)
    blocks = [b for b in reusing.modules() if isinstance(b, ResBlock)]
    assert blocks and all(b.reuse_maps for b in blocks)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(reusing(x, t), plain(x, t))
    reusing.requires_grad_(True)
    out = reusing(x, t)  # grad mode on: no in-place writes autograd would trip over
    out.square().mean().backward()
    assert all(p.grad is not None for p in reusing.parameters())
    with torch.no_grad():
        assert torch.equal(out, plain(x, t))


def test_fused_embedding_projections_compute_what_the_blocks_compute() -> None:
    """One matmul for every block's embedding projection: the same output within float32 rounding
    (a small UNet, three rows at three timesteps), no block computing its own; with autograd
    recording the blocks' own layers run, so gradients reach them."""
    torch.manual_seed(0)
    config = UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
    unet = UNetModel(config)
    for p in unet.parameters():  # out_layers start at zero: give the residual branches weight
        p.data.normal_(0, 0.1)
    fused = prepare_network(
        "sr256", copy.deepcopy(unet), replace(BASELINE, fuse_embedding_projections=True), torch.device("cpu")
    )
    plain = prepare_network("sr256", copy.deepcopy(unet), BASELINE, torch.device("cpu"))
    assert isinstance(fused, UNetModel) and fused.embedding_projections is not None
    assert isinstance(plain, UNetModel) and plain.embedding_projections is None
    slots = [b.projection_slot for b in fused.modules() if isinstance(b, ResBlock)]
    assert slots == list(range(len(slots))) and len(slots) > 4
    assert fused.state_dict().keys() == unet.state_dict().keys()  # nothing new in the weights files
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    for block in fused.modules():
        if isinstance(block, ResBlock):
            block.emb_layers.register_forward_hook(count)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, t), plain(x, t), atol=1e-5, rtol=1e-4)
    assert calls == 0  # every block took its slice of the one matmul
    fused.requires_grad_(True)
    fused(x, t).square().mean().backward()
    assert calls == len(slots)
    assert all(b.emb_layers[1].weight.grad is not None for b in fused.modules() if isinstance(b, ResBlock))


@pytest.mark.slow
def test_fused_embedding_projections_in_the_pipeline() -> None:
    """The bundled chain with and without the switch (every UNet in bf16 on a CPU with native
    bf16, float32 elsewhere): the same images."""
    fused = _images(load_pipeline(None, execution=ExecutionConfig()))
    separate = _images(
        load_pipeline(None, execution=replace(ExecutionConfig(), fuse_embedding_projections=False))
    )
    assert np.abs(fused - separate).mean() < 0.5 and np.abs(fused - separate).max() <= 8


def test_in_place_residual_keeps_the_dtype_of_the_sum() -> None:
    """Under autocast a block's branch comes out bf16 while an identity skip stays float32: the
    sum is float32 either way, as it was before the switch."""
    torch.manual_seed(0)
    block = ResBlock(16, 32, dropout=0.0)
    for p in block.parameters():
        p.data.normal_(0, 0.1)
    x, emb = torch.randn(1, 16, 8, 8), torch.randn(1, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = block(x, emb)
        block.reuse_maps = True
        got = block(x, emb)
    assert expected.dtype == got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_channels_last_applies_on_the_cpu_only() -> None:
    """NHWC where oneDNN's convolutions prefer it; on CUDA, whose GroupNorm converts a
    channels-last map to NCHW and back, the UNets stay NCHW unless asked."""
    config = ExecutionConfig()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert config.uses_channels_last(cpu) and not config.uses_channels_last(cuda)
    torch.manual_seed(0)
    unet = UNetModel(UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2)))
    for device, expected in ((cpu, True), (cuda, False)):
        # prepare_network only converts the module (it stays on the CPU here) and network_call
        # only records the layout, so the CUDA side is checked without a GPU.
        network = prepare_network("sr256", copy.deepcopy(unet), config, device)
        assert isinstance(network, nn.Module)
        conv = network.input_blocks[0][0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == expected
        assert network_call("sr256", network, torch.float32, config, device).channels_last == expected
    everywhere = replace(config, channels_last_devices=("cpu", "cuda"))
    assert everywhere.uses_channels_last(cuda)
    assert not replace(everywhere, channels_last=False).uses_channels_last(cpu)


def test_native_norms_on_gpu_change_nothing_on_the_cpu() -> None:
    """The switch is for CUDA: on the CPU every GroupNorm keeps the upcast it had without it."""
    torch.manual_seed(0)
    unet = UNetModel(UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2)))
    for autocast in ("off", "bfloat16"):
        config = replace(ExecutionConfig(), autocast=autocast)
        expected = {
            n: m.upcast
            for n, m in prepare_network(
                "sr256", copy.deepcopy(unet), config, torch.device("cpu")
            ).named_modules()
            if isinstance(m, GroupNorm32)
        }
        switched = prepare_network(
            "sr256", copy.deepcopy(unet), replace(config, native_norms_on_gpu=True), torch.device("cpu")
        )
        got = {n: m.upcast for n, m in switched.named_modules() if isinstance(m, GroupNorm32)}
        assert got == expected and len(got) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_group_norm_on_gpu_matches_the_upcast_one(dtype: torch.dtype) -> None:
    """Half precision straight into the CUDA kernel (float32 accumulation inside) against the
    float32 copies, in both memory formats."""
    torch.manual_seed(0)
    norm = GroupNorm32(32, 320).cuda()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    norm = norm.to(dtype)
    x = torch.randn(4, 320, 64, 64, device="cuda").to(dtype)
    expected = norm(x)
    norm.upcast = False
    for memory_format in (torch.contiguous_format, torch.channels_last):
        got = norm(x.contiguous(memory_format=memory_format))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=1e-2)
