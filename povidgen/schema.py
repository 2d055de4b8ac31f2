"""The data model: what flows from a source, through hallucinators and distorters, into pairs.

* :class:`Example` is one input row: an image, a prompt and the correct answer (and, for a
  turn of a multi-turn conversation, the :class:`Exchange` s before it).
* :class:`Hallucination` is a hallucinator's output: the corrupted answer plus typed
  :class:`Edit` records, each with the exact character span ``[start, end)`` of the injected
  text inside the corrupted answer, so ``rejected[start:end] == injected`` always holds.
* :class:`PreferencePair` is one finished row: chosen = the correct answer, rejected = the
  corrupted one, optionally with a distorted image (POVID stage 2).
* :class:`RowError` records why a row did not become a pair; runs keep these instead of
  raising, so no row is lost silently.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from povidgen.redact import scrub

__all__ = [
    "INJECTED_KINDS",
    "Edit",
    "EditKind",
    "Example",
    "Exchange",
    "Hallucination",
    "PreferencePair",
    "Provenance",
    "RowError",
    "Stage",
]


class EditKind(StrEnum):
    """The type of an injected error, after POVID's categories plus text and spatial errors."""

    OBJECT = "object"
    """An object that is absent from the image (often one that co-occurs with those present)."""
    ATTRIBUTE = "attribute"
    """A wrong attribute of a present object: colour, size, pose, material."""
    COUNT = "count"
    """A wrong number of objects."""
    RELATION = "relation"
    """A wrong relation or action between entities ("holding" for "throwing")."""
    SPATIAL = "spatial"
    """A wrong position or direction ("left" for "right", "above" for "below")."""
    TEXT = "text"
    """Wrong text read from the image (signs, labels, OCR content)."""
    REASONING = "reasoning"
    """A corrupted reasoning step or conclusion that reaches a wrong answer."""
    OMISSION = "omission"
    """A present object left out of the answer (its ``injected`` text may be empty).

    Not a hallucination: an incomplete answer, rejected so that preference training does not
    reward saying less (see :class:`~povidgen.RuleHallucinator`'s ``omissions``)."""


INJECTED_KINDS: tuple[EditKind, ...] = tuple(k for k in EditKind if k is not EditKind.OMISSION)
"""The kinds that inject a wrong statement: every :class:`EditKind` but ``OMISSION``. The
default of the hallucinators' ``kinds``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Exchange(_Model):
    """One earlier exchange of a multi-turn conversation: a user question and the assistant's
    answer, kept as context for a later turn (see :mod:`povidgen.sources.conversations`).

    ``question`` holds no ``<image>`` placeholder: the image belongs to the first user message.
    """

    question: str
    answer: str

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or whitespace only")
        return value


class Example(_Model):
    """One input row.

    Attributes:
        id: a stable, non-empty identifier; seeds and provenance are keyed on it.
        image: the image, already decoded (see :func:`povidgen.sources.images.to_rgb`).
        prompt: the user's question or instruction, without any ``<image>`` placeholder.
        answer: the correct answer; it becomes the *chosen* response.
        metadata: free-form extra fields carried through to the caller.
        seed: the per-example seed; :class:`povidgen.PairBuilder` derives it from the global
            seed and ``id`` with :func:`povidgen.derive_seed`.
        context: for turn ``k`` of a multi-turn conversation, its ``k`` earlier exchanges,
            oldest first (the image goes with the first question); empty for a single turn.
            ``prompt`` and ``answer`` are then turn ``k``'s question and answer: only the
            answer is corrupted, the context is what the user and the assistant said before.
    """

    id: str = Field(min_length=1)
    image: Image.Image
    prompt: str
    answer: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    context: list[Exchange] = Field(default_factory=list)

    @field_validator("prompt", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or whitespace only")
        return value


class Edit(_Model):
    """One injected error.

    ``start`` and ``end`` index the *rejected* answer: ``rejected[start:end] == injected``.
    ``original`` is the text it replaced in the chosen answer (``""`` for a pure insertion).
    Only an :attr:`EditKind.OMISSION` may have an empty ``injected`` (a pure deletion, whose
    span is empty); it must have a non-empty ``original``.
    """

    kind: EditKind
    original: str
    injected: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)

    @model_validator(mode="after")
    def _span_matches_length(self) -> Edit:
        if not self.injected and self.kind is not EditKind.OMISSION:
            raise ValueError(
                f"a {self.kind.value} edit must inject some text; only an omission may not"
            )
        if self.kind is EditKind.OMISSION and not self.original:
            raise ValueError("an omission must name what it left out (original is empty)")
        if self.end - self.start != len(self.injected):
            raise ValueError(
                f"span [{self.start}, {self.end}) has length {self.end - self.start} but the "
                f"injected text {self.injected!r} has length {len(self.injected)}"
            )
        if self.original == self.injected:
            raise ValueError(f"edit does not change anything: {self.original!r}")
        return self


class Hallucination(_Model):
    """A corrupted answer and the typed edits that made it.

    Validation guarantees that every edit's span points at its injected text inside
    ``rejected`` and that spans do not overlap.
    """

    rejected: str
    edits: list[Edit] = Field(default_factory=list)

    @model_validator(mode="after")
    def _spans_point_at_injected_text(self) -> Hallucination:
        if not self.rejected.strip():
            raise ValueError("the rejected answer is empty")
        previous_end = -1
        for edit in sorted(self.edits, key=lambda e: e.start):
            if edit.end > len(self.rejected):
                raise ValueError(
                    f"edit span [{edit.start}, {edit.end}) runs past the end of the rejected "
                    f"answer (length {len(self.rejected)})"
                )
            found = self.rejected[edit.start : edit.end]
            if found != edit.injected:
                raise ValueError(
                    f"edit span [{edit.start}, {edit.end}) holds {found!r}, "
                    f"not the injected text {edit.injected!r}"
                )
            if edit.start < previous_end:
                raise ValueError(f"edit spans overlap at character {edit.start}")
            previous_end = edit.end
        return self


class Provenance(_Model):
    """How a pair was made: enough to make it again exactly.

    ``example_seed`` is the seed both the hallucinator and the distorter used for this row
    (``derive_seed(seed, id)``). ``turn`` is set for pairs built from conversations (LLaVA
    ``conversations`` records): the 0-based index of the exchange whose answer is ``chosen``,
    which is also the number of earlier exchanges in the prompt; ``None`` for plain rows.
    """

    hallucinator: str
    hallucinator_params: dict[str, Any]
    distorter: str | None
    distorter_params: dict[str, Any] | None
    seed: int
    example_seed: int
    edits: list[Edit]
    povidgen_version: str
    turn: int | None = Field(default=None, ge=0)


class PreferencePair(_Model):
    """A finished preference pair: chosen is the correct answer, rejected the corrupted one.

    ``rejected_image`` is the distorted image when a distorter was used (the image-contrast
    rejected of POVID stage 2, mDPO and SeVa), else ``None``. ``context`` holds the earlier
    exchanges of a multi-turn conversation (see :class:`Example`): the published prompt is
    then ``user (image + first question), assistant, ..., user (prompt)``.
    """

    id: str
    image: Image.Image
    prompt: str
    chosen: str
    rejected: str
    rejected_image: Image.Image | None = None
    provenance: Provenance
    context: list[Exchange] = Field(default_factory=list)

    @model_validator(mode="after")
    def _is_a_real_pair(self) -> PreferencePair:
        if not self.chosen.strip() or not self.rejected.strip():
            raise ValueError("chosen and rejected must both be non-empty")
        if self.chosen.strip() == self.rejected.strip():
            raise ValueError("rejected is identical to chosen")
        return self


Stage = Literal["input", "image", "hallucinate", "distort", "pair"]
"""Where a row failed: reading the row, decoding its image, corrupting its text, corrupting
its image, or assembling and checking the pair."""


class RowError(_Model):
    """Why one input row did not become a pair.

    Attributes:
        id: the row's id (or ``"row-<index>"`` when it had none).
        index: the row's position in the input dataset.
        stage: where it failed.
        reason: a human-readable explanation, with every registered secret replaced by
            ``***`` (:mod:`povidgen.redact`): a server's error message can echo an API key.
        error_type: the class name of the underlying exception.
    """

    id: str
    index: int
    stage: Stage
    reason: str
    error_type: str

    @field_validator("reason")
    @classmethod
    def _no_secrets(cls, value: str) -> str:
        return scrub(value)
