"""Uploaded images and masks: checked before anything is decoded, normalised for the worker.

The rules (each refusal an :class:`UploadRefused` the API answers with a 4xx in its error shape):
PNG, JPEG or WebP only; at most ``MAX_UPLOAD_BYTES``; at most ``MAX_SIDE`` pixels a side and
``MAX_PIXELS`` in all, read from the header before decoding (decompression bombs: a small file
can declare a huge canvas); fully decodable (a truncated file is refused, not half-read).
Images that need not be square are centre-cropped; the stored copy is an RGB PNG no larger than
``STORED_SIDE`` (the chain's largest output). A mask is a PNG whose transparent pixels (alpha
below 128) mark the region to repaint, as in OpenAI's edits API; a mask without alpha marks it
white (luminance 128 and up).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES = 4 * 1024 * 1024
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
STORED_SIDE = 1024
FORMATS = ("PNG", "JPEG", "WEBP")


class UploadRefused(Exception):
    """An upload that breaks a rule: ``status`` (413/415/422), a code, a message, the field."""

    def __init__(self, status: int, code: str, message: str, param: str):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass(frozen=True)
class CheckedImage:
    image: Image.Image  # decoded, RGBA if the file had transparency, else RGB
    side: int  # after the centre crop: the square's side


def open_image(
    data: bytes,
    param: str,
    *,
    square: bool = False,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> CheckedImage:
    """Check and decode one upload; centre-crop it to a square unless ``square`` requires one."""
    if not data:
        raise UploadRefused(422, "invalid_image", f"{param}: the file is empty", param)
    if len(data) > max_bytes:
        raise UploadRefused(
            413, "image_too_large", f"{param}: {len(data)} bytes; the limit is {max_bytes}", param
        )
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError):
        raise UploadRefused(422, "invalid_image", f"{param}: not a PNG, JPEG or WebP image", param) from None
    if image.format not in FORMATS:
        raise UploadRefused(
            415,
            "unsupported_image",
            f"{param}: {image.format} images are not accepted (PNG, JPEG, WebP)",
            param,
        )
    width, height = image.size  # from the header: nothing is decoded yet
    if width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels:
        raise UploadRefused(
            413,
            "image_too_large",
            f"{param}: {width}x{height} pixels; at most {MAX_SIDE} a side and {max_pixels} in all",
            param,
        )
    if square and width != height:
        raise UploadRefused(422, "image_not_square", f"{param}: {width}x{height}; it must be square", param)
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise UploadRefused(
            422, "invalid_image", f"{param}: the file is truncated or corrupt", param
        ) from None
    image = ImageOps.exif_transpose(image) or image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    image = image.convert("RGBA" if has_alpha else "RGB")
    side = min(image.size)
    if image.size != (side, side):
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return CheckedImage(image, side)


def stored_png(image: Image.Image) -> bytes:
    """The RGB copy the worker reads: at most ``STORED_SIDE`` a side (Lanczos), PNG."""
    rgb = image.convert("RGB")
    if rgb.width > STORED_SIDE:
        rgb = rgb.resize((STORED_SIDE, STORED_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def edit_mask(image: CheckedImage, mask: CheckedImage | None, param: str = "mask") -> bytes:
    """The repaint mask as an L-mode PNG (255 = repaint) at the stored image's size.

    From ``mask`` when given (same size as the image required), else from the image's own
    transparency. Refuses a mask with nothing to repaint and one that repaints everything.
    """
    if mask is not None and mask.image.size != image.image.size:
        raise UploadRefused(
            422,
            "mask_size_mismatch",
            f"mask: {mask.image.width}x{mask.image.height} but the image is "
            f"{image.image.width}x{image.image.height}; they must be the same size",
            param,
        )
    source = mask.image if mask is not None else image.image
    if source.mode == "RGBA":
        alpha = source.getchannel("A")
        region = alpha.point(lambda a: 255 if a < 128 else 0)
    elif mask is not None:
        region = source.convert("L").point(lambda v: 255 if v >= 128 else 0)
    else:
        raise UploadRefused(
            422,
            "mask_missing",
            "give a mask, or an image whose transparent pixels mark where to edit",
            param,
        )
    lowest, highest = region.getextrema()
    if highest == 0:
        raise UploadRefused(422, "mask_empty", "the mask marks nothing to edit", param)
    if lowest == 255:
        raise UploadRefused(
            422, "mask_full", "the mask covers the whole image: nothing of it would be kept", param
        )
    if region.width > STORED_SIDE:
        region = region.resize((STORED_SIDE, STORED_SIDE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    region.convert("L").save(buffer, format="PNG")
    return buffer.getvalue()
