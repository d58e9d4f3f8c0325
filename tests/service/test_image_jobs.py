"""The image job kinds end to end: multipart over real HTTP (uvicorn), a real worker process on
the bundled model, a real Redis; and every bad input answered with a 4xx in the error shape."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from contract.settings import Settings
from models.evaluation.analysis import analyze
from tests.service.conftest import service_settings
from tests.workers.harness import wait_for

pytestmark = pytest.mark.slow
RED_CIRCLE = "a large red circle in the center on a white background"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return service_settings(
        tmp_path_factory,
        "img",
        weights=None,  # the bundled model: the analyser judges what it draws
        max_batch=16,
        max_wait_ms=100,
        require_api_keys=False,
    )


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def shape_render(color: tuple[int, int, int], square: bool = False, side: int = 64) -> np.ndarray:
    """A large shape in the center on white, drawn directly (no model)."""
    image = np.full((side, side, 3), 255, np.uint8)
    yy, xx = np.mgrid[:side, :side]
    half = side * 0.15
    inside = (
        (abs(yy - side / 2) < half) & (abs(xx - side / 2) < half)
        if square
        else (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < half**2
    )
    image[inside] = color
    return image


def post(api: str, route: str, files: dict[str, bytes], **fields: Any) -> httpx.Response:
    """A multipart/form-data POST (always multipart, even without a file part)."""
    parts: list[tuple[str, tuple[str | None, bytes | str, str | None]]] = [
        (name, (f"{name}.png", content, "image/png")) for name, content in files.items()
    ]
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            parts.append((name, (None, str(item), None)))
    if not parts:
        parts.append(("size", (None, "64x64", None)))
    return httpx.post(f"{api}{route}", files=parts, timeout=30)


def finished(api: str, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/jobs/{response.json()['id']}"
    job_id = response.json()["id"]

    def final() -> dict[str, Any] | None:
        job: dict[str, Any] = httpx.get(f"{api}/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    job: dict[str, Any] = wait_for(final, 180, 0.2, f"job {job_id}")
    assert job["status"] == "succeeded", job
    return job


def images(job: dict[str, Any]) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(httpx.get(i["url"], timeout=10).content))) for i in job["images"]
    ]


def test_variations_keep_the_source_color_and_shape(api: str) -> None:
    source = shape_render((220, 30, 30))
    job = finished(api, post(api, "/variations", {"image": png(source)}, n=3, size="64x64", seed=1))
    assert job["kind"] == "variation" and job["params"]["mode"] == "embedding"
    found = [analyze(image) for image in images(job)]
    assert len(found) == 3
    assert sum(a.color == "red" and a.shape == "circle" for a in found) >= 2, found


def test_inversion_at_strength_zero_gives_the_source_back(api: str) -> None:
    source = shape_render((30, 30, 220), square=True)
    job = finished(
        api,
        post(api, "/variations", {"image": png(source)}, mode="inversion", strength=0, size="64x64", seed=2),
    )
    (image,) = images(job)
    assert np.abs(image.astype(float) - source.astype(float)).mean() < 12.0


def test_interpolation_between_a_prompt_and_an_image_makes_frames_and_an_animation(api: str) -> None:
    response = post(
        api,
        "/interpolations",
        {"image_b": png(shape_render((30, 30, 220), square=True))},
        prompt_a=RED_CIRCLE,
        steps=4,
        size="64x64",
        seed=3,
        animation="webp",
    )
    job = finished(api, response)
    assert len(job["images"]) == 4 and "/animation.webp?expires=" in job["animation"]  # signed
    animation = httpx.get(job["animation"], timeout=10)
    assert animation.status_code == 200 and animation.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(animation.content)).n_frames == 2 * 4 - 2  # forth and back


def test_text_diff_and_edit_jobs_succeed(api: str) -> None:
    source = png(shape_render((220, 30, 30)))
    diff = finished(
        api,
        post(
            api,
            "/text-diffs",
            {"image": source},
            base="a red circle",
            target="a red square",
            angles=["0", "0.5"],
            size="64x64",
        ),
    )
    assert len(diff["images"]) == 2 and diff["params"]["angles"] == [0.0, 0.5]
    rgba = np.dstack([shape_render((220, 30, 30)), np.full((64, 64), 255, np.uint8)])
    rgba[:, 40:, 3] = 0  # the right part is to be repainted
    edit = finished(api, post(api, "/edits", {"image": png(rgba)}, prompt="a blue star", n=2, size="64x64"))
    for image in images(edit):
        kept = np.abs(image[:, :36].astype(float) - rgba[:, :36, :3].astype(float))
        assert kept.max() <= 1.0  # outside the mask: the source


BAD_PNG = png(shape_render((200, 0, 0)))


def huge_png_header() -> bytes:
    """A valid, tiny PNG that declares a 5000 x 5000 canvas (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("route", "files", "fields", "status", "code"),
    [
        ("/variations", {"image": b"not an image"}, {}, 422, "invalid_image"),
        ("/variations", {"image": BAD_PNG[: len(BAD_PNG) // 2]}, {}, 422, "invalid_image"),
        ("/variations", {"image": b"\x89PNG" + b"0" * (4 * 1024 * 1024 + 10)}, {}, 413, "image_too_large"),
        ("/variations", {"image": huge_png_header()}, {}, 413, "image_too_large"),
        ("/variations", {}, {}, 422, "missing_parameter"),
        ("/variations", {"image": BAD_PNG}, {"n": "11"}, 422, "invalid_parameter"),
        (
            "/variations",
            {"image": BAD_PNG},
            {"strength": "1.5", "mode": "inversion"},
            422,
            "invalid_parameter",
        ),
        ("/interpolations", {"image_a": BAD_PNG}, {"prompt_b": "x", "steps": "17"}, 422, "invalid_parameter"),
        ("/interpolations", {"image_a": BAD_PNG}, {"prompt_b": "x", "steps": "1"}, 422, "invalid_parameter"),
        ("/interpolations", {"image_a": BAD_PNG}, {}, 422, "invalid_parameter"),
        (
            "/text-diffs",
            {"image": BAD_PNG},
            {"base": "a red circle", "target": "a red  circle"},
            422,
            "invalid_parameter",
        ),
        ("/text-diffs", {"image": BAD_PNG}, {"target": "a square"}, 422, "missing_parameter"),
        ("/edits", {"image": png(np.zeros((64, 48, 3), np.uint8))}, {"prompt": "x"}, 422, "image_not_square"),
        ("/edits", {"image": BAD_PNG}, {"prompt": "x"}, 422, "mask_missing"),
        (
            "/edits",
            {"image": BAD_PNG, "mask": png(np.zeros((32, 32, 4), np.uint8))},
            {"prompt": "x"},
            422,
            "mask_size_mismatch",
        ),
        (
            "/edits",
            {"image": BAD_PNG, "mask": png(np.full((64, 64, 4), 255, np.uint8))},
            {"prompt": "x"},
            422,
            "mask_empty",
        ),
        (
            "/edits",
            {"image": BAD_PNG, "mask": png(np.zeros((64, 64, 4), np.uint8))},
            {"prompt": "x"},
            422,
            "mask_full",
        ),
        (
            "/edits",
            {"image": BAD_PNG, "mask": png(np.zeros((64, 64, 4), np.uint8))},
            {},
            422,
            "missing_parameter",
        ),
    ],
)
def test_bad_input_gets_its_4xx(
    api: str, route: str, files: dict[str, bytes], fields: dict[str, str], status: int, code: str
) -> None:
    response = post(api, route, files, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_json_to_a_multipart_route_is_415(api: str) -> None:
    response = httpx.post(f"{api}/variations", json={"n": 1}, timeout=10)
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"


def test_image_jobs_of_one_kind_share_a_batch_and_keep_their_seeds(api: str) -> None:
    """Two variation jobs queued behind a busy worker are sampled together, and each gives the
    images it gives alone (the row-seed rule holds for image-conditioned rows)."""
    source = png(shape_render((30, 160, 30)))
    alone = finished(api, post(api, "/variations", {"image": source}, n=1, size="64x64", seed=11))
    blocker = httpx.post(
        f"{api}/generate",
        json={"prompt": RED_CIRCLE, "size": "64x64", "steps": {"decoder": 120}},
        timeout=10,
    ).json()
    wait_for(
        lambda: httpx.get(f"{api}/jobs/{blocker['id']}", timeout=10).json()["status"] == "running",
        60,
        what="the blocker to start",
    )
    first = post(api, "/variations", {"image": source}, n=1, size="64x64", seed=11)
    second = post(api, "/variations", {"image": source}, n=2, size="64x64", seed=12)
    jobs = [finished(api, first), finished(api, second)]
    assert [job["batch_size"] for job in jobs] == [3, 3]
    # Same rows, same noise; only BLAS summation order may differ with the batch size.
    difference = np.abs(images(jobs[0])[0].astype(int) - images(alone)[0].astype(int))
    assert difference.max() <= 3, difference.max()
