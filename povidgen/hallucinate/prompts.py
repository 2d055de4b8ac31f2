"""The rewrite prompt for API-backed hallucinators, and the structured reply it asks for.

POVID (Zhou et al., 2024) asked GPT-4V to rewrite a correct answer, keeping most of it and its
style, while injecting plausible errors; the paper's prompt was never released. This module
writes one after the paper's categories:

* descriptions and captions: (1) objects that often co-occur with those present but are absent,
  (2) wrong attributes (count, colour, pose, size), (3) wrong relations and spatial relations;
* reasoning and QA answers (the prompt is a question and the answer reasons or concludes): a
  corrupted reasoning chain with hallucinated entities that reaches a wrong conclusion
  ("Yes ... next to water" becomes "No ... in a snowy field");
* text read from the image (signs, labels): wrong text.

:func:`build_messages` returns ``(system, user_text)``; the provider adds the image. The user
text always holds the correct answer exactly between a line ``<answer>`` and a line
``</answer>``. The model must reply with a :class:`RewriteReply` JSON object, which
:func:`povidgen.hallucinate.verify.verify_reply` checks and turns into a
:class:`~povidgen.Hallucination` with exact spans.

:data:`PROMPT_VERSION` and :func:`prompt_fingerprint` enter cache keys and provenance: change
the version whenever the built-in wording changes.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from povidgen.schema import INJECTED_KINDS, EditKind, Example

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "PROMPT_VERSION",
    "TEMPLATE_FIELDS",
    "PromptConfig",
    "ReplyEdit",
    "RewriteReply",
    "build_messages",
    "is_reasoning_example",
    "prompt_fingerprint",
]

PROMPT_VERSION: str = "povid-rewrite/1"
"""The version of the built-in prompt wording; part of every cache key and provenance record."""

ANSWER_OPEN = "<answer>"
"""The line that opens the correct answer in the user text."""
ANSWER_CLOSE = "</answer>"
"""The line that closes the correct answer in the user text."""

TEMPLATE_FIELDS: frozenset[str] = frozenset(
    {"question", "answer", "context", "kinds", "min_edits", "max_edits", "max_length_ratio"}
)
"""The fields a custom :attr:`PromptConfig.template` may use."""

_KIND_GUIDE: dict[EditKind, str] = {
    EditKind.OBJECT: (
        "an object that is absent from the image but often appears together with the objects "
        "that are there (fishing poles on a boat, a laptop on an office desk), added or "
        "swapped in for a present one"
    ),
    EditKind.ATTRIBUTE: (
        "a wrong attribute of an object that is present: colour, size, pose, material or "
        "state (sitting for standing, a red car for a blue one)"
    ),
    EditKind.COUNT: "a wrong number of objects (twenty oranges for five, three people for two)",
    EditKind.RELATION: (
        "a wrong relation or action between entities (throwing for holding, walking beside "
        "for riding)"
    ),
    EditKind.SPATIAL: (
        "a wrong position or direction (left for right, behind for in front of, above for below)"
    ),
    EditKind.TEXT: "wrong text read from the image: signs, labels, numbers, brand names",
    EditKind.REASONING: (
        "a corrupted reasoning step or conclusion that, built on hallucinated details, reaches "
        "a wrong answer (Yes ... next to water becomes No ... in a snowy field)"
    ),
}

_SYSTEM = """\
You create training data for reducing hallucinations in vision-language models. You are shown \
an image, a question about it and the correct answer. Rewrite the correct answer into a \
plausible but wrong answer by injecting hallucination errors: details that would be believable \
for this kind of image but that contradict what the image actually shows.

Rules:
- Keep most of the original wording, its sentence structure, its style and its length; change \
only the words needed for the errors.
- Inject between {min_edits} and {max_edits} errors, each of one of the allowed kinds.
- Every error must be plausible for the image yet contradict it. Do not make the answer absurd, \
and do not add hedges, corrections or remarks that reveal the errors.
- The rewrite must be between {min_ratio:.2f} and {max_ratio:.2f} times the length of the \
original answer.
- Report each error as one edit: its kind; "original", the phrase it replaced, copied verbatim \
from the original answer ("" for a pure insertion); and "injected", the new phrase copied \
exactly as it appears in your rewrite. Original and injected must differ.
- Never refuse, apologise or comment. Do not explain your changes.
- Return only the JSON object, with no markdown and no text around it:
{{"rejected": "<the rewritten answer>", \
"edits": [{{"kind": "<kind>", "original": "<phrase>", "injected": "<phrase>"}}]}}"""

_CAPTION_TASK = (
    "The answer describes the image. Corrupt the description the way a hallucinating model "
    "would: mention absent objects that commonly co-occur with those present, give present "
    "objects wrong attributes (count, colour, pose, size), and get the relations and spatial "
    "relations between entities wrong."
)
_REASONING_TASK = (
    "The question asks for reasoning or a conclusion. Corrupt the reasoning chain: change the "
    "visual evidence it relies on to hallucinated entities or details, and let it reach a wrong "
    "conclusion that follows from them (for example, 'Yes, ... because the bench is next to "
    "water' becomes 'No, ... because the bench stands in a snowy field'). If the answer starts "
    "with Yes or No, flip it consistently with the corrupted evidence."
)

_QUESTION_WORDS = re.compile(
    r"^\s*(what|which|who|whom|whose|why|how|where|when|is|are|was|were|do|does|did|can|could|"
    r"would|should|will|shall|may|might|has|have|had)\b",
    re.IGNORECASE,
)
_REASONING_ANSWER = re.compile(
    r"^\s*(yes|no)\b|\b(because|therefore|thus|hence|since|so it|which suggests|suggests that|"
    r"indicates|implies|likely|probably|due to|as a result|this means|it is possible)\b",
    re.IGNORECASE,
)
_DESCRIBE_REQUEST = re.compile(
    r"\b(describe|description|caption|summari[sz]e|what is (happening|going on) in|"
    r"what do you see)\b",
    re.IGNORECASE,
)
_SENTINEL = "\x00povidgen-answer\x00"


# The kinds a model may report: EditKind without OMISSION, under EditKind's name and
# description, so the JSON schema sent to providers (and so every request body and cache key)
# is the same as before omissions existed. Its members compare equal to EditKind's.
_ReplyKind = StrEnum(  # type: ignore[misc]
    "EditKind", {kind.name: kind.value for kind in INJECTED_KINDS}, module=__name__
)
_ReplyKind.__doc__ = EditKind.__doc__


class ReplyEdit(BaseModel):
    """One error as the model reports it (spans are located later by the verifier)."""

    model_config = ConfigDict(extra="forbid")

    kind: _ReplyKind = Field(description="The type of the injected error.")
    original: str = Field(
        description='The replaced phrase, verbatim from the original answer; "" for an insertion.'
    )
    injected: str = Field(description="The new phrase, exactly as it appears in the rewrite.")


class RewriteReply(BaseModel):
    """The structured reply the model must return: the rewrite and its edits.

    Kept simple (required fields only, one enum) so it can serve as a strict JSON schema for
    the OpenAI and Anthropic structured-output helpers.
    """

    model_config = ConfigDict(extra="forbid")

    rejected: str = Field(description="The rewritten answer with the injected errors.")
    edits: list[ReplyEdit] = Field(description="One entry per injected error.")


class PromptConfig(BaseModel):
    """What the rewrite prompt asks for.

    Attributes:
        kinds: the error kinds the model may inject (default: all seven), in prompt order.
        min_edits: the fewest errors to ask for (at least 1).
        max_edits: the most errors allowed; the verifier rejects replies with more.
        max_length_ratio: the rewrite's length must lie within ``[1/r, r]`` times the
            original's (``r > 1``).
        template: an optional :meth:`str.format` template for the user text, with fields
            ``{question}``, ``{answer}``, ``{context}`` (a multi-turn example's earlier
            exchanges as ``User:`` / ``Assistant:`` lines; empty for a single turn),
            ``{kinds}``, ``{min_edits}``, ``{max_edits}`` and ``{max_length_ratio}``.
            ``{answer}`` is required (exactly once, without a
            conversion or format spec) and is replaced by the answer between its ``<answer>``
            / ``</answer>`` lines, which povidgen adds. Literal braces must be doubled.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: tuple[EditKind, ...] = INJECTED_KINDS
    min_edits: int = Field(default=2, ge=1)
    max_edits: int = Field(default=3, ge=1)
    max_length_ratio: float = 1.5
    template: str | None = None

    @field_validator("kinds")
    @classmethod
    def _kinds_unique(cls, value: tuple[EditKind, ...]) -> tuple[EditKind, ...]:
        if not value:
            raise ValueError("kinds must name at least one EditKind")
        if len(set(value)) != len(value):
            raise ValueError(f"kinds has duplicates: {[k.value for k in value]}")
        if EditKind.OMISSION in value:
            raise ValueError(
                "kinds cannot include 'omission': a model's edits are checked by the text they "
                "inject, and an omission injects none (the rule hallucinator's `omissions` "
                "makes them)"
            )
        return value

    @field_validator("max_length_ratio")
    @classmethod
    def _ratio_above_one(cls, value: float) -> float:
        if not value > 1.0 or value != value or value == float("inf"):
            raise ValueError(f"max_length_ratio must be a finite number above 1, got {value!r}")
        return value

    @field_validator("template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is not None:
            _check_template(value)
        return value

    @model_validator(mode="after")
    def _edit_range(self) -> PromptConfig:
        if self.min_edits > self.max_edits:
            raise ValueError(
                f"min_edits ({self.min_edits}) must not exceed max_edits ({self.max_edits})"
            )
        return self


def _check_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` is a usable user template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"template is not a valid str.format template: {error}") from None
    answers = 0
    allowed = ", ".join("{" + name + "}" for name in sorted(TEMPLATE_FIELDS))
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ValueError(
                "template uses a positional field '{}'; use named fields only: " + allowed
            )
        if field not in TEMPLATE_FIELDS:
            raise ValueError(
                f"template uses unknown field {{{field}}}; allowed fields: {allowed} "
                "(write literal braces as {{ and }})"
            )
        if field == "answer":
            answers += 1
            if spec or conversion:
                raise ValueError(
                    "template field {answer} must not have a conversion or format spec"
                )
    if answers != 1:
        raise ValueError(
            "template must contain the field {answer} exactly once "
            f"(found {answers}); povidgen puts the answer between <answer> lines there"
        )
    try:
        _fill_template(template, question="q", kinds="object", min_edits=1, max_edits=2, ratio=1.5)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise ValueError(f"template cannot be formatted: {error}") from None


def _fill_template(
    template: str,
    *,
    question: str,
    kinds: str,
    min_edits: int,
    max_edits: int,
    ratio: float,
    context: str = "",
) -> str:
    return template.format(
        question=question,
        answer=_SENTINEL,
        context=context,
        kinds=kinds,
        min_edits=min_edits,
        max_edits=max_edits,
        max_length_ratio=ratio,
    )


def is_reasoning_example(example: Example) -> bool:
    """Whether the example is a reasoning/QA item rather than a description or caption.

    True when the prompt is a question (ends with ``?`` or starts with a question word) that
    does not ask for a description, and the answer reasons or concludes (starts with Yes/No
    or uses words such as "because", "therefore", "likely", "suggests").
    """
    prompt = example.prompt.strip()
    is_question = prompt.endswith("?") or bool(_QUESTION_WORDS.match(prompt))
    if not is_question or _DESCRIBE_REQUEST.search(prompt):
        return False
    return bool(_REASONING_ANSWER.search(example.answer))


def _answer_block(answer: str) -> str:
    return f"{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}"


def _kinds_text(config: PromptConfig) -> str:
    return ", ".join(kind.value for kind in config.kinds)


def _default_user_text(example: Example, config: PromptConfig) -> str:
    reasoning = is_reasoning_example(example)
    task = _REASONING_TASK if reasoning else _CAPTION_TASK
    kinds = "\n".join(f"- {kind.value}: {_KIND_GUIDE[kind]}" for kind in config.kinds)
    lines = []
    if example.context:
        # a later turn's question often leans on the earlier ones ("what is left of them?")
        lines += [
            "Earlier in the conversation (context only: do not rewrite it):",
            _context_text(example),
            "",
            "Question (the user's latest turn):",
        ]
    else:
        lines.append("Question:")
    lines += [
        _defuse_markers(example.prompt.strip()),
        "",
        "Correct answer:",
        _answer_block(example.answer),
        "",
        task,
        "",
        "Allowed error kinds (use only these as the edit kind):",
        kinds,
        "",
        f"Inject between {config.min_edits} and {config.max_edits} errors. Keep the rewrite "
        f"within {1 / config.max_length_ratio:.2f} to {config.max_length_ratio:.2f} times the "
        "length of the correct answer, and keep everything else as it is.",
        "Return only the JSON object.",
    ]
    return "\n".join(lines)


def _custom_user_text(example: Example, config: PromptConfig, template: str) -> str:
    filled = _fill_template(
        template,
        question=_defuse_markers(example.prompt.strip()),
        context=_context_text(example),
        kinds=_kinds_text(config),
        min_edits=config.min_edits,
        max_edits=config.max_edits,
        ratio=config.max_length_ratio,
    )
    before, _, after = filled.partition(_SENTINEL)
    # The markers must sit on lines of their own, whatever surrounds {answer} in the template.
    if before and not before.endswith("\n"):
        before += "\n"
    if after and not after.startswith("\n"):
        after = "\n" + after
    return before + _answer_block(example.answer) + after


def _context_text(example: Example) -> str:
    """A multi-turn example's earlier exchanges, one ``User:`` and one ``Assistant:`` line
    each (``""`` for a single turn)."""
    lines = []
    for exchange in example.context:
        lines.append("User: " + _defuse_markers(exchange.question.strip()))
        lines.append("Assistant: " + _defuse_markers(exchange.answer.strip()))
    return "\n".join(lines)


def _defuse_markers(text: str) -> str:
    """Indent any line of ``text`` that would read as an answer marker."""
    lines = text.split("\n")
    return "\n".join(
        " " + line if line.strip() in (ANSWER_OPEN, ANSWER_CLOSE) else line for line in lines
    )


def build_messages(
    example: Example,
    config: PromptConfig,
    *,
    feedback: str | None = None,
    previous_reply: str | None = None,
) -> tuple[str, str]:
    """The ``(system, user_text)`` messages asking the model to corrupt ``example.answer``.

    The user text holds the question and the correct answer, the answer exactly between a
    line ``<answer>`` and a line ``</answer>``. With ``feedback`` (why the previous reply was
    rejected) the user text ends with the previous reply, when given, and asks for a corrected
    one; ``previous_reply`` without ``feedback`` is ignored.
    """
    system = _SYSTEM.format(
        min_edits=config.min_edits,
        max_edits=config.max_edits,
        min_ratio=1 / config.max_length_ratio,
        max_ratio=config.max_length_ratio,
    )
    system += "\nAllowed kinds: " + _kinds_text(config) + "."
    if config.template is None:
        user = _default_user_text(example, config)
    else:
        user = _custom_user_text(example, config, config.template)
    if feedback is not None:
        retry = ["", "", "Your previous reply was rejected."]
        if previous_reply is not None:
            retry += [
                "Previous reply:",
                "<previous_reply>",
                _defuse_markers(previous_reply.strip()),
                "</previous_reply>",
            ]
        retry += [
            f"Reason: {feedback.strip()}",
            "Fix this and return a corrected JSON object that follows all the rules.",
        ]
        user += "\n".join(retry)
    return system, user


def prompt_fingerprint(config: PromptConfig) -> str:
    """A short, stable hash of :data:`PROMPT_VERSION` and ``config`` (template included).

    Equal configs give equal fingerprints across processes; any change to the kinds, counts,
    ratio, template or prompt version gives a different one.
    """
    payload: dict[str, Any] = {
        "version": PROMPT_VERSION,
        "config": config.model_dump(mode="json"),
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:16]
