"""Blank out a random subset of square patches (random patch masking).

Masking image patches is a common way to take away the visual evidence an answer depends on, so
that a model prompted with the masked image produces a less grounded (rejected) answer; it sits
next to POVID's diffusion noise (arXiv:2402.11411), mDPO's crops (arXiv:2406.11839) and STIC's
colour corruption (arXiv:2405.19716) as a content-removing corruption.

An ``H x W`` image is cut into a grid of ``R x Q`` patches of ``P x P`` pixels, ``R = ceil(H / P)``,
``Q = ceil(W / P)`` (the last row and column may be partial), ``N = R Q`` patches in all. Exactly::

    k = round(fraction * N)          (Python's round: halves go to the even integer)

patches, chosen uniformly without replacement, are set to ``fill``: a constant in ``[0, 1]`` or,
with ``fill="mean"``, each channel's mean over the unmasked image, ``(B, C, 1, 1)``.

The chosen patches come from ``Philox(key=derive_seed(seed, "patch_mask"))`` on the CPU (the
first ``k`` entries of a random permutation of the ``N`` patch indices, row-major), one generator
per image; the ``(B, R, Q)`` mask is then expanded to pixels and applied with one ``where`` on
the images' device.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from povidgen.distort.base import Distorter, pick
from povidgen.distort.philox import check_seeds
from povidgen.seeding import derive_seed

__all__ = ["PatchMask"]

Fill = float | Literal["mean"]


class PatchMask(Distorter):
    """Set ``round(fraction * n_patches)`` random ``patch_size`` patches to ``fill``.

    Args:
        fraction: the share of patches to blank, in ``[0, 1]``.
        patch_size: the patch side in pixels (a positive int); edge patches may be smaller.
        fill: a float in ``[0, 1]`` (0 = black), or ``"mean"`` for each image's channel means.
        severity: 1..5 picks ``fraction`` 0.1, 0.25, 0.4, 0.6, 0.8 unless ``fraction`` is
            given. Default 0.4.

    ``(B, C, H, W)`` in, ``(B, C, H, W)`` out; any channel count. See the module docstring.
    """

    name: ClassVar[str] = "patch_mask"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"fraction": 0.1},
        2: {"fraction": 0.25},
        3: {"fraction": 0.4},
        4: {"fraction": 0.6},
        5: {"fraction": 0.8},
    }

    def __init__(
        self,
        fraction: float | None = None,
        *,
        patch_size: int = 32,
        fill: Fill = 0.0,
        severity: int | None = None,
    ) -> None:
        fraction = pick("fraction", fraction, severity, self.SEVERITIES, 0.4)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"fraction must be a number, got {type(fraction).__name__}")
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int):
            raise TypeError(f"patch_size must be an int, got {type(patch_size).__name__}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}")
        if isinstance(fill, str):
            if fill != "mean":
                raise ValueError(f"fill must be a float in [0, 1] or 'mean', got {fill!r}")
        elif isinstance(fill, bool) or not isinstance(fill, int | float):
            raise TypeError(f"fill must be a float in [0, 1] or 'mean', got {fill!r}")
        elif not 0.0 <= fill <= 1.0:
            raise ValueError(f"fill must be a float in [0, 1] or 'mean', got {fill!r}")
        self.fraction = float(fraction)
        self.patch_size = patch_size
        self.fill: Fill = fill if isinstance(fill, str) else float(fill)

    def params(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "patch_size": self.patch_size, "fill": self.fill}

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid ``(rows, columns)`` of an ``height x width`` image."""
        return -(-height // self.patch_size), -(-width // self.patch_size)

    def patch_masks(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """``(B, rows, columns)`` bool CPU tensor, True for the patches each seed blanks."""
        rows, cols = self.grid(height, width)
        total = rows * cols
        count = round(self.fraction * total)
        masks = np.zeros((len(seeds), total), dtype=bool)
        for row, seed in enumerate(check_seeds(seeds, len(seeds))):
            rng = np.random.Generator(np.random.Philox(key=derive_seed(seed, self.name)))
            masks[row, rng.permutation(total)[:count]] = True
        return torch.from_numpy(masks.reshape(len(seeds), rows, cols))

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        _, _, height, width = images.shape
        size = self.patch_size
        patches = self.patch_masks(seeds, height, width).to(images.device)
        pixels = patches.repeat_interleave(size, dim=1).repeat_interleave(size, dim=2)
        pixels = pixels[:, None, :height, :width]  # (B, 1, H, W)
        if self.fill == "mean":
            fill = images.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        else:
            fill = torch.tensor(self.fill, dtype=images.dtype, device=images.device)
        return torch.where(pixels, fill, images)
