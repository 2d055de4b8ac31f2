"""Decoding image cells of any common kind and mode into RGB, with specific errors.

Dataset rows hold images as PIL objects, ``{"bytes", "path"}`` dicts (a ``datasets`` ``Image``
column read with ``decode=False``), file paths or raw bytes. :func:`open_image` decodes any of
them, fully (so truncated files fail here, not later); :func:`to_rgb` turns every common mode
(1, L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F) into upright 8-bit RGB, compositing
transparency onto white and honouring the EXIF orientation tag.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from povidgen.errors import ImageError

__all__ = ["SourceImage", "open_image", "to_rgb"]

_PASSTHROUGH_FORMATS = {"JPEG", "PNG", "WEBP"}


@dataclass(frozen=True)
class SourceImage:
    """A decoded RGB image and, when it needed no conversion, the bytes it was decoded from
    (so writers can store the original JPEG instead of re-encoding it)."""

    image: Image.Image
    encoded: bytes | None


def open_image(value: Any, *, image_folder: str | os.PathLike[str] | None = None) -> SourceImage:
    """Decode a dataset cell into an upright RGB :class:`SourceImage`.

    Accepts a PIL image, ``bytes``, a path (relative paths resolve against ``image_folder``),
    a ``{"bytes": ..., "path": ...}`` dict, or a one-element list of these. Raises
    :class:`povidgen.ImageError` naming the problem: missing value, missing file, undecodable
    or truncated data, several images in one row, or an unusable mode.
    """
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ImageError(
                f"expected one image per row, got {len(value)}; multi-image rows are not supported"
            )
        value = value[0]
    if value is None:
        raise ImageError("the row has no image")
    if isinstance(value, Image.Image):
        return SourceImage(to_rgb(value), None)

    data: bytes | None = None
    path: Path | None = None
    if isinstance(value, dict):
        if value.get("bytes"):
            data = bytes(value["bytes"])
        elif value.get("path"):
            path = Path(value["path"])
        else:
            raise ImageError("the image cell has neither bytes nor a path")
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str | os.PathLike):
        if not str(value).strip():
            raise ImageError("the image path is empty")
        path = Path(value)
    else:
        raise ImageError(f"cannot read an image from a value of type {type(value).__name__}")

    if path is not None:
        if not path.is_absolute() and image_folder is not None:
            path = Path(image_folder) / path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"image file not found: {path}") from None
        except OSError as error:
            raise ImageError(f"cannot read image file {path}: {error}") from error
    assert data is not None
    if not data:
        raise ImageError("the image data is empty (0 bytes)")

    image = _decode(data)
    rgb = to_rgb(image)
    keep_bytes = rgb is image and image.format in _PASSTHROUGH_FORMATS
    return SourceImage(rgb, data if keep_bytes else None)


def _decode(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # a decompression-bomb warning would be an error under strict warning filters;
            # PIL still raises DecompressionBombError for the truly absurd sizes
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now, so truncated data fails here
    except Image.DecompressionBombError as error:
        raise ImageError(f"image is too large to decode safely: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {error}") from error
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as upright 8-bit RGB; the same object when it already is.

    Transparency is composited onto white; 16- and 32-bit greyscale are scaled from their
    nominal range (``I;16``: /257; ``I``: 16-bit range); ``F`` must hold values in ``[0, 1]``
    or ``[0, 255]``.
    """
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image has zero size {image.size}")
    image = _upright(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "RGBX"):
        return image.convert("RGB")
    if mode.startswith("I"):
        pixels = np.asarray(image).astype(np.float64)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ImageError(
                f"mode {mode!r} image has values in [{pixels.min()}, {pixels.max()}], "
                "outside the 16-bit range"
            )
        return _grey_to_rgb(np.rint(pixels / 257.0))
    if mode == "F":
        pixels = np.asarray(image).astype(np.float64)
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if np.isnan(pixels).any() or low < 0:
            raise ImageError("mode 'F' image has NaN or negative values")
        if high <= 1.0:
            return _grey_to_rgb(np.rint(pixels * 255.0))
        if high <= 255.0:
            return _grey_to_rgb(np.rint(pixels))
        raise ImageError(f"mode 'F' image has values up to {high}, beyond [0, 255]")
    raise ImageError(f"cannot convert an image of mode {mode!r} to RGB")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; the same object when there is nothing to do."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in (None, 1):
            return image
        upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return image  # a broken EXIF block must not cost the row its image
    return upright if upright is not None else image


def _grey_to_rgb(grey: np.ndarray[Any, Any]) -> Image.Image:
    return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
