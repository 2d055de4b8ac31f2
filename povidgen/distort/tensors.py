"""Moving images between their user-facing kinds and the float tensors distorters work on.

Every distorter works on float32 tensors ``(B, C, H, W)`` with values in ``[0, 1]``. This module
turns the kinds users hold into that form and back, keeping the *mode family*:

==================  ===========================================  ==============================
input               distorted channels                           output
==================  ===========================================  ==============================
PIL ``1``, ``L``    one grey channel                             ``L``
PIL ``LA``          grey; alpha kept as it is                    ``LA``
PIL ``P`` / ``PA``  RGB (RGBA with transparency)                 ``RGB`` / ``RGBA``
PIL ``RGB``         three channels                               ``RGB``
PIL ``RGBA``        RGB; alpha kept as it is                     ``RGBA``
PIL ``CMYK``        four ink channels                            ``CMYK``
PIL ``I;16*``/``I``  one channel, 16-bit range (``/ 65535``)     same mode
PIL ``F``           one channel, taken as ``[0, 1]``             ``F``
uint8 ndarray       ``(H, W)``, ``(H, W, C)``; ``C = 2 / 4``:     uint8, same shape
                    the last channel is alpha, kept
float tensor        ``(C, H, W)`` or ``(B, C, H, W)``, any device  same shape, dtype, device
==================  ===========================================  ==============================

EXIF metadata (orientation included), ICC profiles and DPI are copied to the output, so the
distorted image displays the same way as the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from povidgen.errors import DistortionError

__all__ = ["SUPPORTED_MODES", "Unpacked", "unpack"]

SUPPORTED_MODES = (
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "CMYK",
    "I;16",
    "I;16L",
    "I;16B",
    "I",
    "F",
)
_KEPT_INFO = ("exif", "icc_profile", "dpi")

Repack = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class Unpacked:
    """An image as a ``(B, C, H, W)`` float32 tensor in ``[0, 1]``, and how to turn a distorted
    tensor of that shape back into the input's kind.

    ``levels`` is the number of integer levels of the source (256 for 8-bit, 65536 for 16-bit,
    ``None`` for float sources); overflow policies such as wrap-around use it.
    """

    tensor: torch.Tensor
    levels: int | None
    repack: Repack


def unpack(image: Any) -> Unpacked:
    """Turn a PIL image, a uint8 array or a float tensor into an :class:`Unpacked`."""
    if isinstance(image, Image.Image):
        return _unpack_pil(image)
    if isinstance(image, np.ndarray):
        return _unpack_array(image)
    if isinstance(image, torch.Tensor):
        return _unpack_tensor(image)
    raise DistortionError(
        "distorters take a PIL image, a uint8 numpy array or a float tensor (C, H, W) / "
        f"(B, C, H, W); got {type(image).__name__}"
    )


def _unpack_tensor(image: torch.Tensor) -> Unpacked:
    if not image.is_floating_point():
        raise DistortionError(
            f"tensor images must be floating point with values in [0, 1], got {image.dtype}; "
            "convert a uint8 tensor with image.float() / 255"
        )
    if image.dim() not in (3, 4) or image.shape[-1] == 0 or image.shape[-2] == 0:
        raise DistortionError(
            f"tensor images must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}"
        )
    batched = image.dim() == 4
    dtype = image.dtype
    tensor = (image if batched else image.unsqueeze(0)).to(torch.float32)

    def repack(result: torch.Tensor) -> torch.Tensor:
        result = result.to(dtype)
        return result if batched else result.squeeze(0)

    return Unpacked(tensor, None, repack)


def _unpack_array(image: np.ndarray[Any, Any]) -> Unpacked:
    if image.dtype != np.uint8:
        raise DistortionError(
            f"numpy images must be uint8, got {image.dtype}; pass floats as a torch tensor"
        )
    if image.ndim == 2:
        colour, alpha = image[None], None
    elif image.ndim == 3 and image.shape[2] in (1, 2, 3, 4):
        has_alpha = image.shape[2] in (2, 4)
        colour = np.moveaxis(image[..., :-1] if has_alpha else image, -1, 0)
        alpha = image[..., -1:] if has_alpha else None
    else:
        raise DistortionError(
            f"numpy images must be (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DistortionError(f"image has zero size {image.shape}")
    # np.array copies: user arrays may be read-only views, which torch.from_numpy warns about
    tensor = torch.from_numpy(np.array(colour, dtype=np.float32)).div_(255).unsqueeze(0)

    def repack(result: torch.Tensor) -> np.ndarray[Any, Any]:
        out: np.ndarray[Any, Any] = _to_integers(result[0], 255).numpy().astype(np.uint8)
        if image.ndim == 2:
            grey: np.ndarray[Any, Any] = out[0]
            return grey
        out = np.moveaxis(out, 0, -1)
        if alpha is not None:
            out = np.concatenate([out, alpha], axis=-1)
        return out

    return Unpacked(tensor, 256, repack)


def _unpack_pil(image: Image.Image) -> Unpacked:
    if image.width == 0 or image.height == 0:
        raise DistortionError(f"image has zero size {image.size}")
    original = image
    mode = image.mode
    if mode == "1":
        image, mode = image.convert("L"), "L"
    elif mode in ("P", "PA"):
        mode = "RGBA" if mode == "PA" or "transparency" in image.info else "RGB"
        image = image.convert(mode)
    if mode not in SUPPORTED_MODES:
        raise DistortionError(
            f"cannot distort images of mode {original.mode!r}; supported modes: "
            f"{', '.join(SUPPORTED_MODES)} (convert others with image.convert('RGB'))"
        )
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    alpha = pixels[..., -1:] if mode in ("LA", "RGBA") else None
    colour = pixels[..., :-1] if alpha is not None else pixels
    if mode == "F":
        top, levels = 1.0, None
    elif mode.startswith("I"):
        if mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
            raise DistortionError(
                "mode 'I' images are taken as 16-bit, but this one has values in "
                f"[{pixels.min()}, {pixels.max()}]"
            )
        top, levels = 65535.0, 65536
    else:
        top, levels = 255.0, 256
    colour_chw = np.array(np.moveaxis(colour, -1, 0), dtype=np.float32)  # a writable copy
    tensor = torch.from_numpy(colour_chw).div_(top).unsqueeze(0)

    def repack(result: torch.Tensor) -> Image.Image:
        channels = result[0]
        if levels is None:
            out = Image.fromarray(channels[0].numpy().astype(np.float32), mode="F")
        else:
            values = np.moveaxis(_to_integers(channels, int(top)).numpy(), 0, -1)
            if alpha is not None:
                values = np.concatenate([values, alpha.astype(values.dtype)], axis=-1)
            out = _from_integers(values, mode, pixels.dtype)
        for key in _KEPT_INFO:
            if key in original.info:
                out.info[key] = original.info[key]
        return out

    return Unpacked(tensor, levels, repack)


def _to_integers(values: torch.Tensor, top: int) -> torch.Tensor:
    """``[0, 1]`` floats to ``0..top`` integers, rounding to nearest."""
    return values.clamp(0.0, 1.0).mul(top).round_().to(torch.int32)


def _from_integers(values: np.ndarray[Any, Any], mode: str, dtype: np.dtype[Any]) -> Image.Image:
    if mode.startswith("I;16"):
        result = Image.new(mode, (values.shape[1], values.shape[0]))
        result.frombytes(values[..., 0].astype(dtype).tobytes())
        return result
    if mode == "I":
        return Image.fromarray(values[..., 0].astype(np.int32), mode="I")
    if values.shape[-1] == 1:
        values = values[..., 0]
    return Image.fromarray(values.astype(np.uint8), mode=mode)
