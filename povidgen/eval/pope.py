"""POPE (Li et al. 2023): polling a model with "Is there a X in the image?" questions.

:func:`pope_questions` asks, for each image, about ``k`` objects that are present (label yes)
and ``k`` that are not (label no), the absent ones sampled one of POPE's three ways:

* ``random``: uniformly from the vocabulary's objects that are absent;
* ``popular``: the ``k`` absent objects that are present in the most images of the
  annotations (ties by name);
* ``adversarial``: the ``k`` absent objects that co-occur most with the present ones:
  :math:`\\mathrm{score}(o) = \\sum_{p \\in P_i} |\\{j : p \\in P_j, o \\in P_j\\}|` over the
  annotations (ties by popularity, then name).

:func:`pope` scores the answers as POPE's evaluation script does: the answer's first sentence
(the text before the first ``"."``), commas removed, split into words; if ``"No"``, ``"no"``
or ``"not"`` is among them the answer is no, otherwise yes (so an empty answer is yes). With
yes as the positive class:

.. math::

    \\mathrm{accuracy} = \\frac{TP + TN}{N}, \\quad
    \\mathrm{precision} = \\frac{TP}{TP + FP}, \\quad
    \\mathrm{recall} = \\frac{TP}{TP + FN}, \\quad
    F_1 = \\frac{2 TP}{2 TP + FP + FN}, \\quad
    \\mathrm{yes\\ ratio} = \\frac{TP + FP}{N}

(a ratio with a zero denominator is 0).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal, get_args

from povidgen.eval.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    bootstrap_interval,
    ratio,
)
from povidgen.seeding import derive_seed

__all__ = [
    "POPE_FIGURES",
    "POPE_TEMPLATE",
    "STRATEGIES",
    "PopeQuestion",
    "PopeResult",
    "Strategy",
    "parse_yes_no",
    "pope",
    "pope_questions",
]

Strategy = Literal["random", "popular", "adversarial"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
"""POPE's ways of choosing the absent objects."""

POPE_TEMPLATE = "Is there a {} in the image?"
"""POPE's question, as its released question files word it (always "a")."""

POPE_FIGURES = ("accuracy", "precision", "recall", "f1", "yes_ratio")
"""The figures of a :class:`PopeResult`, in report order."""


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question.

    Attributes:
        image_index: the image asked about (an index into the annotations).
        object: the object asked about.
        label: ``True`` when the object is present (the right answer is yes).
        question: ``"Is there a {object} in the image?"``.
    """

    image_index: int
    object: str
    label: bool
    question: str


def _present_sets(objects: Sequence[Iterable[str]]) -> list[frozenset[str]]:
    sets = []
    for names in objects:
        if isinstance(names, str):
            raise TypeError(f"objects must be lists of names, not the string {names!r}")
        sets.append(frozenset(" ".join(name.split()) for name in names if name.strip()))
    return sets


def pope_questions(
    objects: Sequence[Iterable[str]],
    *,
    vocabulary: Iterable[str] | None = None,
    n_per_image: int = 3,
    strategy: Strategy = "random",
    seed: int = 0,
) -> list[PopeQuestion]:
    """POPE's balanced yes/no questions about the images whose objects are ``objects``.

    For image ``i`` with present objects ``P_i`` and absent candidates ``A_i`` (the
    vocabulary minus ``P_i``), ``k = min(n_per_image, |P_i|, |A_i|)`` present objects are
    drawn at random and ``k`` absent ones by ``strategy``; the questions alternate yes, no,
    yes, no... An image with no present object gets no question (POPE's yes questions need
    one). The draws of image ``i`` are seeded by ``derive_seed(seed, "pope", i)``, so they do
    not change when other images are added or dropped.

    Args:
        objects: ``objects[i]`` names the objects in image ``i``; also the annotations that
            ``popular`` and ``adversarial`` count over.
        vocabulary: the objects that may be asked about as absent; default every object named
            in ``objects``.
        n_per_image: ``k``'s upper bound (at least 1).
        strategy: ``"random"``, ``"popular"`` or ``"adversarial"`` (see the module).
        seed: the seed of the random draws.

    Raises:
        ValueError: an unknown strategy or ``n_per_image < 1``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if n_per_image < 1:
        raise ValueError(f"n_per_image must be at least 1, got {n_per_image}")
    present = _present_sets(objects)
    everything = set().union(*present) if present else set()
    pool = sorted(everything if vocabulary is None else {" ".join(v.split()) for v in vocabulary})
    popularity = Counter(name for names in present for name in names)
    together: Counter[tuple[str, str]] = Counter()
    for names in present:
        for a, b in combinations(sorted(names), 2):
            together[a, b] += 1
            together[b, a] += 1

    questions: list[PopeQuestion] = []
    for index, names in enumerate(present):
        rng = random.Random(derive_seed(seed, "pope", index))
        absent = [name for name in pool if name not in names]
        k = min(n_per_image, len(names), len(absent))
        if k == 0:
            continue
        yes = rng.sample(sorted(names), k)
        if strategy == "random":
            no = rng.sample(absent, k)
        elif strategy == "popular":
            no = sorted(absent, key=lambda name: (-popularity[name], name))[:k]
        else:

            def closeness(name: str, names: frozenset[str] = names) -> tuple[int, int, str]:
                score = sum(together[p, name] for p in names)
                return (-score, -popularity[name], name)

            no = sorted(absent, key=closeness)[:k]
        for present_name, absent_name in zip(yes, no, strict=True):
            questions.append(
                PopeQuestion(index, present_name, True, POPE_TEMPLATE.format(present_name))
            )
            questions.append(
                PopeQuestion(index, absent_name, False, POPE_TEMPLATE.format(absent_name))
            )
    return questions


def parse_yes_no(answer: str) -> bool:
    """POPE's reading of a free-text answer: ``True`` for yes, ``False`` for no.

    The first sentence (the text before the first ``"."``), commas removed, split at
    whitespace; no when ``"No"``, ``"no"`` or ``"not"`` is one of the words. Case matters as
    in POPE (``"NO"`` reads as yes); POPE splits at single spaces, povidgen at any whitespace,
    so ``"No\\nthere is..."`` is no.

    >>> parse_yes_no("No, there is no dog."), parse_yes_no("Yes."), parse_yes_no("It is not.")
    (False, True, False)
    """
    sentence = answer.split(".", 1)[0]
    words = set(sentence.replace(",", "").split())
    return not ({"No", "no", "not"} & words)


def _label(value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return value.strip().lower() == "yes"
    raise ValueError(f"a POPE label is a bool or 'yes'/'no', not {value!r}")


@dataclass(frozen=True)
class PopeResult:
    """POPE's figures over a set of answers, with counts and bootstrap intervals.

    Attributes:
        accuracy, precision, recall, f1, yes_ratio: in ``[0, 1]`` (see the module).
        tp, fp, tn, fn: the confusion counts, yes the positive class.
        answers: the answers as given.
        predictions: the parsed answers, ``True`` for yes, in input order.
        labels: the labels, ``True`` for yes.
        intervals: ``{figure: Interval}``, percentile bootstrap over the resampling units
            (images when ``groups`` was given, otherwise questions).
        confidence, resamples, seed: how the intervals were made.
        questions: the questions asked, when known (:func:`~povidgen.eval.evaluate_pope`
            fills them in; :func:`pope` leaves them empty).
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int
    answers: tuple[str, ...] = field(repr=False)
    predictions: tuple[bool, ...] = field(repr=False)
    labels: tuple[bool, ...] = field(repr=False)
    intervals: Mapping[str, Interval]
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    questions: tuple[PopeQuestion, ...] = field(default=(), repr=False)

    @property
    def n(self) -> int:
        """The number of answers."""
        return self.tp + self.fp + self.tn + self.fn

    def figures(self) -> dict[str, float]:
        """``{"accuracy": ..., "precision": ..., "recall": ..., "f1": ..., "yes_ratio": ...}``."""
        return {name: float(getattr(self, name)) for name in POPE_FIGURES}

    def to_dict(self) -> dict[str, Any]:
        """Figures, intervals, counts, settings and per-answer detail, JSON-ready."""
        items = []
        for i, (answer, said, truth) in enumerate(
            zip(self.answers, self.predictions, self.labels, strict=True)
        ):
            item: dict[str, Any] = {"answer": answer, "predicted": said, "label": truth}
            if self.questions:
                question = self.questions[i]
                item = {
                    "image_index": question.image_index,
                    "object": question.object,
                    "question": question.question,
                    **item,
                }
            items.append(item)
        return {
            "figures": self.figures(),
            "intervals": {k: {"low": v.low, "high": v.high} for k, v in self.intervals.items()},
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "counts": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn, "n": self.n},
            "answers": items,
        }


def pope(
    answers: Sequence[str],
    labels: Sequence[bool | str],
    *,
    groups: Sequence[int] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PopeResult:
    """POPE's accuracy, precision, recall, F1 and yes ratio of free-text ``answers``.

    Args:
        answers: the model's answers, read with :func:`parse_yes_no`.
        labels: the right answers: ``True``/``False`` or ``"yes"``/``"no"``.
        groups: the image of each answer (e.g. :attr:`PopeQuestion.image_index`): the
            bootstrap then resamples images, keeping each image's questions together; without
            it every answer is its own unit.
        resamples, confidence, seed: of the percentile bootstrap
            (:func:`~povidgen.eval.bootstrap_interval`).

    Raises:
        ValueError: no answers, lengths that differ, or a label that is not yes or no.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not one string")
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers but {len(labels)} labels")
    if not answers:
        raise ValueError("no answers to score")
    if groups is not None and len(groups) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(groups)} groups")
    truth = tuple(_label(label) for label in labels)
    said = tuple(parse_yes_no(answer) for answer in answers)

    # per unit: [tp, fp, tn, fn]
    unit_of = list(range(len(answers))) if groups is None else list(groups)
    order = {unit: i for i, unit in enumerate(dict.fromkeys(unit_of))}
    cells = [[0, 0, 0, 0] for _ in order]
    for unit, yes, right in zip(unit_of, said, truth, strict=True):
        cells[order[unit]][(0 if right else 1) if yes else (3 if right else 2)] += 1
    tp, fp, tn, fn = (sum(cell[j] for cell in cells) for j in range(4))

    def interval(top: list[int], bottom: list[int]) -> Interval:
        return bootstrap_interval(
            top, bottom, resamples=resamples, confidence=confidence, seed=seed
        )

    n_unit = [sum(cell) for cell in cells]
    intervals = {
        "accuracy": interval([c[0] + c[2] for c in cells], n_unit),
        "precision": interval([c[0] for c in cells], [c[0] + c[1] for c in cells]),
        "recall": interval([c[0] for c in cells], [c[0] + c[3] for c in cells]),
        "f1": interval([2 * c[0] for c in cells], [2 * c[0] + c[1] + c[3] for c in cells]),
        "yes_ratio": interval([c[0] + c[1] for c in cells], n_unit),
    }
    n = len(answers)
    return PopeResult(
        accuracy=ratio(tp + tn, n),
        precision=ratio(tp, tp + fp),
        recall=ratio(tp, tp + fn),
        f1=ratio(2 * tp, 2 * tp + fp + fn),
        yes_ratio=ratio(tp + fp, n),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        answers=tuple(answers),
        predictions=said,
        labels=truth,
        intervals=intervals,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
