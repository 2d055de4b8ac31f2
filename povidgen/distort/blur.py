"""Gaussian blur: wipe out fine detail (small text, textures, thin objects) while keeping layout.

The image is convolved with a normalised, separable Gaussian kernel of standard deviation
``sigma = radius`` pixels, truncated at ``h = ceil(3 sigma)``::

    g[k] = exp(-k^2 / (2 sigma^2)) / sum_{|j| <= h} exp(-j^2 / (2 sigma^2)),   |k| <= h
    y    = g_cols * (g_rows * x)

Borders are reflected without repeating the edge pixel (``... x2 x1 | x0 x1 x2 ...``, like
``numpy.pad(mode="reflect")``), repeatedly for images smaller than the kernel. The rows and the
columns are each one grouped ``conv2d`` (``groups=C``) over the whole ``(B, C, H, W)`` batch.
This is close to, but not bit-identical with, PIL's ``ImageFilter.GaussianBlur(radius)``.

Blurring the image is one of the image corruptions of STIC (arXiv 2405.19716) and of the
image-weakening baselines in BPO (arXiv 2403.08730) and mDPO (arXiv 2406.11839); it plays the
role POVID's diffusion noise (arXiv 2402.11411) plays, making the model lean on its language
prior. The blur is deterministic: seeds are accepted and ignored.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812

from povidgen.distort.base import Distorter, pick

__all__ = ["GaussianBlur", "gaussian_kernel", "reflect_indices"]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian kernel, ``(2 h + 1,)`` float32 with ``h = ceil(3 sigma)``.

    ``sigma = 0`` gives the identity kernel ``[1.0]``.
    """
    if sigma == 0:
        return torch.ones(1, dtype=torch.float32)
    half = math.ceil(3.0 * sigma)
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    weights = torch.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return (weights / weights.sum()).to(torch.float32)


def reflect_indices(length: int, half: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices ``(length + 2 half,)`` into a dimension of ``length`` that pad it by ``half`` on
    both sides with reflection (edge pixel not repeated), for any ``half``."""
    index = torch.arange(-half, length + half, device=device)
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    index = torch.remainder(index, period)
    return torch.where(index >= length, period - index, index)


class GaussianBlur(Distorter):
    """Separable Gaussian blur with ``sigma = radius`` pixels (see the module docstring).

    Works on ``(B, C, H, W)`` float32 batches on any device and returns the same shape; the
    output of a batch item does not depend on its seed or its neighbours.

    Args:
        radius: the Gaussian's standard deviation in pixels, a finite number ``>= 0`` (0 leaves
            the image unchanged); defaults to 2.
        severity: 1..5 picks ``radius`` 1, 2, 3, 5, 8 unless ``radius`` is given.
    """

    name: ClassVar[str] = "gaussian_blur"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"radius": 1},
        2: {"radius": 2},
        3: {"radius": 3},
        4: {"radius": 5},
        5: {"radius": 8},
    }

    def __init__(self, radius: float | None = None, *, severity: int | None = None) -> None:
        value = pick("radius", radius, severity, self.SEVERITIES, 2)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"radius must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"radius must be a finite number >= 0, got {value!r}")
        self.radius = float(value)
        """The Gaussian's standard deviation, in pixels."""
        self.kernel = gaussian_kernel(self.radius)
        """The 1-D kernel ``(2 h + 1,)``, float32 on the CPU."""

    def params(self) -> dict[str, Any]:
        return {"radius": self.radius}

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        del seeds  # deterministic
        channels, height, width = images.shape[1:]
        taps = self.kernel.numel()
        if taps == 1:
            return images.clone()
        half = taps // 2
        kernel = self.kernel.to(images.device)
        rows = kernel.view(1, 1, taps, 1).expand(channels, 1, taps, 1)
        cols = kernel.view(1, 1, 1, taps).expand(channels, 1, 1, taps)
        padded = images.index_select(2, reflect_indices(height, half, images.device))
        blurred = F.conv2d(padded, rows, groups=channels)
        padded = blurred.index_select(3, reflect_indices(width, half, images.device))
        return F.conv2d(padded, cols, groups=channels)
