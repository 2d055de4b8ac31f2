"""Contact sheets of preference pairs, for a quick look at what a run produced.

:func:`render_preview` draws the first few rows of a pairs dataset (the TRL vision preference
format written by the pair builder) as one image. Each row shows the image, the distorted
image when the dataset has a ``rejected_images`` column, the prompt, the chosen answer and the
rejected answer, with every injected span of ``provenance.edits`` on a coloured background (one
colour per edit kind, explained by the legend at the top); an omission also marks, in the
chosen answer, the text it left out. :func:`save_preview` writes it to a
file; ``povidgen preview DIR --out FILE.png`` calls it.

Text is drawn with Pillow's bundled default font, so no font files are needed. That font covers
ASCII only: accented Latin letters are shown without their accents ("é" as "e"), and other
characters it has no glyph for (CJK, emoji...) show as boxes rather than failing.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from povidgen.errors import InputError
from povidgen.pairs.trl_format import edit_spans

if TYPE_CHECKING:
    import datasets

__all__ = ["EDIT_COLORS", "REQUIRED_COLUMNS", "render_preview", "save_preview"]

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "images", "prompt", "chosen", "rejected", "provenance")
"""Columns a pairs dataset must have; ``rejected_images`` is optional."""

RGB = tuple[int, int, int]

EDIT_COLORS: dict[str, RGB] = {
    "object": (255, 168, 168),
    "attribute": (255, 205, 130),
    "count": (250, 236, 110),
    "relation": (205, 180, 255),
    "spatial": (150, 205, 255),
    "text": (160, 230, 160),
    "reasoning": (245, 170, 230),
    "omission": (185, 225, 225),
}
"""The highlight colour of each edit kind. An omission is shown twice: the text it left out in
the chosen answer, and what stands in its place in the rejected one."""
_OTHER_EDIT = (205, 205, 205)  # kinds a future hallucinator may add

_BACKGROUND = (255, 255, 255)
_INK = (25, 25, 25)
_MUTED = (110, 110, 110)
_RULE = (210, 210, 210)
_CELL = (240, 240, 240)
_CHOSEN_INK = (20, 120, 45)
_REJECTED_INK = (185, 35, 35)

_MARGIN = 16
_GAP = 14
_MAX_LINES = 16  # per text block; longer answers are cut with an ellipsis
_MIN_WIDTH = 480
_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2212")

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class _Fonts:
    body: _Font
    small: _Font
    title: _Font

    @classmethod
    def load(cls) -> _Fonts:
        return cls(
            body=ImageFont.load_default(size=14),
            small=ImageFont.load_default(size=12),
            title=ImageFont.load_default(size=20),
        )


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    color: RGB


def render_preview(pairs: datasets.Dataset, *, n: int = 6, width: int = 1200) -> Image.Image:
    """Draw the first ``n`` pairs of ``pairs`` as a contact sheet ``width`` pixels wide.

    Args:
        pairs: a pairs dataset with the columns of :data:`REQUIRED_COLUMNS` and optionally
            ``rejected_images``.
        n: how many rows to draw (fewer when the dataset is shorter).
        width: the sheet's width in pixels; its height follows from the content.

    Returns:
        an RGB image.

    Raises:
        ValueError: ``n`` is below 1, ``width`` is below 480, the dataset is empty, or it lacks
            required columns (:class:`povidgen.InputError` for the last two).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if width < _MIN_WIDTH:
        raise ValueError(f"width must be at least {_MIN_WIDTH} pixels, got {width}")
    columns = list(pairs.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"the pairs dataset lacks required column(s) {', '.join(map(repr, missing))}; "
            f"it has: {', '.join(map(repr, columns)) or '(none)'}"
        )
    total = len(pairs)
    if total == 0:
        raise InputError("the pairs dataset is empty: there is nothing to preview")

    fonts = _Fonts.load()
    distorted = "rejected_images" in columns
    shown = min(n, total)
    blocks = [_draw_row(pairs[i], i, distorted, width, fonts) for i in range(shown)]
    header = _draw_header(shown, total, distorted, width, fonts)

    sheet = Image.new("RGB", (width, header.height + sum(b.height for b in blocks)), _BACKGROUND)
    sheet.paste(header, (0, 0))
    y = header.height
    draw = ImageDraw.Draw(sheet)
    for block in blocks:
        sheet.paste(block, (0, y))
        draw.line([(_MARGIN, y), (width - _MARGIN, y)], fill=_RULE, width=1)
        y += block.height
    return sheet


def save_preview(
    pairs: datasets.Dataset,
    out: str | os.PathLike[str],
    *,
    n: int = 6,
    width: int = 1200,
) -> Path:
    """Render a contact sheet with :func:`render_preview` and save it to ``out``.

    The format follows the file's extension (PNG when it has none); missing parent folders are
    created. Returns the path written.
    """
    sheet = render_preview(pairs, n=n, width=width)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format=None if path.suffix else "PNG")
    return path


# ---------------------------------------------------------------------------------------------
# Layout


def _thumb_size(width: int) -> int:
    return max(96, min(256, (width - 2 * _MARGIN) // 7))


def _draw_header(shown: int, total: int, distorted: bool, width: int, fonts: _Fonts) -> Image.Image:
    title_h = _line_height(fonts.title)
    small_h = _line_height(fonts.small)
    height = _MARGIN + title_h + 8 + small_h + 10 + small_h + 8
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    y = _MARGIN
    title = f"povidgen preview: {shown} of {total} pair{'s' if total != 1 else ''}"
    draw.text((_MARGIN, y), title, font=fonts.title, fill=_INK)
    y += title_h + 8

    # The legend: one swatch per edit kind, wrapped onto a second line only if needed.
    x = _MARGIN
    label = "edits:"
    draw.text((x, y), label, font=fonts.small, fill=_MUTED)
    x += int(fonts.small.getlength(label)) + 10
    for kind, color in EDIT_COLORS.items():
        advance = int(fonts.small.getlength(kind)) + 30
        if x + advance > width - _MARGIN:
            break
        draw.rectangle([x, y, x + 14, y + small_h - 3], fill=color)
        draw.text((x + 18, y), kind, font=fonts.small, fill=_INK)
        x += advance
    y += small_h + 10

    thumb = _thumb_size(width)
    headings = [
        (_MARGIN, "image"),
        (_MARGIN + thumb + _GAP, "distorted image" if distorted else "(no distortion)"),
        (_MARGIN + 2 * (thumb + _GAP), "prompt, chosen and rejected"),
    ]
    for hx, text in headings:
        draw.text((hx, y), text, font=fonts.small, fill=_MUTED)
    return image


def _draw_row(
    row: Mapping[str, Any], index: int, distorted: bool, width: int, fonts: _Fonts
) -> Image.Image:
    thumb = _thumb_size(width)
    text_x = _MARGIN + 2 * (thumb + _GAP)
    text_w = width - text_x - _MARGIN
    half_w = (text_w - _GAP) // 2
    body_h, small_h = _line_height(fonts.body), _line_height(fonts.small)

    row_id = _clean(str(row.get("id", "")), fonts.small)
    prompt = _clean(_message_text(row.get("prompt")), fonts.body)
    chosen = _clean(_message_text(row.get("chosen")), fonts.body)
    raw_rejected = _message_text(row.get("rejected"))
    # Spans index the raw text; _clean keeps every character's position, so they still apply.
    spans = _edit_spans(row.get("provenance"), raw_rejected)
    left_out = _omitted_spans(row.get("provenance"), _message_text(row.get("chosen")))
    rejected = _clean(raw_rejected, fonts.body)

    prompt_lines = _wrap(prompt, fonts.body, text_w)
    chosen_lines = _wrap(chosen, fonts.body, half_w)
    rejected_lines = _wrap(rejected, fonts.body, half_w)
    answers_top = _GAP + small_h + len(prompt_lines) * body_h + 10
    text_bottom = answers_top + small_h + max(len(chosen_lines), len(rejected_lines)) * body_h
    height = max(_GAP + thumb, text_bottom) + _GAP

    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    _paste_thumb(image, draw, _first_image(row.get("images")), _MARGIN, _GAP, thumb, fonts, "")
    if distorted:
        missing = "no distorted image for this row"
        picture = _first_image(row.get("rejected_images"))
    else:
        missing, picture = "no distorter was used", None
    _paste_thumb(image, draw, picture, _MARGIN + thumb + _GAP, _GAP, thumb, fonts, missing)

    y = _GAP
    draw.text((text_x, y), f"#{index}  {row_id}  prompt", font=fonts.small, fill=_MUTED)
    _draw_lines(draw, text_x, y + small_h, prompt, prompt_lines, fonts.body, [])
    y = answers_top
    draw.text((text_x, y), "chosen", font=fonts.small, fill=_CHOSEN_INK)
    draw.text((text_x + half_w + _GAP, y), "rejected", font=fonts.small, fill=_REJECTED_INK)
    _draw_lines(draw, text_x, y + small_h, chosen, chosen_lines, fonts.body, left_out)
    _draw_lines(
        draw, text_x + half_w + _GAP, y + small_h, rejected, rejected_lines, fonts.body, spans
    )
    return image


def _paste_thumb(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    picture: Image.Image | None,
    x: int,
    y: int,
    size: int,
    fonts: _Fonts,
    missing: str,
) -> None:
    draw.rectangle([x, y, x + size - 1, y + size - 1], fill=_CELL, outline=_RULE)
    if picture is None:
        text = missing or "no image"
        lines = _wrap(text, fonts.small, size - 16)
        line_h = _line_height(fonts.small)
        top = y + (size - len(lines) * line_h) // 2
        _draw_lines(draw, x + 8, top, text, lines, fonts.small, [], fill=_MUTED)
        return
    fitted = ImageOps.contain(picture.convert("RGB"), (size - 2, size - 2))
    image.paste(fitted, (x + (size - fitted.width) // 2, y + (size - fitted.height) // 2))


# ---------------------------------------------------------------------------------------------
# Text


def _line_height(font: _Font) -> int:
    return int(font.getbbox("Ågjy|")[3]) + 4


def _clean(text: str, font: _Font) -> str:
    """Make ``text`` drawable without changing its length, so edit spans still line up."""
    chars = []
    bitmap = not isinstance(font, ImageFont.FreeTypeFont)
    for ch in text:
        if ch == "\n":
            chars.append(ch)
        elif ch.isspace() or not ch.isprintable():
            chars.append(" ")
        elif (0xD800 <= ord(ch) <= 0xDFFF) or (bitmap and ord(ch) > 0xFF):
            # Lone surrogates cannot be encoded at all, and the bitmap font that Pillow falls
            # back to without FreeType only covers Latin-1.
            chars.append("?")
        elif ord(ch) > 0x7F and (ch.isalpha() or ch in _DASHES):
            # Pillow's default font has ASCII letters only: show "é" as "e" rather than a box.
            base = "-" if ch in _DASHES else unicodedata.normalize("NFKD", ch)[0]
            chars.append(base if base.isascii() else ch)
        else:
            chars.append(ch)
    return "".join(chars)


def _wrap(text: str, font: _Font, max_width: int) -> list[tuple[int, int]]:
    """Greedy word wrap: the ``(start, end)`` of each line in ``text``, at most _MAX_LINES.

    Words wider than a line are broken between characters (this also wraps scripts written
    without spaces).
    """

    def fits(start: int, end: int) -> bool:
        return font.getlength(text[start:end].rstrip()) <= max_width

    lines: list[tuple[int, int]] = []
    offset = 0
    for paragraph in text.split("\n"):
        line_start = offset
        for token in re.finditer(r"\S+\s*|\s+", paragraph):
            start, end = offset + token.start(), offset + token.end()
            if len(lines) >= _MAX_LINES:
                return lines[:_MAX_LINES]
            if fits(line_start, end):
                continue
            if line_start < start:
                lines.append((line_start, start))
                line_start = start
            while not fits(line_start, end):
                cut = line_start + 1
                while cut < end and fits(line_start, cut + 1):
                    cut += 1
                lines.append((line_start, cut))
                line_start = cut
        lines.append((line_start, offset + len(paragraph)))
        offset += len(paragraph) + 1
    return lines[:_MAX_LINES]


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    x: int,
    y: int,
    text: str,
    lines: Sequence[tuple[int, int]],
    font: _Font,
    spans: Sequence[_Span],
    *,
    fill: RGB = _INK,
) -> None:
    line_h = _line_height(font)
    for number, (start, end) in enumerate(lines):
        line = text[start:end].rstrip()
        end = start + len(line)
        # Highlight boxes go under the text, clipped to this line's part of each span.
        for span in spans:
            lo, hi = max(span.start, start), min(span.end, end)
            if lo >= hi:
                continue
            x0 = x + font.getlength(text[start:lo])
            x1 = x + font.getlength(text[start:hi])
            draw.rectangle([round(x0) - 1, y, round(x1) + 1, y + line_h - 2], fill=span.color)
        truncated = number == len(lines) - 1 and end < len(text.rstrip())
        draw.text((x, y), line + (" ..." if truncated else ""), font=font, fill=fill)
        y += line_h


def _message_text(messages: Any) -> str:
    """The text parts of a chat message list (or a plain string), joined by newlines."""
    if messages is None:
        return ""
    if isinstance(messages, str):
        return messages
    parts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, Sequence):
            parts.extend(
                str(part["text"])
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text" and part.get("text")
            )
    return "\n".join(parts)


def _edit_spans(provenance: Any, rejected: str) -> list[_Span]:
    """The highlight spans of ``provenance["edits"]`` inside ``rejected``.

    A span that does not hold its injected text (hand-edited data) is looked up by text
    instead, and skipped when the text is not there.
    """
    if not isinstance(provenance, Mapping):
        return []
    return [
        _Span(start, end, EDIT_COLORS.get(kind, _OTHER_EDIT))
        for start, end, kind in edit_spans(rejected, provenance.get("edits") or [])
    ]


def _omitted_spans(provenance: Any, chosen: str) -> list[_Span]:
    """The spans of ``chosen`` that the row's omission edits left out of the rejected answer
    (each edit's ``original``, found by text; skipped when it is not there)."""
    if not isinstance(provenance, Mapping):
        return []
    spans = []
    for edit in provenance.get("edits") or []:
        if not isinstance(edit, Mapping) or edit.get("kind") != "omission":
            continue
        original = str(edit.get("original") or "")
        found = chosen.find(original) if original else -1
        if found >= 0:
            spans.append(_Span(found, found + len(original), EDIT_COLORS["omission"]))
    return spans


def _first_image(value: Any) -> Image.Image | None:
    """The first image of an ``images`` cell: decoded, or an undecoded ``{bytes, path}``."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
    return None
