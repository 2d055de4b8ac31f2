"""An offline, rule-based hallucinator: POVID-style errors from word lists, no model at all.

:class:`RuleHallucinator` reads the question, then swaps a few words of the correct answer for
plausible wrong ones. Its edits:

* **objects** (:attr:`EditKind.OBJECT`): names of common object categories (the 80 COCO
  categories, in singular, plural and alias forms such as "people", "buses", "dining table",
  "table", "man") become an object that *co-occurs* with the objects in the answer but is
  mentioned nowhere in it: "apples" becomes "bananas", "an apple" becomes "a banana". The
  co-occurrence table is shipped as ``data/cooccurrence.json`` (hand-curated, see its note);
* **attributes** (:attr:`EditKind.ATTRIBUTE`): colours become another colour (preferably one the
  answer does not use); sizes, poses, materials and states become their opposite;
* **counts** (:attr:`EditKind.COUNT`): a number word ("two" to "twenty") or digits (2 to 99)
  becomes another nearby number in the same form, preferably one the answer does not use;
  "one" before a known noun becomes a larger number, and the noun and a verb directly around
  it follow ("There is one kite" becomes "There are three kites");
* **spatial terms** (:attr:`EditKind.SPATIAL`): place phrases ("on the left" becomes "at the
  top", preferring places the answer does not use) and words (left/right, above/below, in
  front of/behind...);
* **relations** (:attr:`EditKind.RELATION`): "holding" becomes "throwing", "riding" becomes
  "walking beside", "sitting on" becomes "standing next to"...;
* **text** (:attr:`EditKind.TEXT`): short quoted text ("STOP") becomes other sign text;
* **reasoning** (:attr:`EditKind.REASONING`): a negation is dropped ("is not" becomes "is",
  "there is no" becomes "there is one"), and a yes/no conclusion is flipped (below).

Word lists other than the objects live in ``data/lexicon.json``; both are read through
:mod:`povidgen.hallucinate.lexicon`.

**Questions first.** When ``example.prompt`` is a question (see
:mod:`povidgen.hallucinate.questions` for how it is read), the object it asks about (its
*subject*) is kept, and what it asks is corrupted first:

* *count* ("How many kites are there?"): the subject's quantity changes, in the same form
  (digits stay digits, words stay words, "a" becomes a number word), and the noun and the verb
  around it agree with the new number ("There is one brown kite." becomes "There are three
  brown kites.");
* *colour* or another *attribute*: every colour (or attribute) the answer gives the subject
  becomes one other colour ("The apples are white." becomes "The apples are turquoise.");
* *position*: the subject's place becomes another ("on the right" becomes "at the top");
* *relation* ("Where are the apples relative to the book?"): the spatial or relation word
  between the two subjects flips ("above" becomes "below");
* *existence* ("Is there a cup in the image?"): the conclusion flips and the rest follows. A
  "yes" becomes "No, there is no cup;" and the rest of the answer describes an absent object
  that co-occurs with the cup instead ("there are three white bottles at the bottom"); when
  the rest does not name the cup again, no object can stand in, or the rewrite would grow
  past 1.5 times the answer's length, the whole answer becomes "No, there is no cup in the
  image.". A "no" becomes "Yes, there is a book at the top of the image", the place picked
  among ``new_places`` of the lexicon, preferring one the answer does not use;
* *yes/no* about a value ("Is the cup red?"): "Yes" becomes "No" and the value in the answer
  becomes another ("No, the cup is blue."); "No" becomes "Yes" and the answer's value becomes
  the asked one ("Yes, the cup is red."), or its negation is dropped.

Further edits, up to the number drawn, come from the other candidates, never swapping a subject
away and never flipping a negation on its own in a yes/no answer. Without a question
(captions, "Describe the image.") all candidates are drawn as before; an answer that starts with
"Yes"/"No" and says "there is/are ..." is flipped as an existence answer about the first object
it names.

Method. All candidates are found with case-insensitive whole-word patterns (longest phrase
first, so "teddy bear" wins over "bear" and "on the left" over "left"). Candidates inside a
negated phrase ("there is no kite", "is not red") are skipped, because swapping them would
leave a statement that is still true. Between ``min_edits`` and ``max_edits`` edits are then
made, the question's first, the rest drawn round-robin over the kinds present so the edits are
diverse, and applied left to right; every :class:`~povidgen.Edit` records the exact span of
its injected text in the rejected answer. Replacements keep the original capitalisation ("Left"
becomes "Right", "STOP" becomes "EXIT") and fix an immediately preceding "a"/"an" when the new
word needs the other article (then the edit's ``original`` and ``injected`` include the
article). Finally the rewrite is run through the question-aware check
(:func:`povidgen.hallucinate.questions.answer_problem`, without its "what was asked changed"
rule): when it fails, only the question's own edits are kept; when that fails too, the row is
a :class:`HallucinationError` naming the problem.

"orange" is both a colour and a fruit. It is read as a **colour** when it is joined by a
hyphen to the next word ("orange-striped"), when the next word is another colour after
"and"/"or" ("orange and white"), when the next word is any word except a function word or a
fruit-part noun ("orange cat", but not "orange on the table" or "orange slices"), or when the
previous word is a linking verb or shade word ("is orange", "bright orange") or a colour
("red and orange"). Otherwise, and always as "oranges", it is the **fruit**.

**Nothing to change.** When an answer has no candidate at all, :class:`HallucinationError` says
so (the row becomes a ``RowError`` of stage ``hallucinate``); nothing is appended.

**Other languages.** The word lists are English. An answer in another language (detected with
:func:`povidgen.hallucinate.lexicon.detect_language`: French, German, Spanish, Italian,
Portuguese, Dutch, or mostly non-Latin script) is refused with a :class:`HallucinationError`
naming the language, unless ``word_lists`` supplies lists for it (the format is in
:mod:`povidgen.hallucinate.lexicon`); its answers then get word-for-word swaps from those lists,
and the objects the prompt names are never swapped.

**Omissions** (``omissions``, off by default). DPO on hallucinated rejections alone teaches a
model that mentioning objects is risky, and the cheapest way to mention fewer wrong ones is to
mention fewer: object recall falls with the hallucination rate (``docs/mini_povid.md``
measures it). With ``omissions=p``, a share ``p`` of English *descriptions* (answers to a
prompt that asks no question, "Describe the image.") get a rejected answer that is the answer
with one listed object left out (:attr:`EditKind.OMISSION`): an item of a list in one sentence
("..., *a blue cup at the top* and a kite"), not the list's first, that starts as a noun phrase
("a", "two", "some"...), has at most eight words and names one object, named nowhere else in
its sentence. The item goes with the join before it, and the joins left are made to read right
("A, B and C" without C is "A and B"; "A, B, and C" without B is "A and C"). Other sentences
that name the object go too ("The kite is below the umbrellas."), preferring objects that no
other sentence names. A sentence with a single comma-joined item ("On the left, a cat sits") is
not a list. When a description has nothing to leave out, its errors are injected as usual. An
omission's edit records the text left out as ``original`` and usually an empty ``injected``
(an empty span), or the rewritten joins. ``omissions`` is recorded in :meth:`params` only when
it is not 0, so builds without it keep their parameters and cache keys.

Everything is deterministic per ``(example.seed, example.id)``: the only randomness is a
:class:`random.Random` seeded with ``derive_seed(example.seed, example.id, "rule")`` (and, for
the omission draw, one seeded with ``derive_seed(example.seed, example.id, "rule-omission")``).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from povidgen.errors import HallucinationError
from povidgen.hallucinate.base import Hallucinator
from povidgen.hallucinate.lexicon import (
    CURLY_APOSTROPHE,
    Form,
    Lexicon,
    WordListSource,
    detect_language,
    english,
    language_name,
    load_word_lists,
    norm,
    phrase_re,
)
from povidgen.hallucinate.questions import (
    NOT_ADJECTIVES,
    Quantity,
    Question,
    Subject,
    answer_problem,
    clause_around,
    leading_yes_no,
    mentions,
    negation_spans,
    parse_question,
    polarity,
    quantity_before,
    verb_before,
)
from povidgen.schema import INJECTED_KINDS, Edit, EditKind, Example, Hallucination
from povidgen.seeding import derive_seed

__all__ = ["RuleHallucinator"]

logger = logging.getLogger("povidgen")


def _words(spaced: str) -> list[str]:
    """The words of a whitespace-separated list (long word lists read better as text)."""
    return spaced.split()


RULES_VERSION = 2
"""The version of the rules (recorded in ``params()``): 2 reads the question."""

_MIN_COUNT = 2  # a count word not followed by a known noun stays plural
_MAX_DIGIT_COUNT = 99
_MAX_QUOTE_LENGTH = 40  # longer quotes are speech, not sign or label text
_MAX_GROWTH = 1.5  # a "no" flip naming a stand-in object stays within this times the length

# Words after which "orange" is the fruit rather than a colour: function words that end or
# continue a noun phrase, and nouns that name parts or products of the fruit.
_NOT_COLOUR_FOLLOWERS = frozenset(
    _words("""a an the and or but nor on in at of to with from by for near next beside behind under
    over above below between into onto inside outside is are was were has have had that which
    who sits lies rests sitting lying resting placed this these those it its there here as than
    while nearby too also slice slices juice peel peels tree trees wedge wedges half halves
    segment segments sit lie rest stand stands standing sat lay hang hangs hanging roll rolls
    rolling""")
)
# Words before "orange" that make it a colour: linking verbs and shade words.
_COLOUR_LEADERS = frozenset(
    _words("""is are was were be been being look looks looked appear appears appeared seem seems
    seemed painted colored coloured bright dark light pale deep vivid mostly mainly partly
    all""")
)
# Words before an ambiguous noun ("sheep", "broccoli") that make it plural.
_PLURAL_CUES = frozenset(
    {"many", "several", "some", "few", "these", "those", "both", "all", "multiple", "various"}
)
_SINGULAR_CUES = frozenset({"a", "an", "one", "this", "that", "each", "every", "another"})
_ACRONYMS = frozenset({"tv", "tvs"})  # all caps by convention, not for emphasis
_VERB_SWAP = {"is": "are", "are": "is", "was": "were", "were": "was", "has": "have", "have": "has"}

_PREV_WORD = re.compile(r"(\w+)[ \t]+\Z")
_PREV_COLOUR_JOIN = re.compile(r"([A-Za-z]+)(?:[ \t]*,[ \t]*|[ \t]+(?:and|or)[ \t]+)\Z", re.I)
_NEXT_WORD = re.compile(r"[ \t]+([A-Za-z]+)")
_ARTICLE_BEFORE = re.compile(r"(?<!\w)(an?)[ \t]+\Z", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[,.;:!?()\[\]\"\u201c\u201d\n]")
_DIGITS = re.compile(r"(?<![\w.,:/$€£#+-])(\d{1,2})(?![\w%°]|[.,:/]\d)")
_GAP = re.compile(r"[ \t]+")
_ADJECTIVE_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_VERB_AFTER = re.compile(r"[ \t]+(is|are|was|were|has|have)(?!\w)", re.IGNORECASE)
_IMAGE_AFTER = re.compile(
    r"[ \t]+(?:in|on)[ \t]+(?:the|this)[ \t]+(image|picture|photo|photograph|scene)(?!\w)",
    re.IGNORECASE,
)
_TAG = re.compile(
    r"[ \t]*[,.]?[ \t]*(?:it|they|there|he|she|this|that)[ \t]+"
    r"(?:is|are|was|were|does|do|did|can|has|have)(?P<neg>n't|[ \t]+not)?(?=[ \t]*[.!]?[ \t]*\Z)",
    re.IGNORECASE,
)
_QUOTES = (
    re.compile(rf"\"([^\"\n]{{1,{_MAX_QUOTE_LENGTH}}})\""),
    re.compile(rf"\u201c([^\u201d\n]{{1,{_MAX_QUOTE_LENGTH}}})\u201d"),
    re.compile(rf"\u2018([^\u2019\n]{{1,{_MAX_QUOTE_LENGTH}}})\u2019"),
    re.compile(rf"(?<![\w'])'([^'\n]{{1,{_MAX_QUOTE_LENGTH}}})'(?!\w)"),
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|\Z)")
_THERE_IS = re.compile(r"(?<!\w)there[ \t]+(?:is|are|was|were)(?!\w)|(?<!\w)there['\u2019]s", re.I)

_SUPPORTED_KINDS: frozenset[EditKind] = frozenset(INJECTED_KINDS)


# ---------------------------------------------------------------------------------------------
# Text helpers


def _match_case(original: str, replacement: str) -> str:
    """``replacement`` written in the capitalisation style of ``original``.

    All capitals stay all capitals, a capital first letter stays one, and a phrase whose last
    word alone is in capitals ("on the LEFT") gets its last word in capitals ("at the TOP").
    """
    letters = [ch for ch in original if ch.isalpha()]
    if len(letters) > 1 and all(ch.isupper() for ch in letters):
        if original.casefold() in _ACRONYMS:
            return replacement
        return replacement.upper()
    words = original.split()
    last = words[-1] if words else ""
    if len(words) > 1 and len(last) > 1 and last.isupper() and " " in replacement:
        head, _, tail = replacement.rpartition(" ")
        replacement = f"{head} {tail.upper()}"
    if letters and letters[0].isupper() and original[:1].isalpha():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _article_for(word: str) -> str:
    return "an" if word[:1].casefold() in ("a", "e", "i", "o", "u") else "a"


def _article_start(text: str, start: int) -> int | None:
    """Where an "a"/"an" directly before ``start`` begins, if there is one."""
    found = _ARTICLE_BEFORE.search(text, max(0, start - 8), start)
    return found.start(1) if found else None


def _previous_word(text: str, start: int) -> str | None:
    found = _PREV_WORD.search(text, max(0, start - 30), start)
    return found.group(1).casefold() if found else None


def _next_word(text: str, end: int) -> str | None:
    found = _NEXT_WORD.match(text, end)
    return found.group(1).casefold() if found else None


def _is_negated(text: str, start: int, lexicon: Lexicon) -> bool:
    """Whether one of the three words before ``start``, in the same clause, negates it."""
    window = text[max(0, start - 48) : start]
    breaks = list(_CLAUSE_BREAK.finditer(window))
    if breaks:
        window = window[breaks[-1].end() :]
    words = window.replace(CURLY_APOSTROPHE, "'").casefold().split()[-3:]
    return any(w in lexicon.negators or (lexicon.english and w.endswith("n't")) for w in words)


def _orange_is_colour(text: str, start: int, end: int, lexicon: Lexicon) -> bool:
    """Whether the word "orange" at ``[start, end)`` is the colour (see the module docs)."""
    if text[end : end + 1] == "-":
        return True
    following = _NEXT_WORD.match(text, end)
    if following is not None:
        word = following.group(1).casefold()
        if word in ("and", "or"):
            after = _next_word(text, following.end())
            if after is not None and after in lexicon.colour_group:
                return True
        elif word not in _NOT_COLOUR_FOLLOWERS:
            return True
    previous = _previous_word(text, start)
    if previous is not None and previous in _COLOUR_LEADERS:
        return True
    joined = _PREV_COLOUR_JOIN.search(text, max(0, start - 40), start)
    return joined is not None and joined.group(1).casefold() in lexicon.colour_group


def _guess_plural(text: str, start: int, end: int, lexicon: Lexicon) -> bool:
    """The number of a noun spelt alike in both numbers ("sheep"), from its neighbours."""
    previous = _previous_word(text, start)
    if previous is not None:
        value = lexicon.number_value(previous)
        if previous in _PLURAL_CUES or (value is not None and value >= _MIN_COUNT):
            return True
        if previous.isdigit() and int(previous) >= _MIN_COUNT:
            return True
        if previous in _SINGULAR_CUES:
            return False
    return _next_word(text, end) in ("are", "were", "have")


def _lower_first(word: str) -> str:
    return (
        word if word == "I" or (word.isupper() and len(word) > 1) else word[:1].lower() + word[1:]
    )


# ---------------------------------------------------------------------------------------------
# Candidates


@dataclass(frozen=True)
class _Noun:
    """A noun after a quantity: its span, its two forms and its number."""

    start: int
    end: int
    forms: tuple[str, str] | None  # (singular, plural); None when spelt alike or unknown
    plural: bool | None


@dataclass(frozen=True)
class _Candidate:
    kind: EditKind
    source: str  # object, colour, swap, place, count, text
    start: int
    end: int
    key: str  # the normalised matched phrase, or the object name for objects
    plural: bool = False
    article: int | None = None  # start of a directly preceding "a"/"an"
    quantity: Quantity | None = None  # counts: the quantity read
    noun: _Noun | None = None  # counts: the noun after it, when known


@dataclass(frozen=True)
class _Replacement:
    kind: EditKind
    start: int
    end: int
    original: str
    injected: str

    def overlaps(self, other: _Replacement) -> bool:
        return self.start < other.end and other.start < self.end


def _noun_after(
    text: str,
    end: int,
    lexicon: Lexicon,
    subjects: Sequence[Subject] = (),
    value: int | None = None,
) -> _Noun | None:
    """The known noun at most three adjectives after ``end`` (a quantity's end, whose
    number is ``value`` when known).

    A known noun that modifies the next word ("two *orange* buses", "an *apple* pie") is read
    as an adjective, and so is a singular noun after a plural count ("three orange trees"):
    inflecting it to agree with a new count would write "four oranges buses".
    """
    position = end
    for _ in range(4):
        gap = _GAP.match(text, position)
        if gap is None:
            return None
        at = gap.end()
        found = lexicon.object_re.match(text, at)
        if found is not None:
            surface = norm(found.group())
            form = lexicon.forms.get(surface)
            pair = lexicon.inflections.get(surface)
            if form is not None:
                forms = pair if pair is not None and norm(pair[0]) != norm(pair[1]) else None
                after = _GAP.match(text, found.end())
                modifies = after is not None and (
                    lexicon.object_re.match(text, after.end()) is not None
                    or (
                        value is not None
                        and value >= 2
                        and form.plural is False
                        and forms is not None
                        and _ADJECTIVE_WORD.match(text, after.end()) is not None
                    )
                )
                if not modifies:
                    return _Noun(found.start(), found.end(), forms, form.plural)
                position = found.end()
                continue
        for subject in subjects:
            found = subject.pattern.match(text, at)
            if found is not None:
                plural = norm(found.group()) == norm(subject.plural)
                return _Noun(found.start(), found.end(), (subject.singular, subject.plural), plural)
        word = _ADJECTIVE_WORD.match(text, at)
        if word is None or word.group().casefold() in NOT_ADJECTIVES:
            return None
        if lexicon.number_value(word.group()) is not None:
            return None
        position = word.end()
    return None


def _object_form(text: str, match: re.Match[str], lexicon: Lexicon) -> Form | None:
    """The object a match of ``lexicon.object_re`` names, or ``None`` (an unknown form, or
    "orange" read as the colour)."""
    form = lexicon.forms.get(norm(match.group()))
    if form is None:
        return None
    if (
        form.name == "orange"
        and form.plural is False
        and _orange_is_colour(text, match.start(), match.end(), lexicon)
    ):
        return None
    return form


def _find_candidates(
    text: str, lexicon: Lexicon, kinds: frozenset[EditKind]
) -> tuple[list[_Candidate], list[str]]:
    """Every falsifiable span of ``text`` of an allowed kind, and the objects it names."""
    found: list[_Candidate] = []
    present: list[str] = []

    def add(candidate: _Candidate) -> None:
        if candidate.kind not in kinds:
            return
        # In a negated phrase a swap keeps the statement true ("no kite" -> "no dog").
        if candidate.kind not in (EditKind.REASONING, EditKind.TEXT) and _is_negated(
            text, candidate.start, lexicon
        ):
            return
        found.append(candidate)

    def simple(
        kind: EditKind, source: str, start: int, end: int, key: str, plural: bool = False
    ) -> None:
        add(_Candidate(kind, source, start, end, key, plural, _article_start(text, start)))

    for match in lexicon.object_re.finditer(text):
        form = _object_form(text, match, lexicon)
        if form is None:
            continue
        plural = form.plural
        if plural is None:
            plural = _guess_plural(text, match.start(), match.end(), lexicon)
        if form.name not in present:
            present.append(form.name)
        simple(EditKind.OBJECT, "object", match.start(), match.end(), form.name, plural)

    for match in lexicon.colour_re.finditer(text):
        word = norm(match.group())
        if word not in lexicon.colour_group:
            continue
        if word == "orange" and not _orange_is_colour(text, match.start(), match.end(), lexicon):
            continue
        simple(EditKind.ATTRIBUTE, "colour", match.start(), match.end(), word)

    places: list[tuple[int, int]] = []
    if lexicon.place_re is not None:
        for match in lexicon.place_re.finditer(text):
            places.append(match.span())
            simple(EditKind.SPATIAL, "place", match.start(), match.end(), norm(match.group()))
    for kind, pattern in lexicon.swap_re.items():
        for match in pattern.finditer(text):
            key = norm(match.group())
            inside_place = any(a <= match.start() and match.end() <= b for a, b in places)
            if key in lexicon.swaps[kind] and not inside_place:
                simple(kind, "swap", match.start(), match.end(), key)

    for match in re.finditer(r"(?<![\w-])[^\W\d_]+(?![\w-])", text):
        value = lexicon.number_value(match.group())
        if value is None or value < 1:
            continue
        noun = _noun_after(text, match.end(), lexicon, value=value) if lexicon.english else None
        if value < _MIN_COUNT and (noun is None or noun.forms is None):
            continue
        quantity = Quantity(match.start(), match.end(), value, "word")
        add(_Candidate(EditKind.COUNT, "count", match.start(), match.end(), str(value),
                       quantity=quantity, noun=noun))  # fmt: skip

    for match in _DIGITS.finditer(text):
        value = int(match.group(1))
        if not 1 <= value <= _MAX_DIGIT_COUNT:
            continue
        noun = _noun_after(text, match.end(1), lexicon, value=value) if lexicon.english else None
        if value < _MIN_COUNT and (noun is None or noun.forms is None):
            continue
        quantity = Quantity(match.start(1), match.end(1), value, "digit")
        add(_Candidate(EditKind.COUNT, "count", match.start(1), match.end(1), str(value),
                       quantity=quantity, noun=noun))  # fmt: skip

    for pattern in _QUOTES:
        for match in pattern.finditer(text):
            inner = match.group(1)
            if inner.strip() and any(ch.isalnum() for ch in inner):
                simple(EditKind.TEXT, "text", match.start(1), match.end(1), inner)

    # Sorted so that the draw below does not depend on the order the finders ran in.
    found.sort(key=lambda c: (c.start, c.end, c.kind.value, c.source))
    return found, present


# ---------------------------------------------------------------------------------------------
# Omissions

# How the items of a list are joined: ", and " (serial comma), ", ", " and ".
_LIST_JOIN = re.compile(r",[ \t]+and[ \t]+|,[ \t]+|[ \t]+and[ \t]+")
# A list item that can be left out starts as a noun phrase does.
_ITEM_START = re.compile(
    r"(?:a|an|the|one|two|three|four|five|six|seven|eight|nine|ten|some|several|many|\d+)"
    r"(?=[ \t])",
    re.IGNORECASE,
)
_MAX_ITEM_WORDS = 8


@dataclass(frozen=True)
class _Item:
    join_start: int  # where the join before the item starts
    start: int  # where the item's own text starts
    end: int
    join: str  # the join before it: ", ", " and ", ", and "


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text``, its end punctuation included and
    surrounding white space excluded."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        end = len(text) if match is None else match.end()
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
        start = end
    return spans


def _list_items(text: str, start: int, end: int) -> list[_Item]:
    """The items of ``text[start:end]`` after its first, split at list joins; the first
    item (the sentence's start, "The image shows two cups") is never one of them."""
    body_end = end
    while body_end > start and text[body_end - 1] in ".!?\"')]\u201d\u2019":
        body_end -= 1
    joins = list(_LIST_JOIN.finditer(text, start, body_end))
    items: list[_Item] = []
    for index, join in enumerate(joins):
        item_end = joins[index + 1].start() if index + 1 < len(joins) else body_end
        items.append(_Item(join.start(), join.end(), item_end, join.group()))
    return items


def _mentions(text: str, start: int, end: int, lexicon: Lexicon) -> list[str]:
    """The object names mentioned in ``text[start:end]`` (not negated), in order."""
    names: list[str] = []
    for match in lexicon.object_re.finditer(text, start, end):
        form = _object_form(text, match, lexicon)
        if form is not None and not _is_negated(text, match.start(), lexicon):
            names.append(form.name)
    return names


def _omission(text: str, lexicon: Lexicon, rng: random.Random) -> list[_Replacement] | None:
    """Replacements that leave one listed object out of ``text``, or ``None``.

    A candidate is an item of a list in one sentence ("..., *a blue cup at the top* and a
    kite"), not the list's first, that starts as a noun phrase ("a", "two", "some"...), has at
    most eight words and names exactly one object, named nowhere else in its sentence. The
    item goes with the join before it; when it was the last, the join before the new last item
    becomes the one it had ("A, B and C" becomes "A and B"). Other sentences that name the
    object go too, so the answer does not mention what it no longer lists; candidates whose
    object no other sentence names are preferred.
    """
    sentences = _sentence_spans(text)
    options: list[tuple[_Item, list[_Item], list[tuple[int, int]]]] = []
    for index, (start, end) in enumerate(sentences):
        items = _list_items(text, start, end)
        if len(items) == 1 and "and" not in items[0].join:
            continue  # "On the left, a cat sits" is no list; "A and B" and "A, B, C" are
        for item in items:
            words = text[item.start : item.end].split()
            if not _ITEM_START.match(text, item.start) or len(words) > _MAX_ITEM_WORDS:
                continue
            names = set(_mentions(text, item.start, item.end, lexicon))
            if len(names) != 1:
                continue
            (name,) = names
            around = (*_mentions(text, start, item.join_start, lexicon),
                      *_mentions(text, item.end, end, lexicon))  # fmt: skip
            if name in around:
                continue
            dropped = [
                span
                for other, span in enumerate(sentences)
                if other != index and name in _mentions(text, *span, lexicon)
            ]
            options.append((item, items, dropped))
    if not options:
        return None
    rng.shuffle(options)
    options.sort(key=lambda option: len(option[2]))
    item, items, dropped = options[0]
    replacements = [_omit_item(text, item, items)]
    for start, end in dropped:
        # The sentence and the white space before it (after it, for the answer's first).
        low, high = start, end
        while low > 0 and text[low - 1] in " \t\n":
            low -= 1
        if low == 0:
            while high < len(text) and text[high] in " \t\n":
                high += 1
        replacements.append(_Replacement(EditKind.OMISSION, low, high, text[low:high], ""))
    return sorted(replacements, key=lambda r: r.start)


def _omit_item(text: str, item: _Item, items: list[_Item]) -> _Replacement:
    """The replacement that removes ``item`` and the join before it from its list
    (``items``, as :func:`_list_items` found them), the joins left made to read right."""
    position = items.index(item)
    previous = items[position - 1] if position > 0 else None
    following = items[position + 1] if position + 1 < len(items) else None
    if (
        following is None
        and previous is not None
        and previous.join.strip() == ","
        and "and" in item.join
    ):
        # "A, B and C" without C is "A and B": B's join becomes the one C had ("A, B, and C"
        # without C is "A and B" too: no serial comma between two).
        join = " and " if len(items) == 2 else item.join
        original = text[previous.join_start : item.end]
        injected = join + text[previous.start : item.join_start]
        return _Replacement(EditKind.OMISSION, previous.join_start, item.end, original, injected)
    if following is not None and len(items) == 2 and following.join.startswith(", and"):
        # "A, B, and C" without B is "A and C", without the serial comma.
        original = text[item.join_start : following.start]
        return _Replacement(EditKind.OMISSION, item.join_start, following.start, original, " and ")
    original = text[item.join_start : item.end]
    return _Replacement(EditKind.OMISSION, item.join_start, item.end, original, "")


# ---------------------------------------------------------------------------------------------
# The hallucinator


class RuleHallucinator(Hallucinator):
    """Injects typed errors into an answer with word lists and a co-occurrence table.

    No network and no model: the embedded default hallucinator and the baseline the LLM
    providers are compared with. It reads the question first and corrupts what it asks; see the
    module documentation for the method.

    Args:
        min_edits: the fewest edits to make when the answer has enough candidates (at least 1).
        max_edits: the most edits to make (at least ``min_edits``). The number of edits is
            drawn uniformly between the two for each example; the edits that keep a flipped
            yes/no answer coherent may add to it.
        kinds: the :class:`~povidgen.EditKind` values (or their names) that may be injected;
            every kind but ``omission`` (:data:`povidgen.schema.INJECTED_KINDS`) when ``None``.
        word_lists: word lists for answers in another language: a JSON file, a mapping, or a
            list of them, one per language (the format is in
            :mod:`povidgen.hallucinate.lexicon`). Without lists for its language, an answer
            that is not in English is a :class:`~povidgen.HallucinationError`.
        omissions: the share (``0`` to ``1``) of English descriptions (answers to a prompt
            that asks no question, such as "Describe the image.") whose rejected answer
            instead leaves out one object that the answer lists (an
            :attr:`~povidgen.EditKind.OMISSION`; see "Omissions" in the module
            documentation). ``0``, the default, makes none.

    Raises:
        ValueError: on a bad value of any argument (including unreadable word lists).
    """

    name: ClassVar[str] = "rule"

    def __init__(
        self,
        *,
        min_edits: int = 2,
        max_edits: int = 3,
        kinds: Collection[str | EditKind] | None = None,
        word_lists: WordListSource | Sequence[WordListSource] | None = None,
        omissions: float = 0.0,
    ) -> None:
        if (
            isinstance(omissions, bool)
            or not isinstance(omissions, int | float)
            or not 0.0 <= omissions <= 1.0
        ):
            raise ValueError(f"omissions must be a number from 0 to 1, got {omissions!r}")
        self._omissions = float(omissions)
        for label, value in (("min_edits", min_edits), ("max_edits", max_edits)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{label} must be an int, got {value!r}")
        if min_edits < 1:
            raise ValueError(f"min_edits must be at least 1, got {min_edits}")
        if max_edits < min_edits:
            raise ValueError(f"max_edits ({max_edits}) must be at least min_edits ({min_edits})")
        self._min_edits = min_edits
        self._max_edits = max_edits
        self._kinds = _parse_kinds(kinds)
        self._word_lists: dict[str, Lexicon] = {}
        for source in _word_list_sources(word_lists):
            lexicon = load_word_lists(source)
            if lexicon.language in self._word_lists:
                raise ValueError(f"word lists for {lexicon.language!r} were given twice")
            self._word_lists[lexicon.language] = lexicon

    @property
    def min_edits(self) -> int:
        """The fewest edits made when the answer allows."""
        return self._min_edits

    @property
    def max_edits(self) -> int:
        """The most edits made."""
        return self._max_edits

    @property
    def kinds(self) -> frozenset[EditKind]:
        """The kinds of error this instance may inject (omissions are set by ``omissions``)."""
        return self._kinds

    @property
    def omissions(self) -> float:
        """The share of descriptions whose rejected answer leaves out a listed object."""
        return self._omissions

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages answers may be in: ``"en"`` and those of the supplied word lists."""
        return ("en", *sorted(self._word_lists))

    def params(self) -> dict[str, Any]:
        data = english()
        params: dict[str, Any] = {
            "min_edits": self._min_edits,
            "max_edits": self._max_edits,
            "kinds": sorted(kind.value for kind in self._kinds),
            "table_version": data.table_version,
            "lexicon_version": data.version,
            "rules_version": RULES_VERSION,
        }
        if self._omissions:
            # Only when set, so that the parameters (and the build's cache keys) of a
            # hallucinator without omissions stay what they were before the option existed.
            params["omissions"] = self._omissions
        if self._word_lists:
            params["word_lists"] = {
                code: {"version": lexicon.version, "sha256": lexicon.fingerprint}
                for code, lexicon in sorted(self._word_lists.items())
            }
        return params

    async def ahallucinate(self, example: Example) -> Hallucination:
        """Return ``example.answer`` with between ``min_edits`` and ``max_edits`` errors,
        the question's first.

        Raises:
            HallucinationError: the answer is not in English (and no word lists were given for
                its language), it has nothing the rules can change, or no coherent rewrite
                could be made (the message says which).
        """
        rng = random.Random(derive_seed(example.seed, example.id, "rule"))
        if self._omissions:
            omitted = self._omit(example, derive_seed(example.seed, example.id, "rule-omission"))
            if omitted is not None:
                return omitted
        return self._corrupt(example.prompt, example.answer, rng)

    def _omit(self, example: Example, seed: int) -> Hallucination | None:
        """``example.answer`` with one listed object left out, drawn with probability
        ``omissions`` for an English description; ``None`` otherwise or when the answer lists
        nothing that can go."""
        rng = random.Random(seed)
        if rng.random() >= self._omissions:
            return None
        lexicon = self._lexicon_for(example.answer)
        if not lexicon.english or parse_question(example.prompt, lexicon) is not None:
            return None
        if leading_yes_no(example.answer) is not None:
            return None
        replacements = _omission(example.answer, lexicon, rng)
        return None if replacements is None else _apply(example.answer, replacements)

    def _lexicon_for(self, answer: str) -> Lexicon:
        profiles = {code: lexicon.function_words for code, lexicon in self._word_lists.items()}
        language = detect_language(answer, profiles)
        if language == "en":
            return english()
        if language in self._word_lists:
            return self._word_lists[language]
        if language.startswith("script:"):
            looks = f"is written mostly in {language.removeprefix('script:')} script"
        else:
            looks = f"looks {language_name(language)} ({language})"
        raise HallucinationError(
            f"the answer {looks}, not English: the rule hallucinator's word lists are English. "
            "Pass word lists for its language (RuleHallucinator(word_lists=...), see "
            "povidgen.hallucinate.lexicon) or use a model-based hallucinator"
        )

    # The work is pure CPU and quick, so the async entry point simply calls it.
    def _corrupt(self, prompt: str, text: str, rng: random.Random) -> Hallucination:
        lexicon = self._lexicon_for(text)
        question = parse_question(prompt, lexicon)
        if question is None and lexicon.english:
            question = _implicit_existence(text, lexicon)
        candidates, present = _find_candidates(text, lexicon, self._kinds)
        mentioned = frozenset(
            n for n in lexicon.object_names if lexicon.objects[n].mention.search(text)
        )
        state = _DrawState(text, lexicon, present, mentioned, rng, self._kinds)
        target = rng.randint(self._min_edits, self._max_edits)
        asked: list[_Replacement] = []
        if question is not None and lexicon.english:
            asked = _asked_edits(question, candidates, state)
        protected = {s.name for s in question.subjects} if question is not None else set()
        flips = question is not None and question.kind in ("existence", "yes_no")
        pool = [
            c
            for c in candidates
            if not (c.source == "object" and c.key in protected)
            and not (flips and c.kind is EditKind.REASONING)
            and not (leading_yes_no(text) is not None and c.kind is EditKind.REASONING)
        ]
        asked = _consistent(asked)
        more = _choose(pool, max(0, target - len(asked)), state, asked)
        replacements = sorted([*asked, *more], key=lambda r: r.start)
        if not replacements:
            raise HallucinationError(
                _nothing_to_change(question, self._kinds, lexicon, bool(candidates))
            )
        result = _apply(text, replacements)
        problem = answer_problem(question, text, result.rejected, lexicon, require_change=False)
        if problem is not None and asked and more:
            logger.debug("rule hallucinator: dropping further edits: %s", problem)
            result = _apply(text, sorted(asked, key=lambda r: r.start))
            problem = answer_problem(question, text, result.rejected, lexicon, require_change=False)
        if problem is not None:
            raise HallucinationError(f"the rule hallucinator made no coherent rewrite: {problem}")
        return result


def _consistent(replacements: list[_Replacement]) -> list[_Replacement]:
    """``replacements`` without any that change nothing or overlap an earlier one."""
    kept: list[_Replacement] = []
    for replacement in replacements:
        if replacement.injected == replacement.original or not replacement.injected.strip():
            continue
        if any(replacement.overlaps(r) for r in kept):
            continue
        kept.append(replacement)
    return kept


def _word_list_sources(
    word_lists: WordListSource | Sequence[WordListSource] | None,
) -> list[WordListSource]:
    if word_lists is None:
        return []
    if isinstance(word_lists, str | bytes) or not isinstance(word_lists, Sequence):
        if isinstance(word_lists, bytes):
            raise ValueError("word_lists must be a path, a mapping or a list of them, not bytes")
        return [word_lists]
    return list(word_lists)


def _nothing_to_change(
    question: Question | None, kinds: frozenset[EditKind], lexicon: Lexicon, found: bool
) -> str:
    allowed = sorted(k.value for k in kinds)
    what = "the answer" if question is None else "the answer to the question"
    if found:
        return (
            f"nothing in {what} can be changed by the rule hallucinator: the words it knows "
            "there have no replacement left (an object is swapped only for one the answer "
            "does not name, and it already names every object of the co-occurrence table), "
            "or they belong to the objects the question asks about"
        )
    reason = (
        f"nothing in {what} can be changed by the rule hallucinator: it names no object, "
        "colour, count, place, relation, quoted text or negation from its word lists"
    )
    if kinds != _SUPPORTED_KINDS:
        reason += f" that the allowed kinds {allowed} cover"
    if lexicon.english:
        reason += " (if the answer is not in English, pass word lists for its language)"
    return reason


def _parse_kinds(kinds: Collection[str | EditKind] | None) -> frozenset[EditKind]:
    if kinds is None:
        return _SUPPORTED_KINDS
    if isinstance(kinds, str | bytes) or not isinstance(kinds, Iterable):
        raise ValueError(f"kinds must be a collection of edit kinds, got {kinds!r}")
    parsed: set[EditKind] = set()
    for kind in kinds:
        try:
            parsed.add(EditKind(str(kind).casefold()))
        except ValueError:
            valid = ", ".join(k.value for k in INJECTED_KINDS)
            raise ValueError(f"unknown edit kind {kind!r}; choose from: {valid}") from None
        if EditKind.OMISSION in parsed:
            raise ValueError(
                "kinds names the errors to inject; 'omission' is not one of them: set "
                "omissions=SHARE to leave objects out of descriptions"
            )
    if not parsed:
        raise ValueError("kinds must name at least one edit kind")
    return frozenset(parsed)


def _implicit_existence(text: str, lexicon: Lexicon) -> Question | None:
    """An answer that starts with Yes/No and says "there is/are ...", read as the answer to
    "Is there a <first object it names>?" (so the flip stays coherent)."""
    leading = leading_yes_no(text)
    if leading is None:
        return None
    end = _SENTENCE_END.search(text)
    first = text[: end.end() if end else len(text)]
    if not _THERE_IS.search(first):
        return None
    found = lexicon.object_re.search(first, leading[1])
    if found is None:
        return None
    surface = norm(found.group())
    form = lexicon.forms[surface]
    singular, plural = lexicon.inflections[surface]
    subject = Subject(
        name=form.name,
        singular=singular,
        plural=plural,
        plural_in_question=bool(form.plural),
        known=True,
        pattern=phrase_re({singular, plural}),
    )
    return Question(f"Is there {_article_for(singular)} {singular}?", "existence", (subject,))


class _DrawState:
    """What the replacements of one answer share: the text, the rng, the objects used."""

    def __init__(
        self,
        text: str,
        lexicon: Lexicon,
        present: list[str],
        mentioned: frozenset[str],
        rng: random.Random,
        kinds: frozenset[EditKind],
    ) -> None:
        self.text = text
        self.lexicon = lexicon
        self.present = present
        self.mentioned = mentioned
        self.rng = rng
        self.kinds = kinds
        self.used_objects: set[str] = set()
        words = {m.group().casefold() for m in re.finditer(r"\w+", text)}
        self.used_colours = {lexicon.colour_group[w] for w in words if w in lexicon.colour_group}
        self.used_numbers = {
            lexicon.numbers.index(w) if w in lexicon.numbers else int(w)
            for w in words
            if w in lexicon.numbers or (w.isascii() and w.isdigit() and len(w) <= 3)
        }
        if words & {"a", "an", "one"}:
            self.used_numbers.add(1)
        self.used_places = {
            norm(m.group()) for m in (lexicon.place_re.finditer(text) if lexicon.place_re else ())
        }

    def absent_object(self, near: Iterable[str]) -> str | None:
        """An object not named in the answer, preferring those that co-occur with ``near``."""
        lexicon = self.lexicon
        blocked = self.mentioned | self.used_objects
        pools = (
            [c for name in near if name in lexicon.objects for c in lexicon.objects[name].cooccurs],
            [c for name in self.present for c in lexicon.objects[name].cooccurs],
            list(lexicon.object_names),
        )
        for pool in pools:
            options = sorted({name for name in pool if name not in blocked})
            if options:
                choice = self.rng.choice(options)
                self.used_objects.add(choice)
                return choice
        return None

    def prefer_unused(self, options: list[int], used: set[int]) -> int:
        """A random option, among those the answer does not already use when there are any."""
        fresh = [o for o in options if o not in used]
        return self.rng.choice(fresh or options)

    def other_place(self, options: Sequence[str]) -> str:
        """A random place among ``options``, preferring those the answer does not use."""
        fresh = [o for o in options if norm(o) not in self.used_places]
        choice = self.rng.choice(sorted(fresh or options))
        self.used_places.add(norm(choice))
        return choice

    def other_colour(self, group: int) -> str:
        others = [i for i in range(len(self.lexicon.colours)) if i != group]
        choice = self.prefer_unused(others, self.used_colours)
        self.used_colours.add(choice)
        return self.lexicon.colours[choice]


# ---------------------------------------------------------------------------------------------
# Proposals


def _propose(
    candidate: _Candidate, state: _DrawState, *, full_range: bool = False
) -> _Replacement | None:
    """The replacement for ``candidate``, or ``None`` when there is none."""
    lexicon, rng = state.lexicon, state.rng
    source, key = candidate.source, candidate.key
    if source == "count":
        return _count_replacement(candidate, state, full_range=full_range)
    word: str | None
    if source == "object":
        name = state.absent_object([key])
        if name is None:
            return None
        entry = lexicon.objects[name]
        word = entry.plural if candidate.plural else entry.singular
    elif source == "colour":
        word = state.other_colour(lexicon.colour_group[key])
    elif source == "place":
        word = state.other_place(lexicon.places[key])
    elif source == "swap":
        word = rng.choice(lexicon.swaps[candidate.kind][key])
    elif source == "text":
        word = _other_text(key, lexicon, rng)
    else:  # pragma: no cover
        raise AssertionError(f"unknown candidate source {source!r}")
    if word.casefold() == key.casefold():
        return None
    replacement = _replacement(candidate, word, state.text)
    return None if replacement.injected == replacement.original else replacement


def _count_options(value: int, style: str, noun: _Noun | None, full_range: bool) -> list[int]:
    """The numbers a quantity may become (see the module documentation)."""
    inflectable = noun is not None and noun.forms is not None
    lowest = 1 if (inflectable and (full_range or value == 1)) else _MIN_COUNT
    if style == "no":
        return [1, 2, 3] if inflectable else [2, 3]
    if style == "digit":
        spread = max(2, value // 4)
        low, high = max(lowest, value - spread), min(_MAX_DIGIT_COUNT, value + spread)
    else:
        low, high = max(lowest, value - 2), value + 3
    return [m for m in range(low, high + 1) if m != value]


def _count_replacement(
    candidate: _Candidate, state: _DrawState, *, full_range: bool
) -> _Replacement | None:
    quantity, noun = candidate.quantity, candidate.noun
    assert quantity is not None
    options = _count_options(quantity.value, quantity.style, noun, full_range)
    if not options:
        return None
    value = state.prefer_unused(options, state.used_numbers)
    state.used_numbers.add(value)
    return _requantify(state.text, quantity, noun, value, state.lexicon, EditKind.COUNT)


def _requantify(
    text: str,
    quantity: Quantity,
    noun: _Noun | None,
    value: int,
    lexicon: Lexicon,
    kind: EditKind,
) -> _Replacement | None:
    """``quantity`` rewritten to ``value``, its noun and the verbs around it made to agree."""
    written = text[quantity.start : quantity.end]
    if quantity.style == "digit" or value >= len(lexicon.numbers):
        number = str(value)
    else:
        number = lexicon.numbers[value]
    pieces: list[tuple[int, int, str]] = [
        (quantity.start, quantity.end, _match_case(written, number))
    ]
    now_plural = value != 1
    was_plural = (
        noun.plural if noun is not None and noun.plural is not None else quantity.value != 1
    )
    if now_plural != was_plural:
        if noun is None or noun.forms is None:
            return None
        surface = text[noun.start : noun.end]
        pieces.append(
            (noun.start, noun.end, _match_case(surface, noun.forms[1 if now_plural else 0]))
        )
        verb = verb_before(text, quantity.start)
        if verb is not None:
            start, end, said = verb
            if said.startswith(("'", CURLY_APOSTROPHE)):
                pieces.append((start, end, " are" if now_plural else said))
            else:
                pieces.append((start, end, _match_case(said, _VERB_SWAP[said.casefold()])))
        after = _VERB_AFTER.match(text, noun.end)
        if after is not None:
            said = after.group(1)
            pieces.append(
                (after.start(1), after.end(1), _match_case(said, _VERB_SWAP[said.casefold()]))
            )
    pieces.sort()
    start, end = pieces[0][0], max(p[1] for p in pieces)
    injected, cursor = [], start
    for piece_start, piece_end, new in pieces:
        injected.append(text[cursor:piece_start])
        injected.append(new)
        cursor = piece_end
    injected.append(text[cursor:end])
    original = text[start:end]
    rewritten = "".join(injected)
    if rewritten == original:
        return None
    return _Replacement(kind, start, end, original, rewritten)


def _other_text(inner: str, lexicon: Lexicon, rng: random.Random) -> str:
    """Different sign or label text in the same style as ``inner``."""
    stripped = inner.strip()
    if stripped.isascii() and stripped.isdigit():
        width = len(stripped)
        low = 10 ** (width - 1) if width > 1 else 0
        numbers = [n for n in range(low, min(10**width, low + 200)) if str(n) != stripped]
        number = str(rng.choice(numbers)).zfill(width)
        return inner.replace(stripped, number)
    options = [t for t in lexicon.texts if t.casefold() != stripped.casefold()]
    chosen = rng.choice(options)
    letters = [ch for ch in stripped if ch.isalpha()]
    if letters and all(ch.isupper() for ch in letters):
        return chosen
    if letters and all(ch.islower() for ch in letters):
        return chosen.lower()
    return chosen.title()


def _replacement(candidate: _Candidate, word: str, text: str) -> _Replacement:
    """``candidate`` rewritten to ``word``, with a preceding article fixed if need be."""
    original = text[candidate.start : candidate.end]
    # Quoted text already carries its own style.
    injected = word if candidate.source == "text" else _match_case(original, word)
    if candidate.article is not None:
        article_end = candidate.article + (2 if text[candidate.article + 1].isalpha() else 1)
        article = text[candidate.article : article_end]
        needed = _article_for(word)
        if article.casefold() != needed:
            gap = text[article_end : candidate.start]
            return _Replacement(
                candidate.kind,
                candidate.article,
                candidate.end,
                text[candidate.article : candidate.end],
                _match_case(article, needed) + gap + injected,
            )
    return _Replacement(candidate.kind, candidate.start, candidate.end, original, injected)


def _choose(
    candidates: list[_Candidate],
    target: int,
    state: _DrawState,
    taken: Sequence[_Replacement] = (),
) -> list[_Replacement]:
    """Up to ``target`` replacements not overlapping each other or ``taken``, taking kinds in
    turn for diversity."""
    rng = state.rng
    pools: dict[EditKind, list[_Candidate]] = {}
    for candidate in candidates:
        pools.setdefault(candidate.kind, []).append(candidate)
    order = sorted(pools, key=lambda k: k.value)
    rng.shuffle(order)
    for pool in pools.values():
        rng.shuffle(pool)

    chosen: list[_Replacement] = []

    def overlaps(start: int, end: int) -> bool:
        return any(start < r.end and r.start < end for r in [*taken, *chosen])

    while len(chosen) < target and any(pools.values()):
        for kind in order:
            pool = pools[kind]
            while pool:
                candidate = pool.pop()
                low = candidate.start if candidate.article is None else candidate.article
                if overlaps(low, candidate.end):
                    continue
                replacement = _propose(candidate, state)
                if replacement is None or overlaps(replacement.start, replacement.end):
                    continue
                chosen.append(replacement)
                break
            if len(chosen) >= target:
                break
    return chosen


def _apply(text: str, replacements: list[_Replacement]) -> Hallucination:
    """Rewrite ``text`` left to right, recording where each injected text lands."""
    pieces: list[str] = []
    edits: list[Edit] = []
    cursor = 0
    length = 0
    for r in replacements:
        pieces.append(text[cursor : r.start])
        length += r.start - cursor
        edits.append(
            Edit(
                kind=r.kind,
                original=r.original,
                injected=r.injected,
                start=length,
                end=length + len(r.injected),
            )
        )
        pieces.append(r.injected)
        length += len(r.injected)
        cursor = r.end
    pieces.append(text[cursor:])
    return Hallucination(rejected="".join(pieces), edits=edits)


# ---------------------------------------------------------------------------------------------
# What the question asks


def _asked_edits(
    question: Question, candidates: list[_Candidate], state: _DrawState
) -> list[_Replacement]:
    """The edits that corrupt what ``question`` asks, or ``[]`` when the answer does not say
    it (or its kind is not allowed)."""
    kinds = state.kinds
    subject = question.subjects[0] if question.subjects else None
    text = state.text
    if question.kind == "existence" and subject is not None:
        if EditKind.REASONING not in kinds:
            return []
        return _existence_flip(question, subject, state)
    if question.kind == "yes_no":
        if EditKind.REASONING not in kinds:
            return []
        return _yes_no_flip(question, candidates, state)
    if question.kind == "count" and subject is not None:
        if EditKind.COUNT not in kinds:
            return []
        return _asked_count(subject, state)
    about = _about(text, subject)
    # Failing the clause, the sentences that mention the subject ("The bus is parked, and it
    # is red.").
    sentences = _sentences_with_all(text, (subject,)) if subject is not None else []
    if question.kind == "attribute":
        source = "colour" if question.attribute == "colour" else "swap"
        wanted = [c for c in candidates if c.source == source and c.kind is EditKind.ATTRIBUTE]
        return _same_change(_nearest(wanted, about) or _nearest(wanted, sentences), state)
    if question.kind == "position":
        wanted = [c for c in candidates if c.kind is EditKind.SPATIAL]
        places = [c for c in wanted if c.source == "place"]
        near = _nearest(places, about) or _nearest(wanted, about)
        return _same_change(near or _nearest(places or wanted, sentences), state)
    if question.kind == "relation":
        spans = _sentences_with_all(text, question.subjects)
        wanted = [
            c
            for c in candidates
            if c.kind in (EditKind.SPATIAL, EditKind.RELATION)
            and (not spans or any(a <= c.start and c.end <= b for a, b in spans))
        ]
        if not wanted:
            wanted = [c for c in candidates if c.kind is EditKind.ATTRIBUTE and c.source == "swap"]
        return _first_that_works(wanted, state)
    if question.kind == "object":
        protected = {s.name for s in question.subjects}
        wanted = [c for c in candidates if c.source == "object" and c.key not in protected]
        return _first_that_works(wanted, state)
    return []


def _about(text: str, subject: Subject | None) -> list[tuple[int, int]]:
    """The clauses of ``text`` that mention ``subject`` (all of it when none does)."""
    if subject is None:
        return [(0, len(text))]
    spans = [clause_around(text, m.start, m.end) for m in mentions(text, subject)]
    return spans or [(0, len(text))]


def _nearest(candidates: list[_Candidate], spans: list[tuple[int, int]]) -> list[_Candidate]:
    return [c for c in candidates if any(a <= c.start and c.end <= b for a, b in spans)]


def _same_change(candidates: list[_Candidate], state: _DrawState) -> list[_Replacement]:
    """One new value for every candidate with the first one's phrase (all of the subject's
    colours become the same new colour), in order."""
    if not candidates:
        return []
    first = candidates[0]
    replacement = _propose(first, state)
    if replacement is None:
        return []
    new_word = replacement.injected.split()[-1] if first.source == "colour" else None
    chosen = [replacement]
    for candidate in candidates[1:]:
        if candidate.key != first.key or candidate.source != first.source:
            continue
        if new_word is not None:
            again = _replacement(candidate, new_word.casefold(), state.text)
        else:
            again = _replacement(candidate, replacement.injected.casefold(), state.text)
        if all(not again.overlaps(r) for r in chosen) and again.injected != again.original:
            chosen.append(again)
    return chosen


def _first_that_works(candidates: list[_Candidate], state: _DrawState) -> list[_Replacement]:
    for candidate in candidates:
        replacement = _propose(candidate, state)
        if replacement is not None:
            return [replacement]
    return []


def _sentences_with_all(text: str, subjects: tuple[Subject, ...]) -> list[tuple[int, int]]:
    spans = []
    cursor = 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        end = match.end() if match is not None else len(text)
        if end > cursor:
            sentence = text[cursor:end]
            if subjects and all(s.pattern.search(sentence) for s in subjects):
                spans.append((cursor, end))
        cursor = end
    return spans


def _asked_count(subject: Subject, state: _DrawState) -> list[_Replacement]:
    """The subject's quantity changed, its noun and verbs agreeing (any number but the old)."""
    text, lexicon = state.text, state.lexicon
    for mention in mentions(text, subject):
        quantity = quantity_before(text, mention.start)
        if quantity is None:
            continue
        noun = _noun_after(text, quantity.end, lexicon, [subject], value=quantity.value)
        if noun is None:
            noun = _Noun(
                mention.start, mention.end, (subject.singular, subject.plural), mention.plural
            )
        candidate = _Candidate(
            EditKind.COUNT, "count", quantity.start, quantity.end, str(quantity.value),
            quantity=quantity, noun=noun,
        )  # fmt: skip
        replacement = _count_replacement(candidate, state, full_range=True)
        if replacement is not None:
            return [replacement]
    # A bare number ("Three.", "There are 3."): the first number of the answer.
    for match in re.finditer(r"(?<![\w.,-])(\d{1,2}|[A-Za-z]+)(?![\w-])", text):
        word = match.group(1)
        value = int(word) if word.isdigit() else lexicon.number_value(word)
        if value is None:
            continue
        quantity = Quantity(
            match.start(1), match.end(1), value, "digit" if word.isdigit() else "word"
        )
        options = [m for m in range(max(_MIN_COUNT, value - 2), value + 4) if m != value]
        if value == 1:
            options = []  # "one" without a noun: the agreement cannot be fixed
        if options:
            chosen = state.prefer_unused(options, state.used_numbers)
            replacement = _requantify(text, quantity, None, chosen, lexicon, EditKind.COUNT)
            if replacement is not None:
                return [replacement]
        break
    return []


def _existence_flip(question: Question, subject: Subject, state: _DrawState) -> list[_Replacement]:
    said = polarity(state.text, subject)
    if said == "yes":
        return _to_no(subject, state)
    if said == "no":
        return _to_yes(subject, state)
    return []


def _to_no(subject: Subject, state: _DrawState) -> list[_Replacement]:
    """A "yes" answer made "no".

    When the rest of the answer names the subject again and an absent object can stand in for
    it, the conclusion becomes "No, there is no cup;" and every later mention of the cup names
    that object instead ("there are three white bottles at the bottom"), as long as the
    rewrite stays within :data:`_MAX_GROWTH` times the answer's length. Otherwise the whole
    answer becomes "No, there is no cup in the image." (a rest that does not name the cup may
    still refer to it: "Yes, it is on the table.").
    """
    text = state.text
    plural = subject.plural_in_question
    absent = f"there {'are' if plural else 'is'} no {subject.form(plural)}"
    leading = leading_yes_no(text)
    whole = text.strip()
    begin = text.index(whole)
    if leading is not None:
        short = f"{_match_case(text[leading[0] : leading[1]], 'no')}, {absent} in the image."
    else:
        short = f"{absent[:1].upper()}{absent[1:]} in the image."
    fallback = [_Replacement(EditKind.REASONING, begin, begin + len(whole), whole, short)]
    if leading is not None:
        start, end, _ = leading
        punctuation = re.match(r"[ \t]*([,.!;:])", text[end:])
        rest_from = end + (punctuation.end() if punctuation else 0)
        mark = ";" if punctuation is None or punctuation.group(1) == "," else punctuation.group(1)
        no = _match_case(text[start:end], "no")
        flip = _Replacement(
            EditKind.REASONING, start, rest_from, text[start:rest_from], f"{no}, {absent}{mark}"
        )
    else:
        first = re.match(r"\s*([A-Za-z]+)", text)
        if first is None:
            return fallback
        word = first.group(1)
        flip = _Replacement(
            EditKind.REASONING,
            first.start(1),
            first.end(1),
            word,
            f"{absent[:1].upper()}{absent[1:]}; {_lower_first(word)}",
        )
    rest = [m for m in mentions(text, subject) if m.start >= flip.end]
    if not rest or EditKind.OBJECT not in state.kinds:
        return fallback
    name = state.absent_object([subject.name] if subject.known else state.present)
    if name is None:
        return fallback
    replacements = [flip]
    entry = state.lexicon.objects[name]
    for mention in rest:
        many = mention.plural if mention.plural is not None else plural
        article = _article_start(text, mention.start)
        if article is not None and article < flip.end:
            article = None  # the flip already rewrote it
        candidate = _Candidate(
            EditKind.OBJECT, "object", mention.start, mention.end, subject.name, many, article
        )
        replacement = _replacement(candidate, entry.plural if many else entry.singular, text)
        if not any(replacement.overlaps(r) for r in replacements):
            replacements.append(replacement)
    growth = sum(len(r.injected) - len(r.original) for r in replacements)
    if len(text) + growth > _MAX_GROWTH * len(text):
        return fallback
    return replacements


_POSITIVE: tuple[tuple[re.Pattern[str], Callable[[re.Match[str], str], str]], ...] = (
    # "there is no X" -> "there is a X"; "there are no Xs" -> "there are two Xs"
    (
        re.compile(
            r"(?P<lead>there[ \t]+(?:is|are|was|were)[ \t]+)no(?P<tail>[ \t].*)", re.I | re.S
        ),
        lambda m, q: f"{m.group('lead')}{q}{m.group('tail')}",
    ),
    # "there isn't a X" / "there are not any Xs" -> "there is a X" / "there are two Xs"
    (
        re.compile(
            r"(?P<lead>there[ \t]+)(?P<verb>is|are|was|were)(?:n't|n\u2019t|[ \t]+not)[ \t]+"
            r"(?:an?|any)(?P<tail>[ \t].*)",
            re.I | re.S,
        ),
        lambda m, q: f"{m.group('lead')}{m.group('verb')} {q}{m.group('tail')}",
    ),
    # "I don't see any X" -> "I can see a X"
    (
        re.compile(
            r"(?P<lead>(?:I[ \t]+)?)(?:do[ \t]+not|don't|don\u2019t|cannot|can't|can\u2019t|"
            r"can[ \t]+not|could[ \t]+not|couldn't|couldn\u2019t)[ \t]+see[ \t]+(?:an?|any)"
            r"(?P<tail>[ \t].*)",
            re.I | re.S,
        ),
        lambda m, q: f"{m.group('lead')}can see {q}{m.group('tail')}",
    ),
    # "no X" -> "a X" / "two Xs"
    (
        re.compile(r"no(?P<tail>[ \t].*)", re.I | re.S),
        lambda m, q: f"{q}{m.group('tail')}",
    ),
)


def _to_yes(subject: Subject, state: _DrawState) -> list[_Replacement]:
    """A "no" answer made "yes": the negation becomes a quantity and the object gets a place
    ("Yes, there is a book at the top of the image")."""
    text, lexicon, rng = state.text, state.lexicon, state.rng
    leading = leading_yes_no(text)
    spans = negation_spans(text, subject)
    place = state.other_place(lexicon.new_places) if lexicon.new_places else None
    if spans:
        start, end = spans[0]
        negated = text[start:end]
        noun = mentions(negated, subject)
        many = (
            noun[-1].plural if noun and noun[-1].plural is not None else subject.plural_in_question
        )
        positive = None
        for pattern, rebuild in _POSITIVE:
            found = pattern.fullmatch(negated)
            if found is None:
                continue
            following = found.group("tail").split()
            first = following[0] if following else subject.singular
            quantity = rng.choice(lexicon.numbers[2:5]) if many else _article_for(first)
            if found.start() == 0 and not found.group().startswith(("there", "There", "I")):
                quantity = _match_case(negated[:2], quantity)
            positive = rebuild(found, quantity)
            break
        if positive is None:
            return []
        end_of_edit = end
        image = _IMAGE_AFTER.match(text, end)
        if place is not None and image is not None:
            positive += f" {place} of the {image.group(1)}"
            end_of_edit = image.end()
        elif place is not None and re.match(r"[ \t]*(?:[,.;:!?]|\Z)", text[end:]):
            positive += f" {place}"
        if leading is not None and leading[1] <= start:
            lead_start, lead_end, _ = leading
            injected = (
                _match_case(text[lead_start:lead_end], "yes") + text[lead_end:start] + positive
            )
            return [
                _Replacement(
                    EditKind.REASONING,
                    lead_start,
                    end_of_edit,
                    text[lead_start:end_of_edit],
                    injected,
                )
            ]
        return [
            _Replacement(EditKind.REASONING, start, end_of_edit, text[start:end_of_edit], positive)
        ]
    if leading is None:
        return []
    # "No." or "No, <something else>": the first sentence becomes the positive claim.
    lead_start, lead_end, _ = leading
    sentence_end = _SENTENCE_END.search(text, lead_end)
    stop = sentence_end.start() if sentence_end is not None else len(text.rstrip())
    many = subject.plural_in_question
    quantity = rng.choice(lexicon.numbers[2:5]) if many else _article_for(subject.singular)
    claim = f"there {'are' if many else 'is'} {quantity} {subject.form(many)}"
    if place is not None:
        claim += f" {place} of the image"
    injected = _match_case(text[lead_start:lead_end], "yes") + ", " + claim
    return [_Replacement(EditKind.REASONING, lead_start, stop, text[lead_start:stop], injected)]


def _yes_no_flip(
    question: Question, candidates: list[_Candidate], state: _DrawState
) -> list[_Replacement]:
    """Flip the leading yes/no and change the asked value so the answer stays coherent."""
    text, lexicon = state.text, state.lexicon
    leading = leading_yes_no(text)
    if leading is None:
        return []
    start, end, said = leading
    flip = _Replacement(
        EditKind.REASONING, start, end, text[start:end],
        _match_case(text[start:end], "no" if said == "yes" else "yes"),
    )  # fmt: skip
    tag = _TAG.match(text, end)
    if tag is not None:
        if said == "yes" and tag.group("neg") is None:
            return [_Replacement(EditKind.REASONING, start, tag.end(), text[start:tag.end()],
                                 flip.injected + text[end:tag.end()] + " not")]  # fmt: skip
        if said == "no" and tag.group("neg") is not None:
            kept = text[end : tag.start("neg")]
            return [_Replacement(EditKind.REASONING, start, tag.end(), text[start:tag.end()],
                                 flip.injected + kept)]  # fmt: skip
    value = question.value
    if value is None or question.value_kind is None:
        return [flip]
    value_re = phrase_re({value})
    if said == "yes":
        for candidate in candidates:
            if candidate.start >= end and value_re.fullmatch(text[candidate.start : candidate.end]):
                replacement = _propose(candidate, state, full_range=True)
                if replacement is not None and not replacement.overlaps(flip):
                    return [flip, replacement]
        return [flip]
    # "No, the cup is blue." -> "Yes, the cup is red."; "No, it is not red." -> "Yes, it is red."
    for candidate in candidates:
        if candidate.kind is EditKind.REASONING and candidate.start >= end:
            found = value_re.search(text, candidate.end)
            if found is not None and found.start() - candidate.end <= 2:
                dropped = _propose(candidate, state)
                if dropped is not None:
                    return [flip, dropped]
    others = [c for c in candidates if c.start >= end and c.key != value]
    if question.value_is_colour:
        group = lexicon.colour_group.get(value)
        for candidate in others:
            if candidate.source == "colour" and lexicon.colour_group[candidate.key] != group:
                return [flip, _replacement(candidate, value, text)]
    if question.value_kind is EditKind.SPATIAL:
        for candidate in others:
            if candidate.kind is EditKind.SPATIAL:
                return [flip, _replacement(candidate, value, text)]
    if question.value_kind is EditKind.COUNT:
        wanted = int(value) if value.isdigit() else lexicon.number_value(value)
        for candidate in candidates:
            if candidate.source == "count" and candidate.start >= end and wanted is not None:
                assert candidate.quantity is not None
                replacement = _requantify(
                    text, candidate.quantity, candidate.noun, wanted, lexicon, EditKind.COUNT
                )
                if replacement is not None:
                    return [flip, replacement]
    return [flip]
