"""The OpenAI-compatible Images API with the real ``openai`` SDK (sync and async clients) over
real HTTP: uvicorn serving the app, a real worker process on the tiny model with random weights,
a real Redis, API keys on. Plain httpx sends the malformed multipart bodies the SDK never would.

OpenAI's sizes start at 256x256, so the generations ask for one or two steps per stage through
the ``steps`` extension; image content does not matter here, only shapes and the protocol.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from redis import Redis

from contract.api_keys import ApiKeyStore
from contract.keys import Keys
from contract.settings import Settings
from tests.service.conftest import service_settings
from tests.workers.harness import NO_GUIDANCE, ApiServer

pytestmark = pytest.mark.slow  # a worker process and uvicorn for the module

# One or two steps per stage: each size costs a fraction of a second on tiny random weights.
FAST = {"steps": {"prior": 1, "decoder": 2, "sr256": 1, "sr1024": 1}, "guidance": NO_GUIDANCE}
SIZES = ("256x256", "512x512", "1024x1024")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return service_settings(
        tmp_path_factory,
        "oai",
        request_timeout_s=120,
    )


@pytest.fixture(scope="module")
def client(api: str, token: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{api}/v1", api_key=token, timeout=120) as sdk:
        yield sdk


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_models_lists_the_served_model_and_its_alias(client: openai.OpenAI) -> None:
    assert {model.id for model in client.models.list()} == {"unclip", "dall-e-2"}
    assert client.models.retrieve("dall-e-2").owned_by == "unclip-service"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-image-9")
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("size", SIZES)
def test_generate_url_and_b64_json_at_every_size(
    client: openai.OpenAI, api: str, token: str, size: str
) -> None:
    side, n = int(size.split("x")[0]), 2 if size == "256x256" else 1
    # The second call names the first's Idempotency-Key: the same job answers in the other format
    # (response_format is not part of the job), so a size costs one generation.
    once = {"Idempotency-Key": f"gen-{uuid.uuid4().hex}"}
    extra = {**FAST, "seed": 11}
    by_url = client.images.generate(
        model="dall-e-2",
        prompt="a red circle",
        size=size,
        n=n,
        response_format="url",
        extra_body=extra,
        extra_headers=once,
    )

    async def b64() -> openai.types.ImagesResponse:
        async with openai.AsyncOpenAI(base_url=f"{api}/v1", api_key=token, timeout=120) as sdk:
            return await sdk.images.generate(
                model="dall-e-2",
                prompt="a red circle",
                size=size,
                n=n,
                response_format="b64_json",
                extra_body=extra,
                extra_headers=once,
            )

    by_b64 = asyncio.run(b64())
    assert by_url.created > 0 and by_b64.created == by_url.created
    assert len(by_url.data) == n and len(by_b64.data) == n
    for url_image, b64_image in zip(by_url.data, by_b64.data, strict=True):
        assert url_image.b64_json is None and b64_image.url is None
        assert url_image.url is not None and url_image.url.startswith(f"{api}/jobs/")
        assert "expires=" in url_image.url and "sig=" in url_image.url
        fetched = httpx.get(url_image.url, timeout=10)  # signed: no key needed
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert b64_image.b64_json is not None
        inline = base64.b64decode(b64_image.b64_json)
        assert decoded(inline).size == (side, side)
        assert inline == fetched.content


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's, for dall-e-2 variations
def test_create_variation(client: openai.OpenAI) -> None:
    source = Image.new("RGB", (96, 64), "white")  # centre-cropped to a square
    source.paste((200, 30, 30), (30, 10, 66, 46))
    result = client.images.create_variation(
        image=("circle.png", png(source), "image/png"),
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={"seed": 5},
    )
    assert len(result.data) == 2
    images = [decoded(base64.b64decode(item.b64_json or "")) for item in result.data]
    assert all(image.size == (256, 256) for image in images)
    assert images[0].tobytes() != images[1].tobytes()  # two variations, two noises


def test_edit_keeps_the_unmasked_region(api: str, token: str) -> None:
    source = Image.new("RGBA", (64, 64), (30, 160, 40, 255))
    source.paste((0, 0, 0, 0), (32, 0, 64, 64))  # the transparent right half is the region to edit

    async def edit() -> openai.types.ImagesResponse:
        async with openai.AsyncOpenAI(base_url=f"{api}/v1", api_key=token, timeout=120) as sdk:
            return await sdk.images.edit(
                image=("scene.png", png(source), "image/png"),
                prompt="a blue star on the right",
                size="256x256",
                response_format="url",
                extra_body={"seed": 3},
            )

    result = asyncio.run(edit())
    assert len(result.data) == 1 and result.data[0].url is not None
    image = decoded(httpx.get(result.data[0].url, timeout=10).content).convert("RGB")
    assert image.size == (256, 256)
    kept = image.crop((0, 0, 120, 256)).getcolors(256 * 256)  # the left half, away from the seam
    assert kept is not None and max(kept)[1] == pytest.approx((30, 160, 40), abs=3)


def test_bad_requests_are_bad_request_errors(client: openai.OpenAI, api: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a red circle", n=11)
    assert caught.value.code == "invalid_parameter" and caught.value.param == "n"
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a red circle", size="64x64")  # native only
    assert caught.value.param == "size"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a red circle", extra_body={"steps": {"decoder": 0}})
    assert caught.value.param == "steps.decoder"
    with (
        openai.OpenAI(base_url=f"{api}/v1", api_key="uk_nobody_wrong", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as denied,
    ):
        stranger.images.generate(prompt="a red circle")
    assert denied.value.code == "invalid_api_key"


@pytest.fixture
def idle(settings: Settings, redis: Redis) -> Iterator[tuple[str, str]]:
    """An API on a queue that no worker serves, which holds one waiting job at most and waits
    half a second for a job: its URL and an API key of its queue."""
    idle = settings.model_copy(
        update={
            "queue": f"idle-{uuid.uuid4().hex[:10]}",
            "max_queue_depth": 1,
            "openai_wait_s": 0.5,
            "retry_after_s": 1,
        }
    )
    token, _ = ApiKeyStore(redis, Keys(idle.key_prefix)).create("idle")
    with ApiServer(idle) as server:
        yield server.url, token


def test_a_job_past_the_wait_is_504_with_its_id_and_a_full_queue_is_rate_limited(
    idle: tuple[str, str],
) -> None:
    url, token = idle
    statuses: list[int] = []

    def count(response: Any) -> None:
        statuses.append(response.status_code)

    http = openai.DefaultHttpxClient(event_hooks={"response": [count]})
    with openai.OpenAI(base_url=f"{url}/v1", api_key=token, http_client=http) as sdk:
        with pytest.raises(openai.InternalServerError) as waited:
            sdk.images.generate(prompt="a red circle", size="256x256", extra_body=FAST)
        assert waited.value.status_code == 504 and waited.value.code == "timeout"
        assert statuses == [504]  # x-should-retry: false; the job goes on
        job_id = waited.value.body["job_id"]  # type: ignore[index]
        assert waited.value.response.headers["location"] == f"/jobs/{job_id}"
        job = httpx.get(f"{url}/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert job.json()["status"] == "queued" and job.json()["queue_position"] == 1
        # The queue holds its one waiting job: the next submit is refused, and again on each of the
        # SDK's two retries (it waits Retry-After between them).
        statuses.clear()
        with pytest.raises(openai.RateLimitError) as limited:
            sdk.images.generate(prompt="a red circle", size="256x256", extra_body=FAST)
        assert statuses == [429, 429, 429]
        assert limited.value.code == "queue_full"
        assert limited.value.body["type"] == "rate_limit_error"  # type: ignore[index]
        assert limited.value.response.headers["retry-after"] == "1"


SQUARE = png(Image.new("RGB", (32, 32), "white"))
WIDE = png(Image.new("RGB", (48, 32), "white"))
HOLED = Image.new("RGBA", (32, 32), "white")
HOLED.paste((0, 0, 0, 0), (0, 0, 16, 16))
GIF = io.BytesIO()
Image.new("RGB", (32, 32), "white").save(GIF, format="GIF")
RAW = {"content-type": "multipart/form-data; boundary=XYZ"}
NAMELESS = b"--XYZ\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--XYZ--\r\n"
GARBLED = b"--XYZ\r\nGarbage\r\n\r\nabc\r\n--XYZ--\r\n"  # a header line without a colon
TRUNCATED = b"--XYZ\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n\r\n" + SQUARE
# (route, request arguments for httpx, the answer's code, its param)
MALFORMED: dict[str, tuple[str, dict[str, Any], str, str | None]] = {
    "not multipart": ("variations", {"data": {"n": "1"}}, "unsupported_media_type", None),
    "no boundary": (
        "variations",
        {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},
        "invalid_multipart",
        None,
    ),
    "a part without a name": ("variations", {"content": NAMELESS, "headers": RAW}, "invalid_multipart", None),
    "a garbled part header": ("variations", {"content": GARBLED, "headers": RAW}, "invalid_multipart", None),
    # Starlette's parser drops a part whose closing boundary never comes.
    "no closing boundary": (
        "variations",
        {"content": TRUNCATED, "headers": RAW},
        "missing_parameter",
        "image",
    ),
    "no image": ("variations", {"files": {"n": (None, "1")}}, "missing_parameter", "image"),
    "image as text": ("variations", {"files": {"image": (None, "abc")}}, "invalid_parameter", "image"),
    "a file part of no field": (
        "variations",
        {"files": {"image": ("a.png", SQUARE), "other": ("b.png", SQUARE)}},
        "invalid_parameter",
        "other",
    ),
    "three files": (
        "edits",
        {"files": [("image", ("a.png", SQUARE)), ("mask", ("b.png", SQUARE)), ("mask", ("c.png", SQUARE))]},
        "too_many_parts",
        None,
    ),
    "not an image": (
        "variations",
        {"files": {"image": ("a.png", b"\x89PNG not really")}},
        "invalid_image",
        "image",
    ),
    "a GIF": ("variations", {"files": {"image": ("a.gif", GIF.getvalue())}}, "unsupported_image", "image"),
    "an unknown field": (
        "variations",
        {"files": {"image": ("a.png", SQUARE), "style": (None, "vivid")}},
        "invalid_parameter",
        "style",
    ),
    "n not a number": (
        "variations",
        {"files": {"image": ("a.png", SQUARE), "n": (None, "two")}},
        "invalid_parameter",
        "n",
    ),
    "a native size": (
        "variations",
        {"files": {"image": ("a.png", SQUARE), "size": (None, "64x64")}},
        "invalid_parameter",
        "size",
    ),
    "edit without prompt": (
        "edits",
        {"files": {"image": ("a.png", png(HOLED))}},
        "missing_parameter",
        "prompt",
    ),
    "edit of a wide image": (
        "edits",
        {"files": {"image": ("a.png", WIDE), "prompt": (None, "a star")}},
        "image_not_square",
        "image",
    ),
    "edit without transparency or mask": (
        "edits",
        {"files": {"image": ("a.png", SQUARE), "prompt": (None, "a star")}},
        "mask_missing",
        "mask",
    ),
    "mask of another size": (
        "edits",
        {
            "files": {
                "image": ("a.png", SQUARE),
                "mask": ("m.png", png(Image.new("RGBA", (16, 16)))),
                "prompt": (None, "a star"),
            }
        },
        "mask_size_mismatch",
        "mask",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_multipart_is_a_400_in_openais_shape(api: str, token: str, case: str) -> None:
    route, arguments, code, param = MALFORMED[case]
    auth = {"Authorization": f"Bearer {token}"}
    arguments = {**arguments, "headers": {**auth, **arguments.get("headers", {})}}
    response = httpx.post(f"{api}/v1/images/{route}", timeout=10, **arguments)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error == {
        "message": error["message"],
        "type": "invalid_request_error",
        "param": param,
        "code": code,
    }
    assert error["message"]


def test_the_native_routes_keep_their_own_error_shape(api: str, token: str) -> None:
    response = httpx.post(
        f"{api}/variations",
        files={"image": ("a.png", b"\x89PNG not really")},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "invalid_image",
            "message": "image: not a PNG, JPEG or WebP image",
            "param": "image",
        }
    }
