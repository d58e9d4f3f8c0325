"""Live previews: the pipeline hands each step's x̂_0 to a preview hook, and the progress writer
turns it into a PNG strip only for jobs someone listens to (real Redis, the real tiny chain)."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator

import pytest
import torch
from PIL import Image
from redis import Redis

from contract.jobs import JobStore
from contract.schemas import GenerateRequest
from contract.settings import Settings
from models.configs import SamplingConfig, StageSampling
from models.pipeline import GenerationRequest, UnclipPipeline
from tests.conftest import TEST_REDIS_URL
from workers.progress import ProgressWriter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis() -> Iterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def store(redis: Redis, tmp_path_factory: pytest.TempPathFactory) -> JobStore:
    settings = Settings(
        redis_url=TEST_REDIS_URL,
        queue=f"prev-{uuid.uuid4().hex[:10]}",
        storage_dir=tmp_path_factory.mktemp("i"),
    )
    return JobStore(redis, settings)


def stored_preview(
    redis: Redis, store: JobStore, job_id: str
) -> tuple[dict[str, object], Image.Image] | None:
    raw = redis.get(store.keys.preview(job_id))
    if raw is None:
        return None
    record = json.loads(raw)
    return record, Image.open(io.BytesIO(base64.b64decode(record.pop("image"))))


def test_previews_are_written_only_for_jobs_someone_listens_to(store: JobStore, redis: Redis) -> None:
    jobs = [store.submit_request(GenerateRequest(prompt="p", n=n, seed=1)).job for n in (2, 1)]
    clock = Clock()
    writer = ProgressWriter(
        redis, jobs, {"decoder": 4}, clock=clock, keys=store.keys, rows=[range(0, 2), range(2, 3)]
    )
    x0 = torch.full((3, 3, 64, 64), -1.0)  # [rows x 3 x H x W]: black ...
    x0[2] = 1.0  # ... but the second job's one row is white
    writer("decoder", 1, 4)
    writer.preview("decoder", x0)
    assert writer.previews == 0  # nobody listens: not even a PNG is made
    assert (
        stored_preview(redis, store, jobs[0].id) is None and stored_preview(redis, store, jobs[1].id) is None
    )

    redis.set(store.keys.listening(jobs[1].id), 1, ex=5)  # a client streams job 1 with previews
    writer.preview("decoder", x0)
    assert writer.previews == 0  # the writer asks who listens only when it writes progress
    clock.now = 1.0
    writer("decoder", 2, 4)  # the progress write asks
    assert writer.listening == {1}
    writer.preview("decoder", x0)
    assert stored_preview(redis, store, jobs[0].id) is None
    found = stored_preview(redis, store, jobs[1].id)
    assert found is not None
    record, image = found
    assert record == {"stage": "decoder", "step": 2, "total": 4, "fraction": 0.5, "seq": 1}
    assert image.format == "PNG" and image.size == (64, 64) and image.getpixel((5, 5)) == (255, 255, 255)

    writer.preview("decoder", x0)  # throttled: as often as progress at most
    writer.preview("prior", torch.zeros(3, 32))  # the prior's embeddings are no picture
    clock.now = 2.0
    writer.preview("decoder", x0[:2])  # a member's rows were dropped: rows no longer line up
    assert writer.previews == 1
    writer.preview("sr256", torch.zeros(3, 3, 256, 256))
    found = stored_preview(redis, store, jobs[1].id)
    assert found is not None and found[0]["seq"] == 2 and found[1].size == (128, 128)  # scaled down


def test_a_preview_strip_holds_each_of_a_jobs_images(store: JobStore, redis: Redis) -> None:
    job = store.submit_request(GenerateRequest(prompt="p", n=3, seed=1)).job
    writer = ProgressWriter(redis, [job], {"decoder": 2}, clock=Clock(), keys=store.keys, rows=[range(0, 3)])
    redis.set(store.keys.listening(job.id), 1, ex=5)
    writer("decoder", 1, 2)
    x0 = torch.stack([torch.full((3, 64, 64), v) for v in (-1.0, 0.0, 1.0)])
    writer.preview("decoder", x0)
    found = stored_preview(redis, store, job.id)
    assert found is not None
    image = found[1]
    assert image.size == (192, 64)
    assert [image.getpixel((x, 10)) for x in (10, 74, 138)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_the_pipeline_hands_each_steps_x0_to_the_preview_hook() -> None:
    pipeline = UnclipPipeline.random("tiny")
    sampling = SamplingConfig(
        prior=StageSampling(steps=2, guidance=1.0),
        decoder=StageSampling(steps=3, guidance=1.0),
        sr256=StageSampling(steps=2),
    )
    seen: list[tuple[str, tuple[int, ...]]] = []
    last: dict[str, torch.Tensor] = {}

    def preview(stage: str, pred_xstart: torch.Tensor) -> None:
        seen.append((stage, tuple(pred_xstart.shape)))
        last[stage] = pred_xstart.clone()

    requests = [GenerationRequest("a red circle", n=2, seed=1)]
    output = pipeline.generate(requests, 256, sampling, preview=preview)
    assert [stage for stage, _ in seen] == ["prior"] * 2 + ["decoder"] * 3 + ["sr256"] * 2
    assert {shape for stage, shape in seen if stage == "prior"} == {
        (4, pipeline.config.prior.embed_dim)
    }  # 2 candidates an image
    assert {shape for stage, shape in seen if stage != "prior"} == {(2, 3, 64, 64), (2, 3, 256, 256)}
    # The last step's x̂_0 is the result (the last DDPM step adds no noise).
    assert output.images[0] is not None
    final = torch.from_numpy(output.images[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(last["sr256"].clamp(-1, 1), final, atol=1 / 127.5 + 1e-6)
