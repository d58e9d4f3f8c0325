"""How the networks run, apart from what they compute: the fast path's switches.

Every switch here changes speed, not the model: the same weights and the same sampling give the
same images within a measured tolerance (``tests/models/test_fast_path.py``), and with a switch
off the code it guards runs exactly as before it existed (bit-identical). ``bench.compare``
measures what each one buys; the defaults are the ones that measured fastest on our CPUs with
``unclip evaluate``'s adherence unchanged (docs/benchmark.md). bf16 autocast applies only where
the device computes in bf16 natively, so elsewhere the default runs in float32.

- ``fused_attention``: the UNet's attention works on tokens, so q/k/v reach
  ``scaled_dot_product_attention`` with unit last stride and its fused (flash) kernel runs; the
  channel layout hands it transposed views and it falls back to the unfused math path.
- ``channels_last``: UNet weights and activations in NHWC, which oneDNN's convolutions prefer,
  on the device types in ``channels_last_devices``: the CPU only by default, because PyTorch's
  CUDA GroupNorm makes a channels-last input contiguous (NCHW) and returns NCHW, so on a GPU each
  norm costs a layout copy of the map and the convolution after it another one back.
- ``autocast``: bfloat16 autocast for the stages in ``autocast_stages`` where the device has
  bfloat16 arithmetic (the sampler's math stays float32). ``autocast_stages`` None (the default)
  is the device's measured choice, :func:`default_autocast_stages`: every UNet on a CPU with native bf16
  (AMX or AVX-512 BF16), the upsamplers on a GPU. ``cast_weights_once``: those stages
  call a copy of the network whose convolution and linear weights are already bfloat16, the values
  autocast would cast them to in every forward (about 280 casts per sr256 step), so the images
  are the same and the casts are paid once at load; the plain module stays float32.
- ``compile``: ``torch.compile`` the UNets in ``compile_stages``. ``cuda_graphs``: on CUDA,
  compile with CUDA graphs ("reduce-overhead"). Either way each batch is padded up to the next
  of ``graph_buckets``, so a few shapes, compiled or captured once (the worker warms them up at
  start), serve every size.
- ``micro_batch_*``: run a stage's rows in chunks of at most this many (0: all at once) on the
  device types in ``micro_batch_devices``; rows draw their noise from their own seeds, so
  chunking does not change which numbers a row gets.
- ``fold_scale_shift``: a residual block's FiLM (``norm(h) * (1 + scale) + shift``) folded into
  the GroupNorm's affine when a forward has one row, one pass over the map instead of three
  (:meth:`models.nn.GroupNorm32.scale_shift`): sr1024 runs one row at a time on the CPU, and
  sr256 does for a lone image.
- ``in_place_activations``: outside autograd, a residual block's SiLUs and its residual sum
  write over the maps they read (nothing reads them again): the same numbers, one buffer per
  memory-bound pass instead of two.
- ``fuse_embedding_projections``: outside autograd, every residual block's projection of the
  timestep embedding runs as one matmul per forward instead of one small one per block
  (:class:`models.unet.EmbeddingProjections`): at a few rows those are calls, not arithmetic.
- ``native_norms_on_gpu``: on CUDA, GroupNorm takes a half-precision map as it is (PyTorch's CUDA
  kernel accumulates in float32), as diffusers' networks do, instead of through float32 copies
  of the whole map before and after. Off until measured on a GPU (docs/benchmark.md, "On a GPU").
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from models.configs import CPU_AUTOCAST_STAGES, DEFAULT_AUTOCAST_STAGES, UNET_STAGES, StageName
from models.nn import GroupNorm32
from models.unet import AttentionBlock, ResBlock, UNetModel

AutocastMode = Literal["off", "bfloat16"]


@dataclass(frozen=True)
class ExecutionConfig:
    """The fast path's switches (see the module docstring); the defaults are the measured best."""

    fused_attention: bool = True
    channels_last: bool = True
    # aten's group_norm calls ``input.contiguous()`` on every device but the CPU: on CUDA a
    # channels-last UNet pays two layout copies per GroupNorm (about 50 norms a decoder forward),
    # and diffusers' networks, NCHW, ran faster per FLOP on the first GPU lease. Measured at the
    # next one (scripts/gpu-check.sh, variant ``channels-last-gpu``).
    channels_last_devices: tuple[str, ...] = ("cpu",)
    autocast: AutocastMode = "bfloat16"
    autocast_stages: tuple[StageName, ...] | None = None  # None: default_autocast_stages(device)
    cast_weights_once: bool = True
    compile: bool = False
    compile_stages: tuple[StageName, ...] = UNET_STAGES
    cuda_graphs: bool = False
    graph_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    micro_batch_prior: int = 0
    micro_batch_decoder: int = 0
    micro_batch_sr256: int = 4
    # One row at a time: a 1024² map of a batch of rows outgrows the 32 MiB that malloc keeps for
    # reuse (models.host_memory); at batch 4, one row at a time took sr1024 from 4.4 to 1.8 s an image.
    micro_batch_sr1024: int = 1
    # Chunks pay on the CPU, where a smaller working set stays in cache and in malloc's kept
    # memory; a GPU's throughput grows with the batch (Karlo-sized sr256 on the H200, 2026-12-04:
    # 62 ms a row alone, 37 ms a row in a forward of 16), so there every stage runs whole.
    micro_batch_devices: tuple[str, ...] = ("cpu",)
    native_norms_on_gpu: bool = False
    fold_scale_shift: bool = True
    in_place_activations: bool = True
    fuse_embedding_projections: bool = True

    def uses_channels_last(self, device: torch.device) -> bool:
        """Whether the UNets run channels-last (NHWC) on ``device``."""
        return self.channels_last and device.type in self.channels_last_devices

    def micro_batch(self, stage: StageName, device: torch.device) -> int:
        """Most rows of ``stage`` run together on ``device`` (0: the whole batch)."""
        if device.type not in self.micro_batch_devices:
            return 0
        rows: int = getattr(self, f"micro_batch_{stage}", 0)
        return rows

    def stages_autocast(self, device: torch.device) -> tuple[StageName, ...]:
        """The UNets that autocast on ``device``: the chosen ones, or the device's default."""
        if self.autocast_stages is not None:
            return self.autocast_stages
        return default_autocast_stages(device)

    def autocast_dtype(self, stage: StageName, device: torch.device) -> torch.dtype | None:
        """bfloat16 where this stage autocasts and the device supports it, else None."""
        if self.autocast == "off" or stage not in self.stages_autocast(device):
            return None
        return torch.bfloat16 if bf16_supported(device) else None


# Every switch off: the code as it ran before the fast path existed.
BASELINE = ExecutionConfig(
    fused_attention=False,
    channels_last=False,
    autocast="off",
    cast_weights_once=False,
    micro_batch_sr256=0,
    micro_batch_sr1024=0,
    fold_scale_shift=False,
    in_place_activations=False,
    fuse_embedding_projections=False,
)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 arithmetic worth autocasting to (AVX-512 BF16 / AMX on the
    CPU; Ampere or newer on CUDA)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":  # native bf16 only: oneDNN emulates it on plain AVX-512, slower than fp32
        cpu = torch.cpu
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    return False


def default_autocast_stages(device: torch.device) -> tuple[StageName, ...]:
    """The UNets that autocast on ``device`` unless chosen otherwise: every one on the CPU, the
    upsamplers elsewhere (a GPU's bf16 decoder is to be measured). On a CPU without native bf16
    nothing autocasts whatever the list says (:meth:`ExecutionConfig.autocast_dtype`).

    The decoder in bf16, against float32, 2026-12-06: on a 2-core AMX Xeon 0.231 → 0.197 s an
    image, shape 92.0 → 92.5% on 200 prompts; on a 2-core Zen 4 EPYC (AVX-512 BF16, no AMX)
    0.698 → 0.623 s at batch 1 and 0.395 → 0.312 at batch 8 (``bench/results/compare-zen4.md``).
    Zen 4 gained nothing before GroupNorm's slow small-map bf16 kernel was routed around
    (:func:`models.nn._group_norm`)."""
    if device.type == "cpu":
        return CPU_AUTOCAST_STAGES
    return DEFAULT_AUTOCAST_STAGES


def set_fused_attention(module: nn.Module, enabled: bool) -> None:
    """Switch every UNet attention block of ``module`` to the token layout (or back)."""
    for block in module.modules():
        if isinstance(block, AttentionBlock):
            block.token_layout = enabled


def chunks(n: int, size: int) -> list[range]:
    """Row ranges of at most ``size`` rows covering 0..n-1 (one range when ``size`` is 0 or ≥ n)."""
    if size <= 0 or size >= n:
        return [range(n)]
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows (``n`` itself beyond the largest)."""
    return next((b for b in sorted(buckets) if b >= n), n)


def pad_rows(value: Any, n: int, rows: int) -> Any:
    """A batched tensor [n x ...] padded to [rows x ...] by repeating its last row; else as is."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != n or rows == n:
        return value
    return torch.cat([value, value[-1:].expand(rows - n, *value.shape[1:])])


class NetworkCall:
    """Calls one stage's network the way ``ExecutionConfig`` says: in the network's dtype (the
    sampler's math stays float32), optionally channels_last, under bf16 autocast, and padded to a
    CUDA-graph bucket.

    :param network: the stage's module, or its compiled form.
    :param dtype: the network's parameter dtype; inputs are cast to it, the output to float32.
    """

    def __init__(
        self,
        network: Callable[..., torch.Tensor],
        dtype: torch.dtype,
        *,
        channels_last: bool = False,
        autocast_dtype: torch.dtype | None = None,
        device_type: str = "cpu",
        buckets: Sequence[int] = (),
    ):
        self.network = network
        self.dtype = dtype
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.device_type = device_type
        self.buckets = tuple(buckets)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """x [N x ...], t [N] → the network's output [N x ...] in float32."""
        cast = {
            k: v.to(self.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in kwargs.items()
        }
        x = x.to(self.dtype)
        n = x.shape[0]
        rows = bucket_for(n, self.buckets) if self.buckets else n
        if rows != n:
            x, t = pad_rows(x, n, rows), pad_rows(t, n, rows)
            cast = {k: pad_rows(v, n, rows) for k, v in cast.items()}
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            out = self.network(x, t, **cast)
        else:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                out = self.network(x, t, **cast)
        return out[:n].float().contiguous()


def prepare_network(
    stage: StageName, network: nn.Module, config: ExecutionConfig, device: torch.device
) -> Callable[..., torch.Tensor]:
    """Apply the module-level switches to ``network``; return what to call: the module itself
    (switched in place), its copy with autocast's weights cast once, or the ``torch.compile`` form
    of either for UNet stages when compiling."""
    set_fused_attention(network, config.fused_attention)
    if stage not in UNET_STAGES:
        return network
    autocast_dtype = config.autocast_dtype(stage, device)
    if autocast_dtype is not None and config.cast_weights_once:
        network = with_autocast_weights(network, autocast_dtype)
    # Half precision in, float32 accumulation, no upcast copies: on the CPU where the stage
    # autocasts, on CUDA when asked.
    native = (autocast_dtype is not None and device.type == "cpu") or (
        config.native_norms_on_gpu and device.type == "cuda"
    )
    for layer in network.modules():
        if isinstance(layer, GroupNorm32):
            layer.upcast = not native
            layer.fold_scale_shift = config.fold_scale_shift
        elif isinstance(layer, ResBlock):
            layer.reuse_maps = config.in_place_activations
    if config.fuse_embedding_projections and isinstance(network, UNetModel):
        network.fuse_embedding_projections()  # from the weights as cast above
    if config.uses_channels_last(device):
        network.to(memory_format=torch.channels_last)
    graphs = config.cuda_graphs and device.type == "cuda"
    if (config.compile and stage in config.compile_stages) or graphs:
        mode = "reduce-overhead" if graphs else None
        compiled: Callable[..., torch.Tensor] = torch.compile(network, mode=mode, dynamic=False)
        return compiled
    return network


def with_autocast_weights(network: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``network`` whose convolution and linear layers hold their parameters in
    ``dtype``: under autocast to ``dtype`` those layers compute with exactly these values (autocast
    rounds float32 weights the same way, but again in every forward, since it caches casts only of
    weights that require grad). Everything else (norms, learned positions) stays as it was."""
    copied = copy.deepcopy(network)
    for layer in copied.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            layer.to(dtype)
    return copied


def network_call(
    stage: StageName,
    network: Callable[..., torch.Tensor],
    dtype: torch.dtype,
    config: ExecutionConfig,
    device: torch.device,
) -> NetworkCall:
    """The :class:`NetworkCall` of one stage under ``config``."""
    # A compiled network or a captured graph serves fixed shapes: pad each batch to a bucket so a
    # few shapes (compiled once, at the worker's warm-up) serve every batch size.
    compiled = config.compile and stage in config.compile_stages
    fixed_shapes = (compiled or (config.cuda_graphs and device.type == "cuda")) and stage in UNET_STAGES
    return NetworkCall(
        network,
        dtype,
        channels_last=config.uses_channels_last(device) and stage in UNET_STAGES,
        autocast_dtype=config.autocast_dtype(stage, device),
        device_type=device.type,
        buckets=config.graph_buckets if fixed_shapes else (),
    )
