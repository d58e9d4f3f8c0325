"""The worker's fast-path settings reach the pipeline (workers/runtime.py); nothing here is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from contract.settings import Settings
from models.execution import ExecutionConfig
from models.pipeline import UnclipPipeline
from workers.runtime import configure_compile_cache, configure_openmp, execution_from_settings, warm_up

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_models_defaults() -> None:
    assert execution_from_settings(Settings()) == ExecutionConfig()


def test_every_switch_reaches_the_execution_config() -> None:
    settings = Settings(
        fused_attention=False,
        channels_last=True,
        channels_last_devices=("cpu", "cuda"),
        autocast="bfloat16",
        autocast_stages=("decoder",),
        compile_unets=True,
        cuda_graphs=True,
        cast_weights_once=False,
        compile_stages=("decoder",),
        micro_batch_sr256=2,
        micro_batch_sr1024=3,
        micro_batch_devices=("cpu", "cuda"),
        native_norms_on_gpu=True,
        fold_scale_shift=False,
        in_place_activations=False,
        fuse_embedding_projections=False,
    )
    execution = execution_from_settings(settings)
    assert execution == ExecutionConfig(
        fused_attention=False,
        channels_last=True,
        channels_last_devices=("cpu", "cuda"),
        autocast="bfloat16",
        autocast_stages=("decoder",),
        cast_weights_once=False,
        compile=True,
        compile_stages=("decoder",),
        cuda_graphs=True,
        micro_batch_sr256=2,
        micro_batch_sr1024=3,
        micro_batch_devices=("cpu", "cuda"),
        native_norms_on_gpu=True,
        fold_scale_shift=False,
        in_place_activations=False,
        fuse_embedding_projections=False,
    )


def test_omp_wait_policy_is_set_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    configure_openmp("passive")

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_openmp("passive")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    configure_openmp("default")
    assert "OMP_WAIT_POLICY" not in os.environ


def test_warm_up_runs_each_bucket_up_to_max_batch() -> None:
    pipeline = UnclipPipeline.random("tiny", execution=ExecutionConfig(graph_buckets=(1, 2, 4)))
    sizes: list[int] = []
    original = pipeline.generate

    def spy(requests, size, sampling=None, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(requests[0].n)
        assert size == 1024 and all(
            sampling.for_stage(s).steps == 1 for s in ("prior", "decoder", "sr256", "sr1024")
        )
        return original(requests, size, sampling, **kwargs)

    pipeline.generate = spy  # type: ignore[method-assign]
    assert warm_up(pipeline, max_batch=2) >= 0
    assert sizes == [1, 2]


def test_compile_cache_dir_is_set_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Importing torch._dynamo writes torch's default into the variable: that is not a choice.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    configure_compile_cache(tmp_path / "compiled")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compiled")
    assert (tmp_path / "compiled").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "operator"))
    configure_compile_cache(tmp_path / "compiled")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "operator")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    configure_compile_cache(None)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


# One worker start, as far as compiling goes: the settings' cache directory, then a compiled UNet
# run at its bucket. Prints the cache's hits and misses and a checksum of the output.
_COMPILE_ONCE = """
import json
from dataclasses import replace

from contract.settings import Settings
from workers.runtime import compile_cache_counts, configure_compile_cache, execution_from_settings

settings = Settings(compile_unets=True, compile_stages=("decoder",))
configure_compile_cache(settings.compile_cache_dir)

import torch

from models.configs import UNetConfig
from models.execution import network_call, prepare_network
from models.unet import UNetModel

torch.manual_seed(0)
config = UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
unet = UNetModel(config).eval().requires_grad_(False)
execution = replace(execution_from_settings(settings), graph_buckets=(2,))
cpu = torch.device("cpu")
call = network_call("decoder", prepare_network("decoder", unet, execution, cpu), torch.float32, execution, cpu)
with torch.no_grad():
    out = call(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 700]))
hits, misses = compile_cache_counts()
print(json.dumps({"hits": hits, "misses": misses, "sum": out.sum().item()}))
"""


@pytest.mark.slow
def test_a_restarted_worker_loads_its_compiled_unet_from_the_cache(tmp_path: Path) -> None:
    """Two processes with the same UNCLIP_COMPILE_CACHE_DIR: the first compiles the UNet and
    stores it, the second loads it (no graph compiled) and computes the same numbers."""
    cache = tmp_path / "compile-cache"
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(UNCLIP_COMPILE_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def start() -> dict[str, float]:
        done = subprocess.run(
            [sys.executable, "-c", _COMPILE_ONCE],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    first = start()
    assert first["misses"] >= 1 and first["hits"] == 0
    assert (cache / "fxgraph").is_dir()
    second = start()
    assert second["hits"] == first["misses"] and second["misses"] == 0
    assert second["sum"] == first["sum"]
