"""Image paths and cells that would hang, exhaust memory or escape the image folder cost one
RowError each, and the run completes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from povidgen import PairBuilder
from povidgen.errors import ImageError
from povidgen.sources.images import ImageLimits, open_image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(root / "good.png")
    os.mkfifo(root / "pipe.png")
    (root / "folder.png").mkdir()
    return root


def row(i: int, image: Any) -> dict[str, Any]:
    return {
        "id": f"r{i}",
        "image": image,
        "prompt": "What is in the image?",
        "answer": "There are two red apples on the left of a cup.",
    }


def test_a_fifo_dev_zero_and_a_directory_cost_one_row_error_each(folder: Path) -> None:
    rows = [
        row(0, "good.png"),
        row(1, "pipe.png"),  # would block forever on open()
        row(2, "/dev/zero"),  # would read until memory runs out
        row(3, "folder.png"),
        row(4, "missing.png"),
    ]
    builder = PairBuilder.from_dataset(rows, id_column="id", image_folder=folder)
    pairs = builder.build()
    assert len(pairs) == 1
    reasons = {e.id: e.reason for e in builder.errors}
    assert {e.stage for e in builder.errors} == {"image"}
    assert "is a FIFO (named pipe), not an image file" in reasons["r1"]
    assert "pipe.png" in reasons["r1"]
    assert "/dev/zero is a character device" in reasons["r2"]
    assert "is a directory" in reasons["r3"]
    assert "not found" in reasons["r4"]


def test_byte_and_pixel_caps(tmp_path: Path) -> None:
    data = png(Image.new("RGB", (40, 40), (1, 2, 3)))
    with pytest.raises(ImageError, match="more than max_bytes=100"):
        open_image(data, limits=ImageLimits(max_bytes=100))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"a\.png is larger than max_bytes=100"):
        open_image(str(path), limits=ImageLimits(max_bytes=100))
    with pytest.raises(ImageError, match=r"40x40 = 1600 pixels, more than max_pixels=1000"):
        open_image(data, limits=ImageLimits(max_pixels=1000))
    assert open_image(data).image.size == (40, 40)


def test_the_byte_cap_is_exact_and_holds_for_a_file_that_grew_since_its_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is read by its size (not a cap-sized buffer); a file of exactly max_bytes is
    read, one byte more is refused, and so is a file larger than its fstat said."""
    import os

    from povidgen.sources import images

    data = png(Image.new("RGB", (40, 40), (1, 2, 3)))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert open_image(str(path), limits=ImageLimits(max_bytes=len(data))).image.size == (40, 40)
    with pytest.raises(ImageError, match="larger than max_bytes"):
        open_image(str(path), limits=ImageLimits(max_bytes=len(data) - 1))
    fstat = os.fstat

    def shrunk(fd: int) -> os.stat_result:  # the file grew after this size was taken
        real = fstat(fd)
        fields = list(real)
        fields[6] = 10  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(images.os, "fstat", shrunk)
    assert open_image(str(path)).image.size == (40, 40)  # read to the end all the same
    with pytest.raises(ImageError, match="larger than max_bytes"):
        open_image(str(path), limits=ImageLimits(max_bytes=len(data) - 1))


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    # 8001 x 8001 one-bit pixels: a 130 kB PNG that would decode to 64M pixels (192 MB RGB)
    bomb = png(Image.new("1", (8001, 8001)))
    assert len(bomb) < 2**20
    with pytest.raises(ImageError, match="8001x8001 = 64016001 pixels, more than max_pixels"):
        open_image(bomb)


def test_paths_outside_a_confining_image_folder_are_refused(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    (folder / "link.png").symlink_to(outside)
    confined = ImageLimits(confine=True)
    for value in ("../secret.png", str(outside), "link.png"):
        with pytest.raises(ImageError, match="is outside the image folder"):
            open_image(value, image_folder=folder, limits=confined)
        assert open_image(value, image_folder=folder).image.size == (8, 8)  # not confined
    assert open_image("good.png", image_folder=folder, limits=confined).image.size == (24, 16)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        ImageLimits(max_bytes=0)
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        ImageLimits(max_pixels=True)


def test_cli_confines_only_a_named_image_folder(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from povidgen.cli import main

    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    data = tmp_path / "rows.jsonl"
    lines = [row(0, "good.png"), row(1, "../outside.png"), row(2, "pipe.png")]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = ["build", "--dataset", str(data), "--id-column", "id", "--distorter", "none"]
    command += ["--image-folder", str(folder)]
    assert main([*command, "--out", str(tmp_path / "a")]) == 0
    errors = (tmp_path / "a" / "errors.jsonl").read_text()
    assert "outside the image folder" in errors
    assert "FIFO" in errors
    assert main([*command, "--out", str(tmp_path / "b"), "--allow-outside-image-folder"]) == 0
    assert "outside" not in (tmp_path / "b" / "errors.jsonl").read_text()
    assert main([*command, "--out", str(tmp_path / "c"), "--max-image-pixels", "0"]) == 2
    assert "argument --max-image-pixels: 0 is less than 1" in capsys.readouterr().err


def test_distort_refuses_a_bomb_and_a_fifo_in_one_line(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from povidgen.cli import main

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(Image.new("1", (8001, 8001))))
    for image in (bomb, folder / "pipe.png"):
        command = ["distort", str(image), "--distorter", "diffusion", "--out"]
        assert main([*command, str(tmp_path / "out.png")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()
