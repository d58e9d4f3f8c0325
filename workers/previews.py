"""Live previews: a job's current prediction of its images (x̂_0) as one small PNG strip.

Made only for jobs that someone streams with ``?previews=1`` (``workers.progress.ProgressWriter``
checks who listens at its throttled rate), so a batch nobody watches pays nothing for them.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import torch
import torch.nn.functional as F

from contract.storage import encode_png
from models.pipeline import to_uint8_images

MAX_SIDE = 128  # each image of the strip at most this many pixels a side
MAX_IMAGES = 10  # a job's first images, side by side


def preview_png(pred_xstart: torch.Tensor, rows: range) -> bytes:
    """The rows ``rows`` of x̂_0 [N x 3 x H x W] in [-1, 1] as a PNG strip [h x (k·h) x 3], h ≤ MAX_SIDE."""
    x = pred_xstart[rows.start : rows.stop][:MAX_IMAGES].detach().float()  # [k x 3 x H x W]
    if x.shape[-1] > MAX_SIDE:
        x = F.interpolate(x, size=(MAX_SIDE, MAX_SIDE), mode="bilinear", antialias=True, align_corners=False)
    images = to_uint8_images(x)  # [k x h x h x 3]
    return encode_png(np.concatenate(list(images), axis=1))  # [h x k·h x 3]


def preview_record(png: bytes, progress: dict[str, object], seq: int) -> str:
    """What the events route reads: where the chain was, a counter, the PNG as base64."""
    return json.dumps({**progress, "seq": seq, "image": base64.b64encode(png).decode()})
