"""Colour jitter: random brightness, contrast, saturation and hue, as in torchvision.

STIC (Deng et al., 2024, arXiv:2405.19716) prompts the model with a corrupted image, colour
jitter among its corruptions, to obtain dispreferred image descriptions. This is torchvision's
``ColorJitter`` on float images, vectorised over the batch with one set of factors per item and
applied in a fixed order (torchvision shuffles the order per call)::

    b ~ U(max(0, 1 - brightness), 1 + brightness)     x <- clip(b x)
    c ~ U(max(0, 1 - contrast),   1 + contrast)       x <- clip(c x + (1 - c) mean(gray(x)))
    s ~ U(max(0, 1 - saturation), 1 + saturation)     x <- clip(s x + (1 - s) gray(x))
    d ~ U(-hue, hue)                                  x <- hsv2rgb((h + d) mod 1, s, v)

with ``gray(x) = 0.2989 R + 0.587 G + 0.114 B`` (ITU-R 601, torchvision's weights), ``mean`` over
all pixels of the item, and ``clip`` to ``[0, 1]`` after every step as torchvision does. Images
that do not have three channels get brightness and contrast only (``gray`` is then the mean of
the channels, the channel itself for grey images): saturation and hue are no-ops on them.

The factors ``(b, c, s, d)`` are drawn, always all four and in that order, on the CPU from
``Philox(key=derive_seed(seed, "color_jitter"))``, one generator per image; they are applied as
``(B, 1, 1, 1)`` tensors on the images' device.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from povidgen.distort.base import Distorter, pick
from povidgen.distort.philox import check_seeds
from povidgen.seeding import derive_seed

__all__ = ["ColorJitter", "hsv_to_rgb", "rgb_to_hsv"]

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _strength(name: str, value: Any, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= limit):
        raise ValueError(f"{name} must be in [0, {limit:g}], got {value!r}")
    return number


def _gray(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 1, H, W)`` luma (601 weights for RGB, channel mean otherwise)."""
    if images.shape[1] == 3:
        r, g, b = images.unbind(dim=1)
        return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)
    return images.mean(dim=1, keepdim=True)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> HSV, each channel in ``[0, 1]`` (hue in turns)."""
    r, g, b = images.unbind(dim=1)
    maxc = images.amax(dim=1)
    minc = images.amin(dim=1)
    flat = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    saturation = chroma / torch.where(flat, ones, maxc)
    divisor = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack([hue, saturation, maxc], dim=1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` HSV (hue in turns) -> RGB in ``[0, 1]``; inverse of :func:`rgb_to_hsv`."""
    h, s, v = images.unbind(dim=1)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = torch.remainder(sector, 6.0)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    table = (  # (R, G, B) for sectors 0..5
        (v, t, p),
        (q, v, p),
        (p, v, t),
        (p, q, v),
        (t, p, v),
        (v, p, q),
    )
    channels = []
    for channel in range(3):
        out = table[5][channel]
        for index in range(4, -1, -1):
            out = torch.where(sector == index, table[index][channel], out)
        channels.append(out)
    return torch.stack(channels, dim=1)


class ColorJitter(Distorter):
    """Random brightness, contrast, saturation and hue per image (STIC-style colour corruption).

    Args:
        brightness: ``b >= 0``; the factor is uniform in ``[max(0, 1 - b), 1 + b]``.
        contrast: ``c >= 0``; likewise.
        saturation: ``s >= 0``; likewise (no-op for images without three channels).
        hue: ``0 <= h <= 0.5``; the hue shift is uniform in ``[-h, h]`` turns (no-op likewise).
        severity: 1..5 picks ``(brightness, contrast, saturation, hue)`` from (0.1, 0.1, 0.1,
            0.02), (0.2, 0.2, 0.2, 0.05), (0.4, 0.4, 0.4, 0.1), (0.6, 0.6, 0.6, 0.2),
            (0.8, 0.8, 0.8, 0.3) for the settings not given. Default (0.4, 0.4, 0.4, 0.1).

    ``(B, C, H, W)`` in, ``(B, C, H, W)`` out; see the module docstring for the maths. All four
    zero is the identity.
    """

    name: ClassVar[str] = "color_jitter"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.02},
        2: {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05},
        3: {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
        4: {"brightness": 0.6, "contrast": 0.6, "saturation": 0.6, "hue": 0.2},
        5: {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.3},
    }

    def __init__(
        self,
        brightness: float | None = None,
        contrast: float | None = None,
        saturation: float | None = None,
        hue: float | None = None,
        *,
        severity: int | None = None,
    ) -> None:
        table = self.SEVERITIES
        self.brightness = _strength(
            "brightness", pick("brightness", brightness, severity, table, 0.4), math.inf
        )
        self.contrast = _strength(
            "contrast", pick("contrast", contrast, severity, table, 0.4), math.inf
        )
        self.saturation = _strength(
            "saturation", pick("saturation", saturation, severity, table, 0.4), math.inf
        )
        self.hue = _strength("hue", pick("hue", hue, severity, table, 0.1), 0.5)

    def params(self) -> dict[str, Any]:
        return {
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
        }

    def factors(self, seeds: list[int]) -> list[tuple[float, float, float, float]]:
        """The ``(brightness, contrast, saturation, hue shift)`` drawn for each seed."""
        out = []
        for seed in check_seeds(seeds, len(seeds)):
            rng = np.random.Generator(np.random.Philox(key=derive_seed(seed, self.name)))
            b, c, s = (
                float(rng.uniform(max(0.0, 1.0 - k), 1.0 + k))
                for k in (self.brightness, self.contrast, self.saturation)
            )
            out.append((b, c, s, float(rng.uniform(-self.hue, self.hue))))
        return out

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        batch = images.shape[0]
        drawn = torch.tensor(self.factors(seeds), dtype=images.dtype).to(images.device)
        b, c, s, d = (drawn[:, k].view(batch, 1, 1, 1) for k in range(4))
        x = images
        if self.brightness > 0:
            x = (x * b).clamp_(0.0, 1.0)
        if self.contrast > 0:
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (c * x + (1.0 - c) * mean).clamp_(0.0, 1.0)
        if x.shape[1] != 3:
            return x
        if self.saturation > 0:
            x = (s * x + (1.0 - s) * _gray(x)).clamp_(0.0, 1.0)
        if self.hue > 0:
            hsv = rgb_to_hsv(x)
            hue = torch.remainder(hsv[:, :1] + d, 1.0)
            x = hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))
        return x
