"""Downscale-then-upscale: STIC's "downsizing" corruption, a low-resolution copy of the image.

For an ``H x W`` image and a target ``size`` ``s``, the image is shrunk so that its longer side
is ``s`` pixels, keeping the aspect ratio::

    scale      = s / max(H, W)
    (h, w)     = (max(1, round(H * scale)), max(1, round(W * scale)))
    small      = resize(x, (h, w), antialias=True)       # area-weighted, no aliasing
    y          = resize(small, (H, W))                   # back to the original size

with ``F.interpolate(mode="bilinear", align_corners=False)`` (or ``"bicubic"``) for both steps.
The result has the input's size but only ``h x w`` pixels' worth of detail. Images whose longer
side is already at most ``s`` are returned unchanged.

STIC (arXiv 2405.19716) builds dispreferred responses from images corrupted this way (among
others); its image is shrunk to a few tens of pixels, so objects, counts and text become
unreadable and the model falls back on its language prior, much like POVID's diffusion noise
(arXiv 2402.11411) and the weakened images of BPO (arXiv 2403.08730) and mDPO (arXiv 2406.11839).
The operation is deterministic: seeds are accepted and ignored.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F  # noqa: N812

from povidgen.distort.base import Distorter, pick

__all__ = ["MODES", "Downscale", "downscaled_size"]

Mode = Literal["bilinear", "bicubic"]
MODES: tuple[str, ...] = ("bilinear", "bicubic")


def downscaled_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with ``max(h, w) == size`` (or the input size if it is already smaller) and
    the aspect ratio of ``(height, width)``, rounded half up, at least 1 pixel each."""
    longer = max(height, width)
    if longer <= size:
        return height, width
    scale = size / longer
    return max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5))


class Downscale(Distorter):
    """Shrink so the longer side is ``size`` px, then resize back (see the module docstring).

    Works on ``(B, C, H, W)`` float32 batches on any device, all items at once, and returns the
    same shape.

    Args:
        size: the longer side of the low-resolution copy, an int ``>= 1``; defaults to 20.
        severity: 1..5 picks ``size`` 112, 64, 32, 20, 12 unless ``size`` is given.
        mode: the interpolation of both resizes, ``"bilinear"`` (the default) or ``"bicubic"``
            (which can overshoot; :meth:`finish` clamps).
    """

    name: ClassVar[str] = "downscale"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"size": 112},
        2: {"size": 64},
        3: {"size": 32},
        4: {"size": 20},
        5: {"size": 12},
    }

    def __init__(
        self, size: int | None = None, *, severity: int | None = None, mode: Mode = "bilinear"
    ) -> None:
        value = pick("size", size, severity, self.SEVERITIES, 20)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"size must be an int >= 1, got {value!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.size = value
        """The longer side of the low-resolution copy, in pixels."""
        self.mode: Mode = mode

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "mode": self.mode}

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        del seeds  # deterministic
        height, width = images.shape[-2:]
        small_size = downscaled_size(height, width, self.size)
        if small_size == (height, width):
            return images.clone()
        small = F.interpolate(
            images, size=small_size, mode=self.mode, align_corners=False, antialias=True
        )
        return F.interpolate(small, size=(height, width), mode=self.mode, align_corners=False)
