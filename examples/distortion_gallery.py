"""Draw every registered distortion at every severity on one sheet (the picture in the docs).

Run:  python examples/distortion_gallery.py [--out docs/distortions.png] [--size 160] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from povidgen import available_distorters, get_distorter
from povidgen.sources.demo import make_scene, render_scene

_LABEL_WIDTH = 170
_HEADER = 28


def gallery(size: int = 160, seed: int = 0) -> Image.Image:
    """A sheet: one row per registered distorter, the clean image then severities 1 to 5."""
    image = render_scene(make_scene(3, seed=0)).resize((size, size), Image.Resampling.LANCZOS)
    names = available_distorters()
    font = ImageFont.load_default(size=14)
    sheet = Image.new("RGB", (_LABEL_WIDTH + 6 * size, _HEADER + len(names) * size), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(["clean", *(f"severity {s}" for s in range(1, 6))]):
        draw.text((_LABEL_WIDTH + column * size + 6, 6), title, fill="black", font=font)
    for row, name in enumerate(names):
        top = _HEADER + row * size
        draw.text((8, top + size // 2 - 8), name, fill="black", font=font)
        sheet.paste(image, (_LABEL_WIDTH, top))
        for severity in range(1, 6):
            distorted = get_distorter(name, severity=severity)(image, seed=seed)
            sheet.paste(distorted, (_LABEL_WIDTH + severity * size, top))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/distortions.png"))
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gallery(args.size, args.seed).save(args.out)
    print(f"gallery written to {args.out}")


if __name__ == "__main__":
    main()
