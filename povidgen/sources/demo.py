"""Bundled synthetic demo data: simple scenes drawn with Pillow, with exact ground truth.

Every scene holds one to three *groups* of identical objects (an object name, a colour, a
count of one to five and a position on the canvas). Because the scene is known exactly, the
captions and question/answer pairs made from it are exactly true, and tests can check that a
corrupted answer really contradicts the image (:func:`contradicts`).

Everything is deterministic: scene ``index`` under ``seed`` is drawn from a random generator
seeded with :func:`povidgen.derive_seed`, and the drawing uses only integer Pillow primitives
without anti-aliasing or fonts, so the same ``(n, seed)`` gives byte-identical images on every
platform.

Layout: the canvas is split into thirds. ``left`` and ``right`` are the full-height outer
columns, ``center`` is the middle cell, and ``top`` and ``bottom`` are the middle cells of the
top and bottom rows, widened to the full width when no group sits on the left or right. The regions
never overlap, so groups never overlap either.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, get_args

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, model_validator

from povidgen.seeding import derive_seed

if TYPE_CHECKING:
    import datasets

__all__ = [
    "BACKGROUND_COLORS",
    "CAPTION_PROMPT",
    "COLORS",
    "OBJECT_NAMES",
    "POSITIONS",
    "QUESTION_TYPES",
    "ColorName",
    "ObjectName",
    "Position",
    "Scene",
    "SceneObject",
    "caption",
    "contradicts",
    "demo_dataset",
    "make_scene",
    "parse_scene",
    "question_answer",
    "region",
    "render_scene",
]

ObjectName = Literal["apple", "ball", "book", "cup", "clock", "kite", "umbrella", "bottle"]
ColorName = Literal["red", "green", "blue", "yellow", "purple", "pink", "white", "black", "brown"]
Position = Literal["left", "right", "top", "bottom", "center"]

OBJECT_NAMES: tuple[ObjectName, ...] = get_args(ObjectName)
"""The objects a demo scene can hold."""
POSITIONS: tuple[Position, ...] = get_args(Position)
"""The positions a group can take."""

COLORS: dict[ColorName, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 210, 30),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "white": (255, 255, 255),
    "black": (20, 20, 20),
    "brown": (140, 85, 40),
}
"""The exact RGB fill of each object colour. No other part of a drawing uses these values, so
a pixel of one of them always belongs to an object of that colour."""

BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "light gray": (226, 226, 226),
    "beige": (240, 232, 210),
    "light blue": (212, 228, 242),
    "mint": (216, 238, 222),
}
"""Background colours: pale, and distinct from every object colour."""

CAPTION_PROMPT = "Describe the image in detail."
"""The prompt of every caption row."""

QUESTION_TYPES: tuple[str, ...] = ("count", "color", "position", "presence", "absence", "relation")
"""The kinds of question QA rows cycle through, in order."""

_PLURALS: dict[str, str] = {name: name + "s" for name in OBJECT_NAMES}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")

# Colours of the details (stems, hands, caps...). None equals an object colour, so pixel
# checks on object colours stay exact.
_STEM = (101, 67, 33)
_LEAF = (70, 150, 50)
_FACE = (250, 250, 240)
_HANDS = (45, 45, 45)
_PAGES = (246, 244, 232)
_HANDLE = (70, 70, 70)
_CAP = (90, 90, 100)

# Spatial relations that hold between two regions of the layout, as (upper/left, lower/right).
# Pairs not listed (such as top and left) are ambiguous and never described.
_ABOVE: frozenset[tuple[str, str]] = frozenset(
    {("top", "center"), ("top", "bottom"), ("center", "bottom")}
)
_LEFT_OF: frozenset[tuple[str, str]] = frozenset(
    {("left", "center"), ("left", "right"), ("center", "right")}
)


class SceneObject(BaseModel):
    """A group of ``count`` identical objects of one colour at one position."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ObjectName
    color: ColorName
    count: int = Field(ge=1, le=5)
    position: Position

    @property
    def noun(self) -> str:
        """The name, pluralised when ``count`` is more than one."""
        return _PLURALS[self.name] if self.count > 1 else self.name

    def phrase(self) -> str:
        """The group as a noun phrase: ``"a red apple"``, ``"three blue balls"``."""
        return f"{_quantity(self.count, self.color)} {self.color} {self.noun}"


class Scene(BaseModel):
    """A demo scene: groups with distinct names and distinct positions on a plain background."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objects: list[SceneObject] = Field(min_length=1, max_length=len(POSITIONS))
    background: str = "light gray"
    width: int = Field(default=256, ge=64, le=4096)
    height: int = Field(default=256, ge=64, le=4096)

    @model_validator(mode="after")
    def _groups_are_distinct(self) -> Scene:
        names = [o.name for o in self.objects]
        positions = [o.position for o in self.objects]
        if len(set(names)) != len(names):
            raise ValueError(f"object names must be distinct, got {names}")
        if len(set(positions)) != len(positions):
            raise ValueError(f"object positions must be distinct, got {positions}")
        if self.background not in BACKGROUND_COLORS:
            raise ValueError(
                f"unknown background {self.background!r}; choose one of {sorted(BACKGROUND_COLORS)}"
            )
        return self

    def names(self) -> list[str]:
        """The object names in the scene, in group order."""
        return [o.name for o in self.objects]

    def colors(self) -> list[str]:
        """The colours of the groups, in group order."""
        return [o.color for o in self.objects]

    def counts(self) -> list[int]:
        """The counts of the groups, in group order."""
        return [o.count for o in self.objects]

    def positions(self) -> list[str]:
        """The positions of the groups, in group order."""
        return [o.position for o in self.objects]

    def find(self, name: str) -> SceneObject | None:
        """The group of objects called ``name`` (singular or plural), or ``None``."""
        wanted = _singular(name.strip().lower())
        return next((o for o in self.objects if o.name == wanted), None)

    def relation(self) -> tuple[SceneObject, str, SceneObject] | None:
        """One true spatial relation between two groups, or ``None`` when there is none.

        Returns ``(subject, relation, other)`` with ``relation`` one of ``"above"``,
        ``"below"``, ``"to the left of"``, ``"to the right of"``. The choice is a pure
        function of the scene.
        """
        for i, a in enumerate(self.objects):
            for b in self.objects[i + 1 :]:
                found = _relation_between(a, b)
                if found is not None:
                    return found
        return None


def _relation_between(
    a: SceneObject, b: SceneObject
) -> tuple[SceneObject, str, SceneObject] | None:
    # Alternate the direction with the counts' parity so both words of each pair occur.
    flip = (a.count + b.count) % 2 == 1
    for table, forward, backward in (
        (_ABOVE, "above", "below"),
        (_LEFT_OF, "to the left of", "to the right of"),
    ):
        if (a.position, b.position) in table:
            first, second = a, b
        elif (b.position, a.position) in table:
            first, second = b, a
        else:
            continue
        return (second, backward, first) if flip else (first, forward, second)
    return None


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and word[:-1] in _PLURALS else word


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _quantity(count: int, next_word: str) -> str:
    return _article(next_word) if count == 1 else _NUMBER_WORDS[count]


_WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}


def _be(obj: SceneObject) -> str:
    return "are" if obj.count > 1 else "is"


def _the(obj: SceneObject) -> str:
    return f"the {obj.noun}"


# ---------------------------------------------------------------------------------------------
# Scenes


def make_scene(index: int, seed: int = 0) -> Scene:
    """Make demo scene number ``index`` for ``seed``, deterministically.

    The scene has one to three groups with different object names, different colours and
    different positions; when it has two or more, at least one pair of groups stands in a
    clear spatial relation (see :meth:`Scene.relation`).
    """
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    rng = random.Random(derive_seed(seed, "demo-scene", index))
    k = rng.choices((1, 2, 3), weights=(1, 2, 2))[0]
    names = rng.sample(OBJECT_NAMES, k)
    colors = rng.sample(list(COLORS), k)
    while True:
        positions = rng.sample(POSITIONS, k)
        objects = [
            SceneObject(name=n, color=c, count=rng.randint(1, 5), position=p)
            for n, c, p in zip(names, colors, positions, strict=True)
        ]
        scene = Scene(objects=objects, background=rng.choice(list(BACKGROUND_COLORS)))
        if k == 1 or scene.relation() is not None:
            return scene


def parse_scene(json_str: str | bytes) -> Scene:
    """Rebuild a :class:`Scene` from its JSON (the ``scene`` column of :func:`demo_dataset`)."""
    return Scene.model_validate_json(json_str)


def region(scene: Scene, position: str) -> tuple[int, int, int, int]:
    """The box ``(x0, y0, x1, y1)`` (exclusive ends) where a group at ``position`` is drawn."""
    w, h = scene.width, scene.height
    x1, x2, y1, y2 = w // 3, 2 * w // 3, h // 3, 2 * h // 3
    taken = set(scene.positions())
    if position == "left":
        return (0, 0, x1, h)
    if position == "right":
        return (x2, 0, w, h)
    if position == "center":
        return (x1, y1, x2, y2)
    if position in ("top", "bottom"):
        # Widen only when both sides are free, so the group stays centred under (or over)
        # a center group and "above"/"below" stay visually true.
        left, right = (x1, x2) if taken & {"left", "right"} else (0, w)
        return (left, 0, right, y1) if position == "top" else (left, y2, right, h)
    raise ValueError(f"unknown position {position!r}; choose one of {list(POSITIONS)}")


def _slots(box: tuple[int, int, int, int], count: int) -> list[tuple[int, int, int]]:
    """Square slots ``(x, y, size)`` for ``count`` icons, as large as fit, centred in ``box``."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    best_cols, best_size = 1, 0
    for cols in range(1, count + 1):
        rows = math.ceil(count / cols)
        size = min(bw // cols, bh // rows)
        if size > best_size:
            best_cols, best_size = cols, size
    size = min(best_size, 80)  # a lone apple filling a whole column looks odd
    rows = math.ceil(count / best_cols)
    top = y0 + (bh - rows * size) // 2
    slots: list[tuple[int, int, int]] = []
    for r in range(rows):
        in_row = min(best_cols, count - r * best_cols)
        left = x0 + (bw - in_row * size) // 2
        slots.extend((left + c * size, top + r * size, size) for c in range(in_row))
    return slots


def render_scene(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``scene.width`` x ``scene.height`` pixels.

    Each group's ``count`` icons are laid out in a grid inside the group's :func:`region`.
    """
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND_COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        for x, y, size in _slots(region(scene, obj.position), obj.count):
            pad = max(1, size // 14)
            _ICONS[obj.name](draw, x + pad, y + pad, size - 2 * pad, COLORS[obj.color])
    return image


# ---------------------------------------------------------------------------------------------
# Icons. Each draws inside the square (x, y, x + s, y + s), filled with `fill`.

RGB = tuple[int, int, int]


def _shade(fill: RGB) -> RGB:
    """An outline colour: darker for light fills, lighter for black (never an object colour)."""
    if sum(fill) < 150:
        return (105, 105, 115)
    return (fill[0] * 11 // 20, fill[1] * 11 // 20, fill[2] * 11 // 20)


def _p(x: float) -> int:
    return round(x)


def _draw_apple(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    draw.line(
        [(_p(x + 0.5 * s), _p(y + 0.32 * s)), (_p(x + 0.56 * s), _p(y + 0.06 * s))],
        fill=_STEM,
        width=max(2, s // 14),
    )
    draw.ellipse(
        [_p(x + 0.1 * s), _p(y + 0.26 * s), _p(x + 0.9 * s), _p(y + 0.96 * s)],
        fill=fill,
        outline=_shade(fill),
        width=max(1, s // 30),
    )
    leaf = [
        (_p(x + 0.56 * s), _p(y + 0.16 * s)),
        (_p(x + 0.7 * s), _p(y + 0.04 * s)),
        (_p(x + 0.86 * s), _p(y + 0.1 * s)),
        (_p(x + 0.7 * s), _p(y + 0.2 * s)),
    ]
    draw.polygon(leaf, fill=_LEAF)


def _draw_ball(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    box = [_p(x + 0.08 * s), _p(y + 0.08 * s), _p(x + 0.92 * s), _p(y + 0.92 * s)]
    width = max(1, s // 24)
    draw.ellipse(box, fill=fill, outline=_shade(fill), width=width)
    # Two seams: arcs of circles centred outside the ball on either side.
    r = 0.55 * s
    for cx, start, end in ((x - 0.2 * s, -50, 50), (x + 1.2 * s, 130, 230)):
        draw.arc(
            [_p(cx - r), _p(y + 0.5 * s - r), _p(cx + r), _p(y + 0.5 * s + r)],
            start,
            end,
            fill=_shade(fill),
            width=width,
        )


def _draw_book(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    x0, y0, x1, y1 = _p(x + 0.16 * s), _p(y + 0.08 * s), _p(x + 0.84 * s), _p(y + 0.92 * s)
    draw.rectangle([x0 + 3, y0 + 3, x1 + 2, y1 + 2], fill=_PAGES, outline=_HANDLE)
    draw.rectangle([x0, y0, x1, y1], fill=fill, outline=_shade(fill), width=max(1, s // 30))
    draw.rectangle([x0, y0, _p(x0 + 0.14 * s), y1], fill=_shade(fill))
    # A title plate on the cover.
    draw.rectangle(
        [_p(x + 0.42 * s), _p(y + 0.24 * s), _p(x + 0.74 * s), _p(y + 0.36 * s)], fill=_PAGES
    )


def _draw_cup(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    draw.ellipse(
        [_p(x + 0.56 * s), _p(y + 0.34 * s), _p(x + 0.94 * s), _p(y + 0.72 * s)],
        outline=fill,
        width=max(2, s // 10),
    )
    body = [
        (_p(x + 0.08 * s), _p(y + 0.22 * s)),
        (_p(x + 0.74 * s), _p(y + 0.22 * s)),
        (_p(x + 0.64 * s), _p(y + 0.9 * s)),
        (_p(x + 0.18 * s), _p(y + 0.9 * s)),
    ]
    draw.polygon(body, fill=fill, outline=_shade(fill))
    draw.line([body[0], body[1]], fill=_shade(fill), width=max(1, s // 20))


def _draw_clock(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    cx, cy = x + 0.5 * s, y + 0.5 * s
    draw.ellipse([x + 1, y + 1, x + s - 1, y + s - 1], fill=fill, outline=_shade(fill))
    face = 0.36 * s
    draw.ellipse([_p(cx - face), _p(cy - face), _p(cx + face), _p(cy + face)], fill=_FACE)
    for hour in range(12):
        angle = math.radians(hour * 30)
        inner = face * (0.72 if hour % 3 == 0 else 0.84)
        draw.line(
            [
                (_p(cx + inner * math.sin(angle)), _p(cy - inner * math.cos(angle))),
                (_p(cx + face * 0.95 * math.sin(angle)), _p(cy - face * 0.95 * math.cos(angle))),
            ],
            fill=_HANDS,
            width=1,
        )
    hand = max(1, s // 22)
    draw.line([(_p(cx), _p(cy)), (_p(cx), _p(cy - 0.62 * face))], fill=_HANDS, width=hand)
    draw.line(
        [(_p(cx), _p(cy)), (_p(cx + 0.48 * face), _p(cy + 0.1 * face))], fill=_HANDS, width=hand
    )


def _draw_kite(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    top, right = (_p(x + 0.55 * s), _p(y + 0.04 * s)), (_p(x + 0.92 * s), _p(y + 0.34 * s))
    bottom, left = (_p(x + 0.55 * s), _p(y + 0.7 * s)), (_p(x + 0.18 * s), _p(y + 0.34 * s))
    # The tail: a zigzag string with small bows, drawn first so the kite covers its start.
    tail = [
        bottom,
        (_p(x + 0.42 * s), _p(y + 0.8 * s)),
        (_p(x + 0.3 * s), _p(y + 0.76 * s)),
        (_p(x + 0.16 * s), _p(y + 0.92 * s)),
    ]
    draw.line(tail, fill=_HANDLE, width=max(1, s // 40))
    for bx, by in tail[1:]:
        d = max(2, s // 16)
        draw.polygon(
            [(bx - d, by - d), (bx + d, by + d), (bx + d, by - d), (bx - d, by + d)], fill=_HANDLE
        )
    draw.polygon([top, right, bottom, left], fill=fill, outline=_shade(fill))
    draw.line([top, bottom], fill=_shade(fill), width=1)
    draw.line([left, right], fill=_shade(fill), width=1)


def _draw_umbrella(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    cx = _p(x + 0.5 * s)
    shaft = max(2, s // 16)
    hook = 0.13 * s
    draw.line([(cx, _p(y + 0.3 * s)), (cx, _p(y + 0.86 * s))], fill=_HANDLE, width=shaft)
    draw.arc(
        [_p(cx - 2 * hook), _p(y + 0.86 * s - hook), cx, _p(y + 0.86 * s + hook)],
        0,
        180,
        fill=_HANDLE,
        width=shaft,
    )
    draw.pieslice(
        [_p(x + 0.04 * s), _p(y + 0.08 * s), _p(x + 0.96 * s), _p(y + 0.92 * s)],
        180,
        360,
        fill=fill,
        outline=_shade(fill),
    )
    # Ribs from the tip to the rim.
    for rim in (0.27, 0.73):
        draw.line([(cx, _p(y + 0.08 * s)), (_p(x + rim * s), _p(y + 0.5 * s))], fill=_shade(fill))


def _draw_bottle(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, fill: RGB) -> None:
    cx = x + 0.5 * s
    outline = _shade(fill)
    draw.rounded_rectangle(
        [_p(x + 0.28 * s), _p(y + 0.36 * s), _p(x + 0.72 * s), _p(y + 0.96 * s)],
        radius=max(1, s // 12),
        fill=fill,
        outline=outline,
    )
    shoulders = [
        (_p(x + 0.28 * s), _p(y + 0.42 * s)),
        (_p(cx - 0.09 * s), _p(y + 0.26 * s)),
        (_p(cx + 0.09 * s), _p(y + 0.26 * s)),
        (_p(x + 0.72 * s), _p(y + 0.42 * s)),
    ]
    draw.polygon(shoulders, fill=fill)
    draw.rectangle(
        [_p(cx - 0.09 * s), _p(y + 0.12 * s), _p(cx + 0.09 * s), _p(y + 0.3 * s)],
        fill=fill,
        outline=outline,
    )
    draw.rectangle(
        [_p(cx - 0.12 * s), _p(y + 0.03 * s), _p(cx + 0.12 * s), _p(y + 0.13 * s)], fill=_CAP
    )


_ICONS: dict[str, Callable[[ImageDraw.ImageDraw, int, int, int, RGB], None]] = {
    "apple": _draw_apple,
    "ball": _draw_ball,
    "book": _draw_book,
    "cup": _draw_cup,
    "clock": _draw_clock,
    "kite": _draw_kite,
    "umbrella": _draw_umbrella,
    "bottle": _draw_bottle,
}


# ---------------------------------------------------------------------------------------------
# Ground-truth text


def caption(scene: Scene) -> str:
    """The exact ground-truth caption of ``scene``.

    For example ``"The image shows two red apples on the left and a blue book in the center.
    The apples are to the left of the book."``: every group with its count, colour and
    position, then one true relation between two groups when the scene has one.
    """
    phrases = [f"{o.phrase()} {_WHERE[o.position]}" for o in scene.objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    text = f"The image shows {listed}."
    relation = scene.relation()
    if relation is not None:
        text += " " + _relation_sentence(*relation)
    return text


def _relation_sentence(subject: SceneObject, relation: str, other: SceneObject) -> str:
    return f"The {subject.noun} {_be(subject)} {relation} {_the(other)}."


def question_answer(scene: Scene, index: int, seed: int = 0) -> tuple[str, str, str]:
    """A ground-truth question about ``scene`` and its exact answer, for QA row ``index``.

    Returns ``(question_type, question, answer)``. The type cycles through
    :data:`QUESTION_TYPES` with ``index`` (a relation question falls back to a count question
    when the scene has no relation); the object asked about is chosen with ``seed``.
    """
    rng = random.Random(derive_seed(seed, "demo-qa", index))
    kind = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    relation = scene.relation()
    if kind == "relation" and relation is None:
        kind = "count"
    target = rng.choice(scene.objects)
    plural = _PLURALS[target.name]
    if kind == "count":
        amount = _NUMBER_WORDS[target.count]
        return (
            kind,
            f"How many {plural} are there?",
            f"There {_be(target)} {amount} {target.color} {target.noun}.",
        )
    if kind == "color":
        return (
            kind,
            f"What color {_be(target)} {_the(target)}?",
            f"The {target.noun} {_be(target)} {target.color}.",
        )
    if kind == "position":
        return (
            kind,
            f"Where {_be(target)} {_the(target)}?",
            f"The {target.noun} {_be(target)} {_WHERE[target.position]} of the image.",
        )
    if kind == "presence":
        return (
            kind,
            f"Is there {_article(target.name)} {target.name} in the image?",
            f"Yes, there {_be(target)} {target.phrase()} {_WHERE[target.position]}.",
        )
    if kind == "absence":
        absent = rng.choice([n for n in OBJECT_NAMES if n not in scene.names()])
        return (
            kind,
            f"Is there {_article(absent)} {absent} in the image?",
            f"No, there is no {absent} in the image; "
            f"there {_be(target)} {target.phrase()} {_WHERE[target.position]}.",
        )
    assert relation is not None  # the fallback above guarantees it
    subject, word, other = relation
    return (
        kind,
        f"Where {_be(subject)} {_the(subject)} relative to {_the(other)}?",
        _relation_sentence(subject, word, other),
    )


def demo_dataset(n: int = 64, seed: int = 0) -> datasets.Dataset:
    """The bundled demo dataset: ``n`` synthetic scenes with exact ground-truth answers.

    Columns: ``id`` (``"demo-0000"``...), ``image`` (a :class:`datasets.Image`), ``question``,
    ``answer``, ``task`` (``"caption"`` for even rows, ``"qa"`` for odd rows) and ``scene``
    (the :class:`Scene` as JSON; rebuild it with :func:`parse_scene`). The same ``(n, seed)``
    always gives the same dataset, down to the PNG bytes.

    Raises:
        ValueError: ``n`` is below 1.
    """
    import datasets  # deferred: importing datasets is slow and only this function needs it

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "task": datasets.Value("string"),
            "scene": datasets.Value("string"),
        }
    )
    rows = []
    for index in range(n):
        scene = make_scene(index, seed)
        buffer = io.BytesIO()
        render_scene(scene).save(buffer, format="PNG")
        if index % 2 == 0:
            task, question, answer = "caption", CAPTION_PROMPT, caption(scene)
        else:
            task = "qa"
            _, question, answer = question_answer(scene, index // 2, seed)
        rows.append(
            {
                "id": f"demo-{index:04d}",
                "image": {"bytes": buffer.getvalue(), "path": None},
                "question": question,
                "answer": answer,
                "task": task,
                "scene": scene.model_dump_json(),
            }
        )
    return datasets.Dataset.from_list(rows, features=features)


# ---------------------------------------------------------------------------------------------
# Truth checking

_COLOR_WORDS = frozenset(
    [
        *COLORS,
        *("orange", "gray", "grey", "silver", "gold", "golden", "beige", "cyan", "magenta"),
        *("violet", "turquoise", "navy", "maroon", "tan", "teal", "crimson", "lime", "indigo"),
    ]
)
_NUMBER_NAMES = "zero one two three four five six seven eight nine ten eleven twelve"
_NUMBERS: dict[str, int] = {word: value for value, word in enumerate(_NUMBER_NAMES.split())} | {
    "single": 1,
    "pair": 2,
    "couple": 2,
    "dozen": 12,
    "no": 0,
}

# A broad vocabulary of concrete nouns (COCO classes and everyday objects), singular forms.
_OBJECT_VOCAB_TEXT = """
    person man woman boy girl child baby people bicycle bike car motorcycle airplane plane bus
    train truck boat ship hydrant sign bench bird cat dog horse sheep cow
    elephant bear zebra giraffe backpack handbag tie suitcase frisbee ski skis snowboard kite
    bat glove skateboard surfboard racket bottle glass cup fork knife spoon bowl banana
    apple sandwich orange broccoli carrot hotdog pizza donut doughnut cake chair couch sofa
    plant bed table toilet tv television laptop mouse remote keyboard phone microwave oven
    toaster sink refrigerator fridge book clock vase scissors teddy toothbrush umbrella ball
    lamp pen pencil hat shoe shoes box basket flower tree window door mug plate candle key
    lemon pear grape grapes strawberry cherry tomato egg bread cookie fish duck rabbit
    balloon toy doll robot star heart flag rock stone leaf cloud sun moon house chicken pig
    """
_OBJECT_VOCAB = frozenset(_OBJECT_VOCAB_TEXT.split())
_IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "knives": "knife",
    "mice": "mouse",
    "leaves": "leaf",
    "geese": "goose",
    "sheep": "sheep",
    "fish": "fish",
}

# Position words (and synonyms) mapped to the layout's positions.
_POSITION_WORDS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "upper": "top",
    "bottom": "bottom",
    "lower": "bottom",
    "center": "center",
    "centre": "center",
    "middle": "center",
}
_RELATION_RE = re.compile(
    r"\b(above|below|under|underneath|beneath|over|on top of|(?:to the )?(?:left|right) of)\b"
)
# Interactions and contact: demo objects never touch, hold or act on each other.
_ACTION_RE = re.compile(
    r"\b(holding|carrying|riding|eating|throwing|catching|playing with|leaning on|"
    r"resting on|sitting on|standing on|lying on|inside|hanging from|stacked on|touching)\b"
)
_EDIT_KINDS = frozenset(
    {"object", "attribute", "count", "spatial", "relation", "text", "reasoning"}
)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+", text.lower())


def _noun_lemma(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    for suffix, replacement in (("ies", "y"), ("oes", "o"), ("ches", "ch"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in _OBJECT_VOCAB:
            return word[: -len(suffix)] + replacement
    return word


def contradicts(
    scene: Scene,
    kind: str,
    injected: str,
    *,
    rejected: str | None = None,
    start: int | None = None,
) -> bool:
    """Whether the ``injected`` text of an edit of ``kind`` is verifiably false for ``scene``.

    Decided conservatively: ``True`` only when the claim is certainly false, ``False`` when it
    is true *or cannot be decided*. From the injected text alone:

    * ``object``: the text names an object from a broad vocabulary (singular or plural) that is
      not in the scene ("a banana", "There is also a dog next to it.").
    * ``attribute``: the text holds a colour word that is the colour of no group. Other
      attributes (size, material) are undecidable.
    * ``count``: the text holds a number (word or digit) that is the count of no group.
    * ``spatial`` and ``relation``: the text holds a relation phrase ("above", "below",
      "to the left of", "under"...) or, for ``spatial``, a position word ("left", "top",
      "middle"...) that is the position of no group. A relation phrase counts as false because
      ground-truth texts state exactly one relation per pair of groups, and every pair of
      positions the layout describes stands in exactly one relation, so any other relation
      word is wrong; this assumes the edit kept the two groups. For ``relation``, words of
      interaction or contact ("holding", "sitting on") are false too, as demo objects never
      touch. A position word that some group does hold is undecidable (the edit may have moved
      another group there).
    * ``text``: always ``True``, since demo scenes contain no writing at all.
    * ``reasoning``: a yes/no conclusion about an object. ``True`` when the text says an object
      of the scene is absent ("No, there is no cup in the image", "there isn't a cup") or says
      that an object the scene lacks is there ("Yes, there is a book at the top", "there are
      two books"); otherwise undecidable (``False``).

    With the whole rejected answer (``rejected``) and where the injected text starts in it
    (``start``), an ``attribute``, ``count`` or ``spatial`` claim is also read in its clause
    (split at ``. ; , :`` and "and"): when the clause names exactly one group of the scene, the
    claim is about that group, and it is false when the colour, number or position it states is
    not that group's ("The apples are red." for white apples, "There are three kites." for one
    kite, "The kites are on the left of the image." for kites on the right).

    Raises:
        ValueError: ``kind`` is not an edit kind, or only one of ``rejected`` and ``start``
            is given, or ``start`` does not point at ``injected`` in ``rejected``.
    """
    kind = str(kind)
    if kind not in _EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; choose one of {sorted(_EDIT_KINDS)}")
    if (rejected is None) != (start is None):
        raise ValueError("give both rejected and start, or neither")
    if rejected is not None and start is not None:
        if rejected[start : start + len(injected)] != injected:
            raise ValueError(f"rejected[{start}:] does not start with the injected text")
        group = _group_of_clause(scene, rejected, start, start + len(injected))
        if group is not None and _false_about(group, kind, injected.lower()):
            return True
    return _contradicts_alone(scene, kind, injected)


_CLAUSE_BREAKS = re.compile(r"[.;,:!?]|\band\b")


def _group_of_clause(scene: Scene, text: str, start: int, end: int) -> SceneObject | None:
    """The one scene group the clause around ``[start, end)`` names, or ``None``."""
    low, high = 0, len(text)
    for match in _CLAUSE_BREAKS.finditer(text.lower()):
        if match.end() <= start:
            low = match.end()
        elif match.start() >= end:
            high = match.start()
            break
    clause = _words(text[low:high].lower())
    named = {_noun_lemma(w) for w in clause} & set(scene.names())
    others = ({_noun_lemma(w) for w in clause} & _OBJECT_VOCAB) - named
    if len(named) != 1 or others:
        return None
    return scene.find(named.pop())


def _false_about(group: SceneObject, kind: str, text: str) -> bool:
    """Whether ``text``, a claim of ``kind`` about ``group``, states a value it does not have."""
    words = _words(text)
    if kind == "attribute":
        colours = [w for w in words if w in _COLOR_WORDS]
        return bool(colours) and group.color not in colours
    if kind == "count":
        numbers = [
            int(w) if w.isdigit() else _NUMBERS[w] for w in words if w.isdigit() or w in _NUMBERS
        ]
        numbers += [1 for w in words if w in ("a", "an")]
        return bool(numbers) and group.count not in numbers
    if kind == "spatial" and not _RELATION_RE.search(text):
        positions = {_POSITION_WORDS[w] for w in words if w in _POSITION_WORDS}
        return bool(positions) and group.position not in positions
    return False


_NEGATOR = re.compile(
    r"\b(?:no|(?:is|are|was|were)\s*(?:n't|not)\s+(?:a|an|any)|(?:don't|do not|cannot|can't)"
    r"\s+see\s+(?:a|an|any))\s"
)
_ASSERTION = re.compile(
    r"\bthere\s+(?:is|are|was|were)\s+(?:a|an|one|two|three|four|five|six|seven|eight|nine|ten|"
    r"several|some|\d+)\s"
)


def _object_after(text: str, end: int) -> str | None:
    """The first vocabulary object among the three words after ``end``, as its lemma."""
    for word in _words(text[end:])[:3]:
        noun = _noun_lemma(word)
        if noun in _OBJECT_VOCAB:
            return noun
    return None


def _reasoning_is_false(scene: Scene, text: str) -> bool:
    """Whether ``text`` says a scene object is absent or an absent object is there."""
    negated = {n for m in _NEGATOR.finditer(text) if (n := _object_after(text, m.end()))}
    if negated & set(scene.names()):
        return True
    asserted = {n for m in _ASSERTION.finditer(text) if (n := _object_after(text, m.end()))}
    return bool(asserted - negated - set(scene.names()))


def _contradicts_alone(scene: Scene, kind: str, injected: str) -> bool:
    """:func:`contradicts` from the injected text alone."""
    text = injected.lower()
    words = _words(text)
    if kind == "object":
        nouns = {_noun_lemma(w) for w in words} & _OBJECT_VOCAB
        return any(noun not in scene.names() for noun in nouns)
    if kind == "attribute":
        return any(w in _COLOR_WORDS and w not in scene.colors() for w in words)
    if kind == "count":
        numbers = [
            int(w) if w.isdigit() else _NUMBERS[w] for w in words if w.isdigit() or w in _NUMBERS
        ]
        return any(number not in scene.counts() for number in numbers)
    if kind in ("spatial", "relation"):
        if _RELATION_RE.search(text):
            return True
        if kind == "relation":
            return _ACTION_RE.search(text) is not None
        positions = {_POSITION_WORDS[w] for w in words if w in _POSITION_WORDS}
        return any(p not in scene.positions() for p in positions)
    if kind == "reasoning":
        return _reasoning_is_false(scene, text)
    return kind == "text"
