"""mDPO's image corruption: keep a small random crop and blow it back up to full size.

mDPO (Wang et al., 2024, arXiv:2406.11839) builds the rejected side of its conditional preference
pairs by showing the model a corrupted image: a random crop keeping 0-20 % of the image, resized
back to the original size. With most of the content gone, an answer that was right about the full
image is no longer grounded in what the model sees.

For an image of ``H x W`` pixels and a seed, the box is drawn as in torchvision's
``RandomResizedCrop``, but in continuous pixel units (so tiny images still get a proper box)::

    a      ~ U(area_lo, area_hi)                 # fraction of the image kept
    log r  ~ U(log ratio_lo, log ratio_hi)       # aspect ratio w / h
    w      = sqrt(a H W r),   h = sqrt(a H W / r)
    if h > H:  h = H,  w = a H W / H             # clip, keeping the area
    if w > W:  w = W,  h = a H W / W
    top    ~ U(0, H - h),   left ~ U(0, W - w)

so ``h w = a H W`` exactly and the box always fits (clipping only bends the aspect ratio). The
box is then resampled to ``H x W`` with bilinear interpolation (``grid_sample``,
``align_corners=False``, border padding): output pixel ``(y, x)`` reads the input at::

    u = left + (x + 1/2) w / W - 1/2,     v = top + (y + 1/2) h / H - 1/2

(pixel-centre coordinates). The grid is built per item with broadcast arithmetic and the whole
batch is sampled in one ``grid_sample`` call on the images' device. The random numbers are drawn
on the CPU from ``Philox(key=derive_seed(seed, "random_resized_crop"))``, one generator per image,
so a seed gives the same box on every device and in every batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from povidgen.distort.base import Distorter, pick
from povidgen.distort.philox import check_seeds
from povidgen.seeding import derive_seed

__all__ = ["RandomResizedCrop"]

Box = tuple[float, float, float, float]


def _pair(name: str, value: Any, *, high: float) -> tuple[float, float]:
    """Validate a ``(lo, hi)`` pair of finite floats with ``0 < lo <= hi <= high``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise TypeError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi <= high):
        raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi <= {high:g}, got {value!r}")
    return lo, hi


class RandomResizedCrop(Distorter):
    """Keep a random crop of ``area`` of the image and resize it back (mDPO's corruption).

    Args:
        area: ``(lo, hi)``, the kept fraction of the image area is drawn from ``U(lo, hi)``,
            ``0 < lo <= hi <= 1``. mDPO uses ``(0.01, 0.2)``, the default.
        ratio: ``(lo, hi)``, the aspect ratio ``w / h`` is log-uniform in it, ``0 < lo <= hi``.
        severity: 1..5 picks ``area`` (0.5, 0.8), (0.3, 0.5), (0.2, 0.3), (0.05, 0.2),
            (0.01, 0.05) unless ``area`` is given.

    Works on any channel count; ``(B, C, H, W)`` in, ``(B, C, H, W)`` out. See the module
    docstring for the maths.
    """

    name: ClassVar[str] = "random_resized_crop"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"area": (0.5, 0.8)},
        2: {"area": (0.3, 0.5)},
        3: {"area": (0.2, 0.3)},
        4: {"area": (0.05, 0.2)},
        5: {"area": (0.01, 0.05)},
    }

    def __init__(
        self,
        area: Sequence[float] | None = None,
        *,
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        severity: int | None = None,
    ) -> None:
        chosen = pick("area", area, severity, self.SEVERITIES, (0.01, 0.2))
        self.area = _pair("area", chosen, high=1.0)
        self.ratio = _pair("ratio", ratio, high=math.inf)

    def params(self) -> dict[str, Any]:
        return {"area": list(self.area), "ratio": list(self.ratio)}

    def crop_boxes(self, seeds: Sequence[int], height: int, width: int) -> list[Box]:
        """The crop box of each seed for an ``height x width`` image.

        Returns one ``(top, left, h, w)`` per seed, floats in pixel units (edges, not centres):
        the box covers ``[top, top + h] x [left, left + w]`` with ``0 <= top``,
        ``top + h <= height``, ``0 <= left``, ``left + w <= width`` and
        ``h * w / (height * width)`` in ``area`` (up to float rounding).
        """
        for label, size in (("height", height), ("width", width)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{label} must be a positive int, got {size!r}")
        seed_list = check_seeds(list(seeds), len(seeds))
        total = float(height * width)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        boxes: list[Box] = []
        for seed in seed_list:
            rng = np.random.Generator(np.random.Philox(key=derive_seed(seed, self.name)))
            kept = float(rng.uniform(self.area[0], self.area[1])) * total
            aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
            h, w = math.sqrt(kept / aspect), math.sqrt(kept * aspect)
            if h > height:
                h, w = float(height), kept / height
            if w > width:
                w, h = float(width), kept / width
            h, w = min(h, float(height)), min(w, float(width))  # float rounding only
            top = float(rng.uniform(0.0, height - h))
            left = float(rng.uniform(0.0, width - w))
            boxes.append((top, left, h, w))
        return boxes

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        batch, _, height, width = images.shape
        boxes = torch.tensor(self.crop_boxes(seeds, height, width), dtype=torch.float64)
        top, left, h, w = boxes.unbind(dim=1)  # each (B,)
        # grid_sample's normalised coordinate of input pixel-centre position p in a size-n axis
        # is (2 p + 1) / n - 1; output pixel x maps to p = left + (x + 1/2) w / W - 1/2, so
        # g(x) = (2 left + (2 x + 1) w / W) / W - 1: an affine map per item, built in float64.
        xs = torch.arange(width, dtype=torch.float64).add_(0.5).mul_(2.0 / width)  # (W,)
        ys = torch.arange(height, dtype=torch.float64).add_(0.5).mul_(2.0 / height)  # (H,)
        gx = (2.0 * left[:, None] + xs[None, :] * w[:, None]) / width - 1.0  # (B, W)
        gy = (2.0 * top[:, None] + ys[None, :] * h[:, None]) / height - 1.0  # (B, H)
        grid = torch.stack(
            [
                gx[:, None, :].expand(batch, height, width),
                gy[:, :, None].expand(batch, height, width),
            ],
            dim=-1,
        )  # (B, H, W, 2), (x, y) order
        grid = grid.to(device=images.device, dtype=images.dtype)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
