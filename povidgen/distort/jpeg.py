"""JPEG compression artefacts: blocking, ringing and colour bleeding at low quality.

Each image is rounded to 8 bits, encoded with Pillow's libjpeg at ``quality`` (1..95, chroma
subsampled 4:2:0 for colour images, baseline, standard tables) in memory, and decoded again::

    y = decode(encode(round(255 x), quality)) / 255

At low quality the 8x8 DCT blocks keep only their lowest frequencies, so textures and small
text turn into flat blocks and colours smear across object borders. Like the other
image-weakening corruptions (STIC, arXiv 2405.19716; BPO, arXiv 2403.08730; mDPO,
arXiv 2406.11839) it makes a model answer from its language prior, in the spirit of POVID's
diffusion noise (arXiv 2402.11411). The encoding is deterministic: seeds are accepted and
ignored.

JPEG only exists on the CPU: images on another device are copied to the CPU, encoded one at a
time, and the result is moved back to their device. Only 1-channel (grey) and 3-channel (RGB)
images can be encoded; alpha is kept aside by the base class.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from povidgen.distort.base import Distorter, pick
from povidgen.errors import DistortionError

__all__ = ["JPEGCompression"]

_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


class JPEGCompression(Distorter):
    """Encode and decode with JPEG at ``quality`` (see the module docstring).

    ``distort_batch`` takes ``(B, C, H, W)`` float32 with ``C`` 1 (grey), 3 (RGB) or 4 (CMYK,
    which JPEG stores natively) and returns the same shape, dtype and device; other channel
    counts raise :class:`DistortionError`.

    Args:
        quality: the libjpeg quality, an int in 1..95 (lower is worse); defaults to 15.
        severity: 1..5 picks ``quality`` 50, 30, 15, 8, 3 unless ``quality`` is given.
    """

    name: ClassVar[str] = "jpeg"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"quality": 50},
        2: {"quality": 30},
        3: {"quality": 15},
        4: {"quality": 8},
        5: {"quality": 3},
    }

    def __init__(self, quality: int | None = None, *, severity: int | None = None) -> None:
        value = pick("quality", quality, severity, self.SEVERITIES, 15)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 95:
            raise ValueError(f"quality must be an int from 1 to 95, got {value!r}")
        self.quality = value
        """The libjpeg quality setting, 1..95."""

    def params(self) -> dict[str, Any]:
        return {"quality": self.quality}

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        del seeds  # deterministic
        channels = images.shape[1]
        if channels not in _MODES:
            raise DistortionError(
                f"JPEG encodes 1 (grey), 3 (RGB) or 4 (CMYK) channels, got {channels}; "
                "convert the image to 'L' or 'RGB' first"
            )
        pixels = images.detach().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).cpu()
        decoded = np.stack([self._roundtrip(item.numpy()) for item in pixels])
        return torch.from_numpy(decoded).to(images.device, torch.float32).div_(255.0)

    def _roundtrip(self, item: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``(C, H, W)`` uint8 -> the same after a JPEG round trip at :attr:`quality`."""
        mode = _MODES[item.shape[0]]
        array = item[0] if mode == "L" else np.ascontiguousarray(np.moveaxis(item, 0, -1))
        buffer = io.BytesIO()
        image = Image.fromarray(array, mode=mode) if mode == "CMYK" else Image.fromarray(array)
        if mode == "RGB":
            image.save(buffer, format="JPEG", quality=self.quality, subsampling="4:2:0")
        else:
            image.save(buffer, format="JPEG", quality=self.quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out = np.asarray(decoded.convert(mode))
        return out[None] if mode == "L" else np.moveaxis(out, -1, 0)
