"""Additive white Gaussian noise, the simplest image corruption for rejected answers.

For an image ``x`` with values in ``[0, 1]`` and a noise level ``sigma``::

    y = clamp(x + sigma * eps, 0, 1),      eps ~ N(0, I)

``eps`` is drawn independently for every channel, row and column from povidgen's
device-independent Philox noise (:mod:`povidgen.distort.philox`), so a seed gives the same image
on the CPU and on a GPU, alone or in a batch. Unlike POVID's forward diffusion
(:class:`~povidgen.distort.diffusion.DiffusionNoise`, arXiv 2402.11411) the signal is not
scaled down: ``sigma`` is the standard deviation of the noise in pixel units (``0.08`` is about
20 grey levels of an 8-bit image). Pixel-noise corruptions of this kind appear among the
image-weakening baselines of BPO (arXiv 2403.08730) and mDPO (arXiv 2406.11839) and among STIC's
corruptions (arXiv 2405.19716).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from povidgen.distort.base import Distorter, pick
from povidgen.distort.philox import affine_noise

__all__ = ["GaussianNoise"]


class GaussianNoise(Distorter):
    """Additive Gaussian noise ``x + sigma * eps`` (see the module docstring).

    Works on ``(B, C, H, W)`` float32 batches; item ``i`` draws its ``C * H * W`` normals from
    ``seeds[i]`` (the same values :func:`povidgen.distort.philox.gaussian_noise` returns for that
    seed and shape). The result is clamped to ``[0, 1]`` by :meth:`finish`.

    Args:
        sigma: the noise's standard deviation in pixel units (values in ``[0, 1]``), a finite
            number ``>= 0``; defaults to ``0.08``.
        severity: 1..5 picks ``sigma`` 0.04, 0.08, 0.12, 0.18, 0.26 unless ``sigma`` is given.
    """

    name: ClassVar[str] = "gaussian_noise"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"sigma": 0.04},
        2: {"sigma": 0.08},
        3: {"sigma": 0.12},
        4: {"sigma": 0.18},
        5: {"sigma": 0.26},
    }

    def __init__(self, sigma: float | None = None, *, severity: int | None = None) -> None:
        value = pick("sigma", sigma, severity, self.SEVERITIES, 0.08)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"sigma must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"sigma must be a finite number >= 0, got {value!r}")
        self.sigma = float(value)
        """The standard deviation of the added noise, in pixel units."""

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        # 1 * x + sigma * eps with the Philox noise of philox.gaussian_noise; fused on CUDA
        return affine_noise(images, seeds, 1.0, self.sigma, mode=0)
