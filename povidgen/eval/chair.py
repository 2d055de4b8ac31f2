"""CHAIR (Rohrbach et al. 2018): how many of the objects a caption names are not in the image.

For captions ``c_1 .. c_n`` of images whose present object categories are ``P_1 .. P_n``, let
``M_i`` be the list of object mentions of ``c_i`` (every mention counted, in order; see
:class:`~povidgen.eval.Vocabulary`) and ``H_i`` those whose category is not in ``P_i``:

.. math::

    \\mathrm{CHAIR_S} = \\frac{|\\{i : |H_i| > 0\\}|}{n}, \\qquad
    \\mathrm{CHAIR_I} = \\frac{\\sum_i |H_i|}{\\sum_i |M_i|}, \\qquad
    \\mathrm{recall} = \\frac{\\sum_i |\\mathrm{set}(M_i) \\cap P_i|}{\\sum_i |P_i|}

as the reference implementation counts (``utils/chair.py``): CHAIR_I counts *every* mention,
so "a dog ... the dog" are two mentions (two hallucinations if there is no dog), while recall
counts each present category once per image, pooled over all images, so that a model that
says less does not look better. A caption with no mention does not hallucinate; with no
mention at all CHAIR_I is 0, and with no present object recall is 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from povidgen.eval.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    bootstrap_interval,
    ratio,
)
from povidgen.eval.vocabulary import Vocabulary

__all__ = ["CHAIR_FIGURES", "CaptionChair", "ChairResult", "chair", "resolve_vocabulary"]

CHAIR_FIGURES = ("chair_s", "chair_i", "recall")
"""The figures of a :class:`ChairResult`, in report order."""


@dataclass(frozen=True)
class CaptionChair:
    """CHAIR's reading of one caption.

    Attributes:
        caption: the caption as given.
        present: the categories present in the image, sorted.
        words: the words or phrases read as objects, in caption order, every occurrence.
        mentioned: the category of each of ``words``.
        hallucinated: the categories of the mentions that are not present, in caption order,
            every occurrence.
        recalled: the present categories mentioned at least once, sorted.
    """

    caption: str
    present: tuple[str, ...]
    words: tuple[str, ...]
    mentioned: tuple[str, ...]
    hallucinated: tuple[str, ...]
    recalled: tuple[str, ...]

    @property
    def hallucinates(self) -> bool:
        """Whether the caption names at least one object that is not present."""
        return bool(self.hallucinated)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {
            "caption": self.caption,
            "present": list(self.present),
            "words": list(self.words),
            "mentioned": list(self.mentioned),
            "hallucinated": list(self.hallucinated),
            "recalled": list(self.recalled),
        }


@dataclass(frozen=True)
class ChairResult:
    """CHAIR over a set of captions, with counts, bootstrap intervals and per-caption detail.

    Attributes:
        chair_s: captions with at least one hallucinated mention / captions, in ``[0, 1]``.
        chair_i: hallucinated mentions / all mentions, in ``[0, 1]``.
        recall: present categories mentioned / present categories, pooled, in ``[0, 1]``.
        n_captions, n_hallucinating: captions, and those with a hallucination.
        n_mentions, n_hallucinated: object mentions, and those not present.
        n_present, n_recalled: present categories summed over images, and those mentioned.
        captions: one :class:`CaptionChair` per caption, in input order.
        intervals: ``{"chair_s" | "chair_i" | "recall": Interval}``, percentile bootstrap over
            captions (one seed, so all three come from the same resamples).
        confidence, resamples, seed: how the intervals were made.
        vocabulary: the vocabulary's name (``"coco"``, ``"custom"``...).
    """

    chair_s: float
    chair_i: float
    recall: float
    n_captions: int
    n_hallucinating: int
    n_mentions: int
    n_hallucinated: int
    n_present: int
    n_recalled: int
    captions: tuple[CaptionChair, ...] = field(repr=False)
    intervals: Mapping[str, Interval]
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    vocabulary: str = "coco"

    def figures(self) -> dict[str, float]:
        """``{"chair_s": ..., "chair_i": ..., "recall": ...}``."""
        return {name: float(getattr(self, name)) for name in CHAIR_FIGURES}

    def to_dict(self) -> dict[str, Any]:
        """Figures, intervals, counts, settings and per-caption detail, JSON-ready."""
        return {
            "figures": self.figures(),
            "intervals": {k: {"low": v.low, "high": v.high} for k, v in self.intervals.items()},
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "vocabulary": self.vocabulary,
            "counts": {
                "captions": self.n_captions,
                "hallucinating_captions": self.n_hallucinating,
                "mentions": self.n_mentions,
                "hallucinated_mentions": self.n_hallucinated,
                "present_objects": self.n_present,
                "recalled_objects": self.n_recalled,
            },
            "captions": [caption.to_dict() for caption in self.captions],
        }


def resolve_vocabulary(vocabulary: Vocabulary | Mapping[str, str] | None) -> Vocabulary:
    """``vocabulary`` as a :class:`Vocabulary`: ``None`` is COCO's, a mapping a custom one."""
    if vocabulary is None:
        return Vocabulary.coco()
    if isinstance(vocabulary, Vocabulary):
        return vocabulary
    return Vocabulary(vocabulary)


def chair(
    captions: Sequence[str],
    objects: Sequence[Iterable[str]],
    *,
    vocabulary: Vocabulary | Mapping[str, str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ChairResult:
    """CHAIR_S, CHAIR_I and object recall of ``captions``, with 95% bootstrap intervals.

    Args:
        captions: ``captions[i]`` is a model's caption of image ``i``.
        objects: ``objects[i]`` names the objects present in image ``i``: categories or
            synonyms of the vocabulary (``"ball"`` is COCO's ``"sports ball"``), any number
            and order, repeats ignored.
        vocabulary: ``None`` for CHAIR's COCO vocabulary (:meth:`Vocabulary.coco`), a
            :class:`Vocabulary`, or a ``{word: category}`` mapping, e.g.
            :data:`~povidgen.eval.SCENE_VOCABULARY` for povidgen's demo scenes.
        resamples, confidence, seed: of the percentile bootstrap over captions
            (:func:`~povidgen.eval.bootstrap_interval`).

    Raises:
        ValueError: ``captions`` is empty or not as long as ``objects``, or an object is not
            in the vocabulary.

    >>> result = chair(["A dog chases a cat.", "A red ball."], [["dog"], ["sports ball"]])
    >>> result.chair_s, result.chair_i, result.recall
    (0.5, 0.3333333333333333, 1.0)
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of strings, not one string")
    if len(captions) != len(objects):
        raise ValueError(f"{len(captions)} captions but {len(objects)} object lists")
    if not captions:
        raise ValueError("no captions to score")
    vocab = resolve_vocabulary(vocabulary)
    details: list[CaptionChair] = []
    for caption, names in zip(captions, objects, strict=True):
        if isinstance(names, str):
            raise TypeError(f"objects must be lists of names, not the string {names!r}")
        present = vocab.categories_of(names)
        found = vocab.mentions(caption)
        mentioned = tuple(category for _, category in found)
        details.append(
            CaptionChair(
                caption=caption,
                present=tuple(sorted(present)),
                words=tuple(word for word, _ in found),
                mentioned=mentioned,
                hallucinated=tuple(c for c in mentioned if c not in present),
                recalled=tuple(sorted(present & set(mentioned))),
            )
        )
    hallucinating = [int(d.hallucinates) for d in details]
    hallucinated = [len(d.hallucinated) for d in details]
    mentions = [len(d.mentioned) for d in details]
    recalled = [len(d.recalled) for d in details]
    present_counts = [len(d.present) for d in details]

    def interval(top: Sequence[int], bottom: Sequence[int] | None) -> Interval:
        return bootstrap_interval(
            top, bottom, resamples=resamples, confidence=confidence, seed=seed
        )

    return ChairResult(
        chair_s=ratio(sum(hallucinating), len(details)),
        chair_i=ratio(sum(hallucinated), sum(mentions)),
        recall=ratio(sum(recalled), sum(present_counts)),
        n_captions=len(details),
        n_hallucinating=sum(hallucinating),
        n_mentions=sum(mentions),
        n_hallucinated=sum(hallucinated),
        n_present=sum(present_counts),
        n_recalled=sum(recalled),
        captions=tuple(details),
        intervals={
            "chair_s": interval(hallucinating, None),
            "chair_i": interval(hallucinated, mentions),
            "recall": interval(recalled, present_counts),
        },
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        vocabulary=vocab.name,
    )
