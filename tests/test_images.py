"""Decoding image cells of every common kind and mode, and the errors for the rest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from povidgen import ImageError
from povidgen.sources.images import open_image, to_rgb
from tests.conftest import encode


def test_rgb_jpeg_bytes_are_kept_as_they_are(rgb_image: Image.Image) -> None:
    data = encode(rgb_image, "JPEG")
    source = open_image(data)
    assert source.image.mode == "RGB"
    assert source.image.size == (24, 16)
    assert source.encoded == data


@pytest.mark.parametrize("wrap", [lambda d: {"bytes": d, "path": None}, lambda d: [d]])
def test_dict_and_one_element_list_cells(rgb_image: Image.Image, wrap: object) -> None:
    data = encode(rgb_image)
    assert open_image(wrap(data)).image.tobytes() == rgb_image.tobytes()  # type: ignore[operator]


def test_relative_paths_resolve_against_the_image_folder(
    tmp_path: Path, rgb_image: Image.Image
) -> None:
    rgb_image.save(tmp_path / "a.png")
    assert open_image("a.png", image_folder=tmp_path).image.size == (24, 16)
    assert open_image({"bytes": None, "path": str(tmp_path / "a.png")}).image.size == (24, 16)
    with pytest.raises(ImageError, match="not found"):
        open_image("missing.png", image_folder=tmp_path)


def test_pil_images_are_converted_not_reencoded(rgb_image: Image.Image) -> None:
    source = open_image(rgb_image.convert("L"))
    assert source.image.mode == "RGB"
    assert source.encoded is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "no image"),
        (b"", "empty"),
        (b"definitely not an image", "cannot decode"),
        ("", "path is empty"),
        ({"bytes": None, "path": None}, "neither bytes nor a path"),
        (12, "type int"),
        ([b"a", b"b"], "multi-image"),
        ([], "got 0"),
    ],
)
def test_unusable_cells_name_the_problem(value: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        open_image(value)


def test_truncated_jpeg_fails_at_decode_time(rgb_image: Image.Image) -> None:
    data = encode(rgb_image.resize((200, 200)), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        open_image(data[: len(data) // 2])


def test_cmyk_converts_to_rgb() -> None:
    image = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert to_rgb(image).getpixel((0, 0)) == (255, 0, 0)


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("LA", (4, 4), (0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)


def test_palette_with_transparency() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    del image.info["transparency"]
    assert to_rgb(image).getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_greyscale_scales_to_eight_bits() -> None:
    image = Image.new("I;16", (4, 4), 65535)
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    array = np.full((4, 4), 257 * 100, dtype=np.uint16)
    decoded = open_image(encode(Image.fromarray(array))).image
    assert decoded.getpixel((0, 0)) == (100, 100, 100)


def test_float_images_in_unit_range() -> None:
    image = Image.fromarray(np.full((3, 3), 0.5, dtype=np.float32), mode="F")
    assert to_rgb(image).getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(ImageError, match="beyond"):
        to_rgb(Image.fromarray(np.full((3, 3), 900.0, dtype=np.float32), mode="F"))


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (30, 10), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    source = open_image(buffer.getvalue())
    assert source.image.size == (10, 30)
    assert source.encoded is None  # the stored pixels are not the upright ones


def test_unconvertible_mode_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="mode 'HSV'"):
        to_rgb(Image.new("HSV", (2, 2)))
