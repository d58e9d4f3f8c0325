"""The super-resolution UNets (guided-diffusion's ``SuperResModel``).

The low-resolution image is upsampled (bilinear) to the noised image's size and concatenated on
channels; otherwise this is the plain UNet with no attention and no text. The 64→256 and 256→1024
upsamplers differ only in config. Being fully convolutional, they train on random crops (¼ of the
target side) and sample at full size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from models.unet import UNetModel


class SuperResUNet(UNetModel):
    """A UNet conditioned on a low-resolution image (``config.low_res_channels`` = 3)."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        low_res: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """
        :param x: [N x 3 x H x W] noised high-resolution images (or crops).
        :param timesteps: [N] timesteps.
        :param low_res: [N x 3 x h x w] the (corrupted) low-resolution image, or the matching crop of it.
        :param kwargs: passed to :meth:`UNetModel.forward`; guidance flags (``drop_*``) are ignored.
        :return: [N x out x H x W].
        """
        if low_res is None:
            raise ValueError("SuperResUNet needs low_res")
        kwargs.pop("drop_clip", None)
        kwargs.pop("drop_text", None)
        upsampled = F.interpolate(
            low_res.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=False
        )  # [N x 3 x H x W]
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, **kwargs)
