"""contract.uploads: what an uploaded image or mask must be, checked before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract.uploads import MAX_UPLOAD_BYTES, UploadRefused, edit_mask, open_image, stored_png


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def rgb(width: int, height: int, color: tuple[int, int, int] = (200, 0, 0)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def refused(data: bytes, **options: bool) -> UploadRefused:
    with pytest.raises(UploadRefused) as caught:
        open_image(data, "image", **options)
    return caught.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_are_centre_cropped_to_a_square(fmt: str) -> None:
    image = Image.new("RGB", (90, 60), (0, 0, 255))
    image.paste((255, 0, 0), (15, 0, 75, 60))  # the centre 60x60 is red
    checked = open_image(encode(image, fmt), "image")
    assert checked.side == 60 and checked.image.size == (60, 60)
    assert np.asarray(checked.image)[30, 30, 0] > 200 and np.asarray(checked.image)[30, 30, 2] < 50


def test_refusals_name_the_rule() -> None:
    assert refused(b"").code == "invalid_image"
    assert refused(b"GIF89a" + b"\0" * 100).code == "invalid_image"
    gif = encode(Image.new("P", (8, 8)), "GIF")
    assert (refused(gif).status, refused(gif).code) == (415, "unsupported_image")
    png = encode(rgb(64, 64))
    assert refused(png[: len(png) // 2]).code == "invalid_image"  # truncated
    assert refused(b"x" * (MAX_UPLOAD_BYTES + 1)).status == 413
    assert refused(encode(rgb(64, 48)), square=True).code == "image_not_square"


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = encode(Image.new("1", (5000, 5000)))  # a few KB that declare 25 megapixels
    assert len(bomb) < 100_000
    error = refused(bomb)
    assert (error.status, error.code) == (413, "image_too_large")


def test_stored_copy_is_rgb_and_at_most_1024() -> None:
    stored = Image.open(io.BytesIO(stored_png(rgb(2000, 2000))))
    assert stored.mode == "RGB" and stored.size == (1024, 1024)


def rgba(alpha: np.ndarray) -> Image.Image:
    pixels = np.zeros((*alpha.shape, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = alpha
    return Image.fromarray(pixels, mode="RGBA")


def test_the_mask_comes_from_transparency_or_a_separate_file() -> None:
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, 16:] = 0
    image = open_image(encode(rgba(alpha)), "image")
    own = np.asarray(Image.open(io.BytesIO(edit_mask(image, None))))
    assert own[:, 16:].min() == 255 and own[:, :16].max() == 0
    plain = open_image(encode(rgb(32, 32)), "image")
    white = np.zeros((32, 32), np.uint8)
    white[:8] = 255
    separate = open_image(encode(Image.fromarray(white, mode="L")), "mask")
    mask = np.asarray(Image.open(io.BytesIO(edit_mask(plain, separate))))
    assert mask[:8].min() == 255 and mask[8:].max() == 0


@pytest.mark.parametrize(
    ("alpha", "code"),
    [(np.full((32, 32), 255, np.uint8), "mask_empty"), (np.zeros((32, 32), np.uint8), "mask_full")],
)
def test_empty_and_full_masks_are_refused(alpha: np.ndarray, code: str) -> None:
    image = open_image(encode(rgb(32, 32)), "image")
    with pytest.raises(UploadRefused) as caught:
        edit_mask(image, open_image(encode(rgba(alpha)), "mask"))
    assert caught.value.code == code


def test_a_mask_of_another_size_and_a_missing_mask_are_refused() -> None:
    image = open_image(encode(rgb(32, 32)), "image")
    with pytest.raises(UploadRefused) as caught:
        edit_mask(image, open_image(encode(rgba(np.zeros((16, 16), np.uint8))), "mask"))
    assert caught.value.code == "mask_size_mismatch"
    with pytest.raises(UploadRefused) as caught:
        edit_mask(image, None)
    assert caught.value.code == "mask_missing"
