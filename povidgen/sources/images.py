"""Decoding image cells of any common kind and mode into RGB, with specific errors.

Dataset rows hold images as PIL objects, ``{"bytes", "path"}`` dicts (a ``datasets`` ``Image``
column read with ``decode=False``), file paths or raw bytes. :func:`open_image` decodes any of
them, fully (so truncated files fail here, not later); :func:`to_rgb` turns every common mode
(1, L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F) into upright 8-bit RGB, compositing
transparency onto white and honouring the EXIF orientation tag.

Files are read defensively (:class:`ImageLimits`): only regular files are opened (a FIFO, a
device such as ``/dev/zero``, a socket or a directory is an :class:`povidgen.ImageError`
naming the path, never a hang or an endless read), at most ``max_bytes`` are read, an image
whose header declares more than ``max_pixels`` pixels is refused before it is decoded, and with
``confine=True`` a path that resolves outside ``image_folder`` (``../``, an absolute path, a
symlink pointing out) is refused.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from povidgen.errors import ImageError

__all__ = ["ImageLimits", "SourceImage", "open_image", "read_image_file", "to_rgb"]

_PASSTHROUGH_FORMATS = {"JPEG", "PNG", "WEBP"}


@dataclass(frozen=True)
class ImageLimits:
    """What :func:`open_image` accepts.

    Attributes:
        max_bytes: the largest encoded image read (64 MiB: far above any real photo's JPEG or
            PNG, far below what exhausts memory).
        max_pixels: the largest decoded image, checked from the header before decoding
            (64 megapixels: a 48- or 50-megapixel camera photo passes; a 100-megapixel image
            would take 8 GB as a float tensor).
        confine: refuse file paths that resolve outside ``image_folder``.
    """

    max_bytes: int = 64 * 2**20
    max_pixels: int = 64_000_000
    confine: bool = False

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class SourceImage:
    """A decoded RGB image and, when it needed no conversion, the bytes it was decoded from
    (so writers can store the original JPEG instead of re-encoding it)."""

    image: Image.Image
    encoded: bytes | None


def open_image(
    value: Any,
    *,
    image_folder: str | os.PathLike[str] | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> SourceImage:
    """Decode a dataset cell into an upright RGB :class:`SourceImage`.

    Accepts a PIL image, ``bytes``, a path (relative paths resolve against ``image_folder``),
    a ``{"bytes": ..., "path": ...}`` dict, or a one-element list of these. Raises
    :class:`povidgen.ImageError` naming the problem: missing value, missing file, a path that
    is no regular file or lies outside a confining ``image_folder``, too many bytes or pixels
    (``limits``), undecodable or truncated data, several images in one row, or an unusable
    mode.
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
        if limits.confine and image_folder is not None:
            _check_inside(path, Path(image_folder))
        data = _read_file(path, limits.max_bytes)
    assert data is not None
    if not data:
        raise ImageError("the image data is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(f"the image is {len(data)} bytes, more than max_bytes={limits.max_bytes}")

    image = _decode(data, limits.max_pixels)
    rgb = to_rgb(image)
    keep_bytes = rgb is image and image.format in _PASSTHROUGH_FORMATS
    return SourceImage(rgb, data if keep_bytes else None)


def read_image_file(
    path: str | os.PathLike[str], limits: ImageLimits = DEFAULT_LIMITS
) -> Image.Image:
    """Decode an image file as it is (its own mode, no conversion), read as defensively as
    :func:`open_image` reads paths; raises :class:`povidgen.ImageError`."""
    return _decode(_read_file(Path(path), limits.max_bytes), limits.max_pixels)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most ``max_bytes``; anything else is an ImageError.

    The file is opened non-blocking and checked on the open descriptor, so a FIFO swapped in
    after a check can neither block the open nor be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path}") from None
    except OSError as error:
        raise ImageError(f"cannot read image file {path}: {error.strerror or error}") from error
    status = os.fstat(fd)
    mode = status.st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise ImageError(f"image path {path} is {kind}, not an image file")
    # read what fstat says is there (plus one byte, to see a file that grew since): asking for
    # max_bytes + 1 would allocate, and then give back, 64 MiB for every small image
    want = min(status.st_size, max_bytes) + 1
    with os.fdopen(fd, "rb", closefd=True) as handle:
        try:
            data = handle.read(want)
            if len(data) == want:  # it grew: read on, up to the cap
                data += handle.read(max_bytes + 1 - len(data))
        except OSError as error:
            raise ImageError(f"cannot read image file {path}: {error}") from error
    if len(data) > max_bytes:
        raise ImageError(f"image file {path} is larger than max_bytes={max_bytes}")
    return data


def _check_inside(path: Path, folder: Path) -> None:
    resolved, root = path.resolve(), folder.resolve()
    if resolved != root and root not in resolved.parents:
        raise ImageError(
            f"image path {path} is outside the image folder {folder} (allow it with "
            "--allow-outside-image-folder)"
        )


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # a decompression-bomb warning would be an error under strict warning filters; the
        # pixel cap refuses such images from their header, before they are decoded
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ImageError(f"image is too large to decode safely: {error}") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"cannot decode image ({len(data)} bytes): {_why(error)}") from error
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"the image is {width}x{height} = {width * height} pixels, more than "
                f"max_pixels={max_pixels}"
            )
        try:
            image.load()  # decode now, so truncated data fails here
        except Image.DecompressionBombError as error:
            raise ImageError(f"image is too large to decode safely: {error}") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"cannot decode image ({len(data)} bytes): {_why(error)}") from error
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


def _why(error: BaseException) -> str:
    """Pillow's reason without the memory address it puts in some messages ("cannot identify
    image file <_io.BytesIO object at 0x...>"), so a row's error record is the same on every
    run (a resumed build writes the same bytes)."""
    return re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", r"<\1>", str(error))
