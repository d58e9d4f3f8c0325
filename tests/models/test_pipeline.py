"""The batched pipeline on the tiny config with random weights (the real model code, small)."""

from __future__ import annotations

import numpy as np
import pytest

from models.configs import SamplingConfig, StageSampling
from models.pipeline import GenerationRequest, UnclipPipeline, row_seed, stages_for_size

FAST = SamplingConfig(
    prior=StageSampling(steps=2, guidance=2.0),
    decoder=StageSampling(steps=2, guidance=3.0),
    sr256=StageSampling(steps=1),
    sr1024=StageSampling(steps=1),
)


def test_stages_for_size() -> None:
    assert stages_for_size(64) == ("prior", "decoder")
    assert stages_for_size(256) == ("prior", "decoder", "sr256")
    assert stages_for_size(512) == stages_for_size(1024) == ("prior", "decoder", "sr256", "sr1024")
    # A side between two stages' outputs is the larger output resized; the service offers only
    # contract.schemas.SIZES, the chain refuses what it cannot make.
    assert stages_for_size(128) == ("prior", "decoder", "sr256")
    for impossible in (8, 2048):
        with pytest.raises(ValueError):
            stages_for_size(impossible)


def test_row_seed_depends_on_every_part() -> None:
    seeds = {
        row_seed(1, 0, "decoder"),
        row_seed(2, 0, "decoder"),
        row_seed(1, 1, "decoder"),
        row_seed(1, 0, "prior"),
    }
    assert len(seeds) == 4
    assert row_seed(1, 0, "decoder") == row_seed(1, 0, "decoder")


@pytest.mark.parametrize("size", [64, 256])
def test_generate_shapes_and_timings(tiny_pipeline: UnclipPipeline, size: int) -> None:
    out = tiny_pipeline.generate([GenerationRequest("a red circle", n=2, seed=3)], size, FAST)
    assert len(out.images) == 1
    images = out.images[0]
    assert images is not None and images.shape == (2, size, size, 3) and images.dtype == np.uint8
    assert set(out.timings) == {"clip", *stages_for_size(size)}
    assert not np.array_equal(images[0], images[1]), "two images of one request must differ"


def test_seed_reproduces_across_batch_compositions(tiny_pipeline: UnclipPipeline) -> None:
    alone = tiny_pipeline.generate([GenerationRequest("a blue star", n=2, seed=11)], 64, FAST).images[0]
    batch = tiny_pipeline.generate(
        [
            GenerationRequest("a green square", n=1, seed=4),
            GenerationRequest("a blue star", n=2, seed=11),
            GenerationRequest("a blue star", n=1, seed=12),
        ],
        64,
        FAST,
    )
    together = batch.images[1]
    assert alone is not None and together is not None
    # Same rows, same noise; only BLAS summation order may differ with the batch size.
    assert np.abs(alone.astype(int) - together.astype(int)).max() <= 2
    other = batch.images[2]
    # Another seed, other noise. Random v-prediction networks output v = 0 (zero-initialised last
    # layer), which pulls every sample toward gray, so seeds differ by ~1 level, not by much.
    assert other is not None and np.abs(alone[0].astype(int) - other[0].astype(int)).mean() > 0.5


def test_image_embeds_replace_the_prior(tiny_pipeline: UnclipPipeline) -> None:
    """Decoding from given embeddings skips the prior; given the prior's own samples it reproduces
    the whole chain's images."""
    requests = [GenerationRequest("a purple triangle", seed=1), GenerationRequest("an orange circle", seed=2)]
    chain = tiny_pipeline.generate(requests, 64, FAST)
    text = tiny_pipeline.encode_text([r.prompt for r in requests])
    rows = [(0, 0), (1, 0)]
    embeds = tiny_pipeline._sample_prior(requests, rows, text, FAST.prior, lambda step, total: None)
    given = tiny_pipeline.generate(requests, 64, FAST, image_embeds=embeds)
    assert set(given.timings) == {"clip", "decoder"}
    for x, y in zip(chain.images, given.images, strict=True):
        assert x is not None and y is not None and np.array_equal(x, y)
    with pytest.raises(ValueError, match="image_embeds"):
        tiny_pipeline.generate(requests, 64, FAST, image_embeds=embeds[:1])


def test_precomputed_text_equals_encoding_inside(tiny_pipeline: UnclipPipeline) -> None:
    requests = [GenerationRequest("a purple triangle", seed=1), GenerationRequest("an orange circle", seed=2)]
    text = tiny_pipeline.encode_text([r.prompt for r in requests])
    a = tiny_pipeline.generate(requests, 64, FAST)
    b = tiny_pipeline.generate(requests, 64, FAST, text=text)
    for x, y in zip(a.images, b.images, strict=True):
        assert x is not None and y is not None and np.array_equal(x, y)


def test_canceled_request_is_dropped_and_others_unharmed(tiny_pipeline: UnclipPipeline) -> None:
    requests = [GenerationRequest("a red circle", seed=1), GenerationRequest("a blue square", seed=2)]
    reference = tiny_pipeline.generate(requests, 64, FAST)
    calls: list[tuple[str, int, int]] = []
    out = tiny_pipeline.generate(
        requests,
        64,
        FAST,
        progress=lambda *a: calls.append(a),
        canceled=lambda: {0} if len(calls) > 2 else set(),
    )
    assert out.images[0] is None
    assert out.images[1] is not None and reference.images[1] is not None
    assert np.abs(out.images[1].astype(int) - reference.images[1].astype(int)).max() <= 2
    assert ("clip", 1, 1) in calls and ("decoder", 2, 2) in calls


def test_all_canceled_stops_early(tiny_pipeline: UnclipPipeline) -> None:
    calls: list[tuple[str, int, int]] = []
    out = tiny_pipeline.generate(
        [GenerationRequest("a red circle")],
        256,
        FAST,
        progress=lambda *a: calls.append(a),
        canceled=lambda: {0},
    )
    assert out.images == [None]
    assert all(stage != "sr256" for stage, _, _ in calls)


def test_bfloat16_runs(tiny_pipeline: UnclipPipeline) -> None:
    bf16 = UnclipPipeline.random("tiny", seed=0, dtype="bfloat16")
    out = bf16.generate([GenerationRequest("a yellow star", seed=5)], 64, FAST)
    assert out.images[0] is not None and out.images[0].shape == (1, 64, 64, 3)
