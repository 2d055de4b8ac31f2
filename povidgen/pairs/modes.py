"""Pair modes: which contrast each pair carries, and how a build mixes them.

POVID has two kinds of dispreferred data (``docs/method.md``): a *text* contrast (the same
image, a hallucinated answer) and an *image* contrast (the correct answer seen through a
distorted image; POVID's stage 2 turns it into the model's own argmax answer at training time).
A pair carries one of them or both:

* ``text``: ``rejected`` is the hallucinated answer; no rejected image (``rejected_images`` is
  ``null`` where the column exists); the contrast is answer against answer on one image.
* ``image``: ``rejected`` is **the chosen answer**; ``rejected_images`` holds the distorted
  image; the contrast is image against image under one answer.
* ``both``: the hallucinated answer and the distorted image (POVID stage 2).

An image-contrast row keeps TRL's columns: its ``rejected`` message repeats ``chosen``, since
the rejected *response* of the image contrast is the chosen answer under the distorted image
(mDPO's conditional preference, ``povidgen train --mode image``) or the policy's own argmax
answer under it (POVID stage 2, ``--mode povid``), both made at training time; the hallucinator
is not called for it. A text-contrast row is not distorted. ``both`` is what a build with a
distorter made before pair modes existed, and ``text`` what one without a distorter made.

A mix gives each mode a weight; row ``id`` of a build with seed ``s`` draws
``u = derive_seed(s, id, "pair-mode") / 2**63``, uniform on ``[0, 1)``, and takes the first
mode (in the order text, image, both) whose cumulative fraction exceeds ``u``. The draw depends
on the seed and the id alone, never on row order, shards or an interrupted run, so resumed and
sharded builds give every row the same mode as one run, and over ``n`` rows the count of a mode
of fraction ``p`` is Binomial(``n``, ``p``): within ``4 sqrt(n p (1 - p))`` of ``n p`` all but
about once in 16,000 builds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from povidgen.seeding import derive_seed

__all__ = [
    "BUILD_MODES",
    "PAIR_MODES",
    "BuildMode",
    "PairMode",
    "PairModes",
    "pair_mode_of",
    "parse_mix",
]

PairMode = Literal["text", "image", "both"]
"""The contrast one pair carries (see the module docstring)."""
PAIR_MODES: tuple[PairMode, ...] = get_args(PairMode)

BuildMode = Literal["text", "image", "both", "mix"]
"""What a build makes: one mode for every row, or a seeded mix of them."""
BUILD_MODES: tuple[BuildMode, ...] = get_args(BuildMode)

_SCALE = float(2**63)  # derive_seed gives 63-bit seeds


@dataclass(frozen=True)
class PairModes:
    """How a build gives each row its pair mode: fractions of ``text``, ``image``, ``both``
    (non-negative, summing to 1; one of them 1 for a build of one mode).

    Example::

        modes = PairModes.mix({"text": 3, "image": 1})  # 75% text-, 25% image-contrast
        modes.mode_of(seed=0, row_id="coco-42")  # the same answer in every run and shard
    """

    text: float
    image: float
    both: float

    def __post_init__(self) -> None:
        values = (self.text, self.image, self.both)
        if not all(math.isfinite(v) and v >= 0 for v in values) or not math.isclose(
            sum(values), 1.0, abs_tol=1e-9
        ):
            raise ValueError(f"pair mode fractions must be >= 0 and sum to 1, got {values}")

    @classmethod
    def only(cls, mode: PairMode) -> PairModes:
        """Every row in ``mode``."""
        if mode not in PAIR_MODES:
            raise ValueError(f"pair mode must be one of {', '.join(PAIR_MODES)}; got {mode!r}")
        return cls(**{m: 1.0 if m == mode else 0.0 for m in PAIR_MODES})

    @classmethod
    def mix(cls, weights: Mapping[str, float]) -> PairModes:
        """Rows drawn by ``weights`` (``{"text": 3, "image": 1}``; a missing mode weighs 0),
        normalised to fractions.

        Raises:
            ValueError: an unknown mode, a negative or non-finite weight, or all weights 0.
        """
        unknown = sorted(set(weights) - set(PAIR_MODES))
        if unknown:
            raise ValueError(
                f"mix: unknown pair mode {unknown[0]!r}; the modes are {', '.join(PAIR_MODES)}"
            )
        values: list[float] = []
        for mode in PAIR_MODES:
            raw = weights.get(mode, 0.0)
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"mix: the weight of {mode!r} is not a number (got {raw!r})")
            value = float(raw)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"mix: the weight of {mode!r} must be >= 0, got {raw!r}")
            values.append(value)
        total = sum(values)
        if total <= 0:
            raise ValueError("mix: at least one weight must be > 0")
        text, image, both = (v / total for v in values)
        return cls(text=text, image=image, both=both)

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> PairModes:
        """The modes of the build whose :meth:`~povidgen.PairBuilder.configuration` is
        ``configuration``: its ``pairs.modes`` entry, else what a build without pair modes
        made (``both`` with a distorter, ``text`` without)."""
        pairs = configuration.get("pairs")
        if isinstance(pairs, Mapping) and isinstance(pairs.get("modes"), Mapping):
            return cls(**{m: float(pairs["modes"].get(m, 0.0)) for m in PAIR_MODES})
        return cls.legacy(configuration)

    @classmethod
    def legacy(cls, configuration: Mapping[str, Any]) -> PairModes:
        """What a build of ``configuration`` made before pair modes existed: ``both`` with a
        distorter, ``text`` without."""
        return cls.only("both" if configuration.get("distorter") is not None else "text")

    @classmethod
    def recorded(cls, configuration: Mapping[str, Any]) -> bool:
        """Whether the rows of a build of ``configuration`` carry ``provenance.pair_mode``
        (its modes differ from :meth:`legacy`)."""
        return cls.from_configuration(configuration) != cls.legacy(configuration)

    def fraction(self, mode: PairMode) -> float:
        """The share of rows in ``mode``."""
        value: float = getattr(self, mode)
        return value

    @property
    def single(self) -> PairMode | None:
        """The one mode of every row, or ``None`` for a mix."""
        for mode in PAIR_MODES:
            if self.fraction(mode) == 1.0:
                return mode
        return None

    def uses(self, mode: PairMode) -> bool:
        """Whether any row can get ``mode``."""
        return self.fraction(mode) > 0

    def mode_of(self, seed: int, row_id: str) -> PairMode:
        """The mode of row ``row_id`` in a build with global ``seed`` (see the module
        docstring: a pure function of the two)."""
        single = self.single
        if single is not None:
            return single
        u = derive_seed(seed, row_id, "pair-mode") / _SCALE
        chosen: PairMode | None = None
        cumulative = 0.0
        for mode in PAIR_MODES:
            if self.fraction(mode) <= 0:
                continue
            chosen = mode  # the last mode with a share takes what rounding leaves above 1
            cumulative += self.fraction(mode)
            if u < cumulative:
                return mode
        assert chosen is not None
        return chosen

    def count(self, seed: int, row_ids: Iterable[str]) -> dict[str, int]:
        """How many of ``row_ids`` get each mode (every mode listed, in order)."""
        counts = Counter(self.mode_of(seed, row_id) for row_id in row_ids)
        return {mode: counts.get(mode, 0) for mode in PAIR_MODES}

    def as_dict(self) -> dict[str, float]:
        """The fractions by mode, as a build's configuration records them."""
        return {mode: self.fraction(mode) for mode in PAIR_MODES}


def parse_mix(text: str) -> dict[str, float]:
    """``--mix``'s value: ``TEXT:IMAGE`` or ``TEXT:IMAGE:BOTH`` weights (``3:1``, ``1:1:2``,
    ``0.7:0.3``) as a mapping for :meth:`PairModes.mix`.

    Raises:
        ValueError: not two or three non-negative numbers separated by ``:``, or all zero.
    """
    parts = [part.strip() for part in str(text).split(":")]
    if len(parts) not in (2, 3):
        raise ValueError(f"expected TEXT:IMAGE or TEXT:IMAGE:BOTH weights (e.g. 3:1), got {text!r}")
    weights: dict[str, float] = {}
    for mode, part in zip(PAIR_MODES, parts, strict=False):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"mix weight {part!r} (for {mode}) is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"mix weight {part!r} (for {mode}) must be a number >= 0")
        weights[mode] = value
    if sum(weights.values()) <= 0:
        raise ValueError(f"mix {text!r}: at least one weight must be > 0")
    return weights


def pair_mode_of(row: Mapping[str, Any]) -> PairMode:
    """The pair mode of a published row: its ``provenance.pair_mode`` when the build recorded
    one, else read from the row: ``rejected`` text equal to ``chosen`` is ``image``, a stored
    rejected image ``both``, anything else ``text`` (a build of ``both`` written with
    ``store_rejected_images=False`` reads as ``text``: its rows do not say otherwise)."""
    provenance = row.get("provenance")
    if isinstance(provenance, Mapping):
        recorded = provenance.get("pair_mode")
        if recorded in PAIR_MODES:
            mode: PairMode = recorded
            return mode
    if _text(row.get("rejected")) == _text(row.get("chosen")):
        return "image"
    return "both" if row.get("rejected_images") else "text"


def _text(messages: Any) -> str:
    if isinstance(messages, str) or messages is None:
        return messages or ""
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
            continue
        for part in content or ():
            if isinstance(part, Mapping) and part.get("type") == "text" and part.get("text"):
                parts.append(str(part["text"]))
    return "".join(parts)
