"""Check a model's rewrite reply and turn it into a :class:`~povidgen.Hallucination`.

:func:`verify_reply` accepts the parsed :class:`~povidgen.hallucinate.prompts.RewriteReply`,
the raw JSON text, or a dict, and checks, in this order:

1. the reply is valid JSON and matches the schema;
2. the rewrite is not empty;
3. it is not a refusal, apology or meta comment ("I'm sorry", "As an AI", "Here is the
   rewritten answer", "Note: ..."); text inside quotes does not count, nor does a phrase the
   correct answer itself has;
4. it differs from the correct answer (ignoring case and whitespace);
5. its length lies within ``[1/r, r]`` times the answer's (``r = max_length_ratio``);
6. it lists at least one and at most ``max_edits`` edits;
7. every edit's kind is allowed;
8. every edit's injected text is non-empty and found in the rewrite;
9. every non-empty ``original`` is found in the correct answer (case-insensitive);
10. no edit leaves its phrase unchanged.

The first failure raises :class:`VerificationError`, whose :attr:`~VerificationError.reason` is
written to the model: callers feed it back on retry.

:func:`verify_answer_to_question` is the question-aware check, the same rules
:class:`~povidgen.RuleHallucinator` follows (:mod:`povidgen.hallucinate.questions`): a rewrite
of an English answer to a question must keep the objects the question asks about, stay
coherent (a "No" that still counts the object, a "Yes" that says it is absent, "one kites",
"there is three cups" fail) and change what the question asks (the count, the colour, the
place, the relation, the yes/no conclusion), where these can be read. The API-backed
hallucinators run it after :func:`verify_reply` and re-ask with its reason.

Spans. Each injected text is located in the rewrite in the order the edits are listed, never
overlapping a span already taken, preferring an occurrence at or after the previous edit's span
(so a phrase injected twice maps to successive occurrences) and an occurrence on word
boundaries ("red" in "a red bench", not in "tired"); exact matches come first, then
case-insensitive ones, in which case the edit records the text as it appears in the rewrite.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from povidgen.errors import VerificationError
from povidgen.hallucinate.lexicon import detect_language, english
from povidgen.hallucinate.prompts import ANSWER_CLOSE, ANSWER_OPEN, PromptConfig, RewriteReply
from povidgen.hallucinate.questions import answer_problem, parse_question
from povidgen.schema import Edit, EditKind, Example, Hallucination

__all__ = ["VerificationError", "verify_answer_to_question", "verify_reply"]

_APOSTROPHE = "['\u2019]"
_FIRST_PERSON_REFUSAL = (
    rf"\bI(?:{_APOSTROPHE}m| am)?\s+(?:cannot|can{_APOSTROPHE}t|can not|won{_APOSTROPHE}t|"
    rf"will not|must decline|(?:un)?able to|not able to)\s+"
    r"(?:assist|help|comply|fulfil|fulfill|provide|create|generate|rewrite|do that|do this|"
    r"complete|produce|make|write|modify|alter|change|continue|participate)"
)
# Refusals and meta comments that give a reply away when the rewrite *starts* with them.
_START_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        rf"^\W*(?:I{_APOSTROPHE}m|I am)\s+(?:so\s+|very\s+|really\s+)?sorry\b",
        r"^\W*sorry\b",
        r"^\W*(?:my\s+)?apologies\b",
        r"^\W*I\s+apologi[sz]e\b",
        rf"^\W*I\s+(?:cannot|can{_APOSTROPHE}t|can not|won{_APOSTROPHE}t|will not|must decline)\b",
        rf"^\W*(?:I{_APOSTROPHE}m|I am)\s+(?:unable|not able)\b",
        r"^\W*as an? (?:ai|artificial intelligence|language model|llm|assistant)\b",
        r"^\W*(?:unfortunately|regrettably),?\s+I\b",
        rf"^\W*here(?:\s+is|{_APOSTROPHE}s|\s+are)\b[^.\n:]{{0,60}}"
        r"\b(?:rewrit|modif|corrupt|alter|revis|hallucinat|version|answer|response|json)",
        r"^\W*(?:sure|certainly|of course|okay|ok|absolutely|alright)\s*[,.!:]",
        r"^\W*(?:the |this |my )?(?:rewritten|modified|corrupted|hallucinated|revised|altered)"
        r"\s+(?:answer|version|text|response|description)\b",
        r"^\W*(?:rewrite|rejected|answer|output)\s*:",
    )
)
# Refusals and meta comments that give a reply away wherever they stand (outside quotes).
_ANYWHERE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    for pattern in (
        _FIRST_PERSON_REFUSAL,
        rf"\bcan(?:not|{_APOSTROPHE}t| not) assist\b",
        r"\bas an (?:ai|artificial intelligence)\b",
        r"\bas a (?:large )?language model\b",
        rf"\bI(?:{_APOSTROPHE}m| am) sorry\b",
        r"\bI apologi[sz]e\b",
        r"\b(?:injected|introduced|inserted) (?:errors?|hallucinations?)\b",
        r"^\W*(?:note|explanation|changes(?: made)?|edits(?: made)?|errors(?: introduced)?)\s*:",
    )
)
_QUOTED = re.compile(
    r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d|(?<!\w)'[^\n]*?'(?!\w)|\u2018[^\n]*?\u2019(?!\w)"
)
_FENCE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```$", re.DOTALL)
_MAX_SCHEMA_ERRORS = 3


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _unquoted(text: str) -> str:
    return _QUOTED.sub(" ", text)


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse(reply: RewriteReply | str | Mapping[str, Any]) -> RewriteReply:
    """The reply as a :class:`RewriteReply`, or a :class:`VerificationError` saying why not."""
    if isinstance(reply, RewriteReply):
        return reply
    data: Any
    if isinstance(reply, str):
        text = reply.strip()
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1).strip()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            hint = ""
            if any(p.search(text) for p in _START_PATTERNS + _ANYWHERE_PATTERNS):
                hint = " It reads like a refusal or a comment; do not refuse or comment."
            raise VerificationError(
                f"The reply is not valid JSON ({error.msg} at line {error.lineno}, column "
                f"{error.colno}).{hint} Return only a JSON object of the form "
                '{"rejected": "...", "edits": [{"kind": "...", "original": "...", '
                '"injected": "..."}]}, with no text or markdown around it.'
            ) from None
    elif isinstance(reply, Mapping):
        data = dict(reply)
    else:
        raise VerificationError(
            f"The reply is a {type(reply).__name__}, not a JSON object with 'rejected' and 'edits'."
        )
    try:
        return RewriteReply.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors()[:_MAX_SCHEMA_ERRORS]:
            where = ".".join(str(part) for part in item["loc"]) or "the reply"
            problems.append(f"{where}: {item['msg']}")
        more = len(error.errors()) - _MAX_SCHEMA_ERRORS
        extra = f" (and {more} more)" if more > 0 else ""
        raise VerificationError(
            "The reply does not match the required schema: "
            + "; ".join(problems)
            + extra
            + '. Return {"rejected": string, "edits": [{"kind": one of the allowed kinds, '
            '"original": string, "injected": string}]} and nothing else.'
        ) from None


def _strip_markers(text: str) -> str:
    """Drop ``<answer>`` lines the model echoed around its rewrite."""
    stripped = text.strip()
    if stripped.startswith(ANSWER_OPEN) and stripped.endswith(ANSWER_CLOSE):
        stripped = stripped[len(ANSWER_OPEN) : len(stripped) - len(ANSWER_CLOSE)].strip()
    return stripped


def _refusal(rejected: str, answer: str) -> str | None:
    """The refusal or meta-comment phrase ``rejected`` holds that ``answer`` does not."""
    rejected_text, answer_text = _unquoted(rejected), _unquoted(answer)
    for pattern in _START_PATTERNS + _ANYWHERE_PATTERNS:
        found = pattern.search(rejected_text)
        if found and not pattern.search(answer_text):
            return found.group(0).strip(" \t\n\"'")
    return None


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _on_word_boundaries(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` does not cut a word at either end."""
    if start > 0 and _is_word_char(text[start]) and _is_word_char(text[start - 1]):
        return False
    return not (end < len(text) and _is_word_char(text[end - 1]) and _is_word_char(text[end]))


def _occurrences(text: str, phrase: str, *, ignore_case: bool) -> Iterator[tuple[int, int]]:
    """Every (possibly overlapping) occurrence of ``phrase`` in ``text``, left to right."""
    flags = re.IGNORECASE if ignore_case else 0
    pattern = re.compile(f"(?=({re.escape(phrase)}))", flags)
    for match in pattern.finditer(text):
        yield match.start(1), match.end(1)


def _locate(
    text: str, phrase: str, taken: list[tuple[int, int]], cursor: int
) -> tuple[int, int] | None:
    """The span ``phrase`` gets in ``text``: see the module docstring for the preferences."""

    def free(span: tuple[int, int]) -> bool:
        return all(span[1] <= start or span[0] >= end for start, end in taken)

    for ignore_case in (False, True):
        spans = [s for s in _occurrences(text, phrase, ignore_case=ignore_case) if free(s)]
        if not spans:
            continue
        bounded = [s for s in spans if _on_word_boundaries(text, *s)]
        for pool in (bounded, spans):
            if pool:
                after = [s for s in pool if s[0] >= cursor]
                return (after or pool)[0]
    return None


def verify_reply(
    example: Example,
    reply: RewriteReply | str | Mapping[str, Any],
    config: PromptConfig,
) -> Hallucination:
    """Check ``reply`` against ``example`` and ``config``; return the verified hallucination.

    ``reply`` is the parsed model, the raw JSON text (a surrounding markdown code fence is
    tolerated) or a dict. Raises :class:`VerificationError` with a reason addressed to the
    model at the first failed check (the order is in the module docstring). The returned
    :class:`~povidgen.Hallucination` has exact spans: ``rejected[start:end] == injected``.
    """
    parsed = _parse(reply)
    answer = example.answer.strip()
    rejected = _strip_markers(parsed.rejected)

    if not rejected:
        raise VerificationError(
            "The rewrite ('rejected') is empty. Return the full rewritten answer with the "
            "injected errors."
        )

    refusal = _refusal(rejected, answer)
    if refusal is not None:
        raise VerificationError(
            f"The rewrite contains a refusal, apology or comment ({_shorten(refusal)!r}). Do "
            "not refuse, apologise or comment: 'rejected' must hold only the rewritten answer."
        )

    if _normalise(rejected) == _normalise(answer):
        raise VerificationError(
            "The rewrite is identical to the correct answer. Change it by injecting the "
            "required errors."
        )

    ratio = config.max_length_ratio
    low, high = len(answer) / ratio, len(answer) * ratio
    if not low <= len(rejected) <= high:
        direction = "long" if len(rejected) > high else "short"
        raise VerificationError(
            f"The rewrite is too {direction}: {len(rejected)} characters against "
            f"{len(answer)} in the correct answer; it must have between {math.ceil(low)} and "
            f"{math.floor(high)} characters (within a factor of {ratio:g}). Keep the original "
            "length and wording and change only the erroneous phrases."
        )

    count = len(parsed.edits)
    if count < 1:
        raise VerificationError(
            "The reply lists no edits. Report every injected error in 'edits' with its kind, "
            "original phrase and injected phrase."
        )
    if count > config.max_edits:
        raise VerificationError(
            f"The reply lists {count} edits but at most {config.max_edits} are allowed. Inject "
            f"between {config.min_edits} and {config.max_edits} errors and report each once."
        )

    allowed = ", ".join(kind.value for kind in config.kinds)
    for number, edit in enumerate(parsed.edits, start=1):
        if EditKind(edit.kind) not in config.kinds:
            raise VerificationError(
                f"Edit {number} has kind '{edit.kind.value}', which is not allowed here; use "
                f"only these kinds: {allowed}."
            )

    spans: list[tuple[int, int]] = []
    cursor = 0
    for number, edit in enumerate(parsed.edits, start=1):
        if not edit.injected.strip():
            raise VerificationError(
                f"Edit {number}'s injected text is empty. Every edit must inject a phrase that "
                "appears in the rewrite; for a pure insertion set 'original' to \"\"."
            )
        span = _locate(rejected, edit.injected, spans, cursor)
        if span is None:
            repeat = sum(
                1 for e in parsed.edits if e.injected.casefold() == edit.injected.casefold()
            )
            extra = (
                f" (it is listed {repeat} times, so it must occur {repeat} times)"
                if repeat > 1
                else ""
            )
            raise VerificationError(
                f"Edit {number}'s injected text {_shorten(edit.injected)!r} is not in the "
                f"rewrite{extra}. Copy each injected phrase exactly as it appears in 'rejected'."
            )
        spans.append(span)
        cursor = span[1]

    answer_normalised = _normalise(answer)
    for number, edit in enumerate(parsed.edits, start=1):
        if edit.original.strip() and _normalise(edit.original) not in answer_normalised:
            raise VerificationError(
                f"Edit {number}'s original text {_shorten(edit.original)!r} is not in the "
                "correct answer. Copy 'original' verbatim from the correct answer, or use \"\" "
                "for a pure insertion."
            )

    for number, (edit, (start, end)) in enumerate(zip(parsed.edits, spans, strict=True), start=1):
        if _normalise(edit.original) == _normalise(rejected[start:end]):
            raise VerificationError(
                f"Edit {number} changes nothing: its original and injected text are both "
                f"{_shorten(edit.injected)!r}. Report only phrases you actually changed."
            )

    try:
        return Hallucination(
            rejected=rejected,
            edits=[
                Edit(
                    kind=EditKind(edit.kind),
                    original=edit.original,
                    injected=rejected[start:end],
                    start=start,
                    end=end,
                )
                for edit, (start, end) in zip(parsed.edits, spans, strict=True)
            ],
        )
    except ValidationError as error:  # defensive: the checks above should rule this out
        raise VerificationError(f"The reply could not be turned into edits: {error}") from None


def verify_answer_to_question(example: Example, rejected: str | Hallucination) -> None:
    """Check a rewrite of ``example.answer`` against the question ``example.prompt`` asks.

    ``rejected`` is the rewritten answer, or a :class:`~povidgen.Hallucination` (its
    ``rejected`` is checked). Raises :class:`VerificationError` with a reason addressed to the
    model when the rewrite drops an object the question asks about, contradicts itself (a "No"
    that still states a quantity of the asked object, a "Yes" that says it is absent, a number
    that disagrees with its noun or verb where the answer agreed), or leaves what the question
    asks unchanged where both answers state it. The rules are those of
    :func:`povidgen.hallucinate.questions.answer_problem`. A prompt that is not a question
    gets the agreement check only; an answer not in English is not checked.
    """
    text = rejected.rejected if isinstance(rejected, Hallucination) else rejected
    if detect_language(example.answer) != "en":
        return
    lexicon = english()
    question = parse_question(example.prompt, lexicon)
    problem = answer_problem(question, example.answer.strip(), text.strip(), lexicon)
    if problem is not None:
        raise VerificationError(problem)
