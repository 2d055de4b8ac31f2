"""An offline, rule-based hallucinator: POVID-style errors from word lists, no model at all.

:class:`RuleHallucinator` scans a correct answer for words it knows how to falsify and swaps a
few of them for plausible wrong ones:

* **objects** (:attr:`EditKind.OBJECT`): names of common object categories (the 80 COCO
  categories, in singular, plural and alias forms such as "people", "buses", "dining table",
  "table", "man") become an object that *co-occurs* with the objects in the answer but is
  mentioned nowhere in it: "apples" becomes "bananas", "an apple" becomes "a banana". The
  co-occurrence table is shipped as ``data/cooccurrence.json`` (hand-curated, see its note);
* **attributes** (:attr:`EditKind.ATTRIBUTE`): colours become another colour (preferably one the
  answer does not use); sizes, poses, materials and states become their opposite;
* **counts** (:attr:`EditKind.COUNT`): "two" to "twenty" and 2 to 99 become another nearby
  number in the same form, never "one" (a plural noun follows);
* **spatial terms** (:attr:`EditKind.SPATIAL`): left/right, above/below, in front of/behind...;
* **relations** (:attr:`EditKind.RELATION`): "holding" becomes "throwing", "riding" becomes
  "walking beside", "sitting on" becomes "standing next to"...;
* **text** (:attr:`EditKind.TEXT`): short quoted text ("STOP") becomes other sign text;
* **reasoning** (:attr:`EditKind.REASONING`): a leading "Yes"/"No" flips, and a negation is
  dropped ("is not" becomes "is", "there is no" becomes "there is one").

Word lists other than the objects live in ``data/lexicon.json``.

Method. All candidates are found with case-insensitive whole-word patterns (longest phrase
first, so "teddy bear" wins over "bear" and "on top of" over "top"). Candidates inside a
negated phrase ("there is no kite", "is not red") are skipped, because swapping them would
leave a statement that is still true. Between ``min_edits`` and ``max_edits`` non-overlapping
candidates are then drawn, round-robin over the kinds present so the edits are diverse, and
applied left to right; every :class:`~povidgen.Edit` records the exact span of its injected
text in the rejected answer. Replacements keep the original capitalisation ("Left" becomes
"Right", "STOP" becomes "EXIT") and fix an immediately preceding "a"/"an" when the new word
needs the other article (then the edit's ``original`` and ``injected`` include the article).

"orange" is both a colour and a fruit. It is read as a **colour** when it is joined by a
hyphen to the next word ("orange-striped"), when the next word is another colour after
"and"/"or" ("orange and white"), when the next word is any word except a function word or a
fruit-part noun ("orange cat", but not "orange on the table" or "orange slices"), or when the
previous word is a linking verb or shade word ("is orange", "bright orange") or a colour
("red and orange"). Otherwise, and always as "oranges", it is the **fruit**.

When an answer has no candidate at all, one sentence naming an absent object is inserted
after the first sentence ("There is also a dog in the image."), or a clause is appended when
the answer has no sentence end ("... with a dog nearby"). :class:`HallucinationError` is
raised only when even that is impossible: every object of the table is already mentioned,
or ``kinds`` excludes objects.

Everything is deterministic per ``(example.seed, example.id)``: the only randomness is a
:class:`random.Random` seeded with ``derive_seed(example.seed, example.id, "rule")``.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

from povidgen.errors import HallucinationError
from povidgen.hallucinate.base import Hallucinator
from povidgen.schema import Edit, EditKind, Example, Hallucination
from povidgen.seeding import derive_seed

__all__ = ["RuleHallucinator"]

logger = logging.getLogger("povidgen")

_NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)


def _words(spaced: str) -> list[str]:
    """The words of a whitespace-separated list (long word lists read better as text)."""
    return spaced.split()


_MIN_COUNT = 2  # "one"/"a" are left alone: the noun after them is singular
_MAX_WORD_COUNT = 20
_MAX_DIGIT_COUNT = 99
_MAX_QUOTE_LENGTH = 40  # longer quotes are speech, not sign or label text

# Words after which "orange" is the fruit rather than a colour: function words that end or
# continue a noun phrase, and nouns that name parts or products of the fruit.
_NOT_COLOUR_FOLLOWERS = frozenset(
    _words(
        """a an the and or but nor on in at of to with from by for near next beside behind under
        over above below between into onto inside outside is are was were has have had that which
        who sits lies rests sitting lying resting placed this these those it its there here as than
        while nearby too also slice slices juice peel peels tree trees wedge wedges half halves
        segment segments"""
    )
)
# Words before "orange" that make it a colour: linking verbs and shade words.
_COLOUR_LEADERS = frozenset(
    _words(
        """is are was were be been being look looks looked appear appears appeared seem seems
        seemed painted colored coloured bright dark light pale deep vivid mostly mainly partly
        all"""
    )
)
# Words that, a little before a candidate, put it inside a negated phrase.
_NEGATORS = frozenset({"no", "not", "never", "without", "nor", "neither", "none", "cannot"})
# Words before an ambiguous noun ("sheep", "broccoli") that make it plural.
_PLURAL_CUES = frozenset(
    {"many", "several", "some", "few", "these", "those", "both", "all", "multiple", "various"}
)
_SINGULAR_CUES = frozenset({"a", "an", "one", "this", "that", "each", "every", "another"})
_CURLY_APOSTROPHE = "\u2019"
_ACRONYMS = frozenset({"tv", "tvs"})  # all caps by convention, not for emphasis

_PREV_WORD = re.compile(r"(\w+)[ \t]+\Z")
_PREV_COLOUR_JOIN = re.compile(r"([A-Za-z]+)(?:[ \t]*,[ \t]*|[ \t]+(?:and|or)[ \t]+)\Z", re.I)
_NEXT_WORD = re.compile(r"[ \t]+([A-Za-z]+)")
_ARTICLE_BEFORE = re.compile(r"(?<!\w)(an?)[ \t]+\Z", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[,.;:!?()\[\]\"\u201c\u201d\n]")
_YES_NO = re.compile(r"\A[\s\"'\u201c\u2018(\[*]*(yes|no)(?=[ \t]*(?:[,.!;:]|\Z))", re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\w.,:/$€£#+-])(\d{1,2})(?![\w%°]|[.,:/]\d)")
_QUOTES = (
    re.compile(rf"\"([^\"\n]{{1,{_MAX_QUOTE_LENGTH}}})\""),
    re.compile(rf"\u201c([^\u201d\n]{{1,{_MAX_QUOTE_LENGTH}}})\u201d"),
    re.compile(rf"\u2018([^\u2019\n]{{1,{_MAX_QUOTE_LENGTH}}})\u2019"),
    re.compile(rf"(?<![\w'])'([^'\n]{{1,{_MAX_QUOTE_LENGTH}}})'(?!\w)"),
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|\Z)")
_INSERT_SENTENCES = (
    "There is also {a} {obj} in the image.",
    "{A} {obj} can also be seen in the background.",
    "There is also {a} {obj} next to it.",
)
_INSERT_CLAUSES = ("with {a} {obj} nearby", "with {a} {obj} in the background")

_SUPPORTED_KINDS: frozenset[EditKind] = frozenset(EditKind)


# ---------------------------------------------------------------------------------------------
# Shipped data, loaded once


@dataclass(frozen=True)
class _ObjectEntry:
    name: str
    singular: str
    plural: str
    cooccurs: tuple[str, ...]
    mention: re.Pattern[str]  # any form of the object, to test whether an answer names it


@dataclass(frozen=True)
class _Form:
    name: str
    plural: bool | None  # None: singular and plural are spelt alike ("sheep")


@dataclass(frozen=True)
class _Data:
    table_version: str
    lexicon_version: str
    objects: Mapping[str, _ObjectEntry]
    object_names: tuple[str, ...]  # sorted, so random choices do not depend on hashing
    forms: Mapping[str, _Form]
    object_re: re.Pattern[str]
    colours: tuple[str, ...]  # the written name of each colour group
    colour_group: Mapping[str, int]
    colour_re: re.Pattern[str]
    swaps: Mapping[EditKind, Mapping[str, tuple[str, ...]]]
    swap_re: Mapping[EditKind, re.Pattern[str]]
    texts: tuple[str, ...]


def _norm(surface: str) -> str:
    """The lookup key of a matched phrase: case-folded, single-spaced, straight apostrophes."""
    return " ".join(surface.replace(_CURLY_APOSTROPHE, "'").casefold().split())


def _phrase_re(phrases: Iterable[str]) -> re.Pattern[str]:
    # Longest first: alternation takes the first alternative that matches at a position.
    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    parts = (
        r"\s+".join(re.escape(w).replace("'", f"['{_CURLY_APOSTROPHE}]") for w in p.split())
        for p in ordered
    )
    return re.compile(rf"(?<!\w)(?:{'|'.join(parts)})(?!\w)", re.IGNORECASE)


def _read_json(name: str) -> dict[str, Any]:
    path = resources.files("povidgen.hallucinate").joinpath("data", name)
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


@functools.cache
def _data() -> _Data:
    table = _read_json("cooccurrence.json")
    lexicon = _read_json("lexicon.json")

    objects: dict[str, _ObjectEntry] = {}
    forms: dict[str, _Form] = {}

    def add_form(surface: str, name: str, plural: bool) -> None:
        key = _norm(surface)
        previous = forms.get(key)
        if previous is not None and previous.name == name and previous.plural != plural:
            forms[key] = _Form(name, None)
        else:
            forms[key] = _Form(name, plural)

    for name, raw in table["objects"].items():
        singular = str(raw.get("singular", name))
        plural = str(raw["plural"])
        aliases: dict[str, str] = dict(raw.get("aliases", {}))
        pairs = [(singular, plural), *aliases.items()]
        surfaces = {name} | {s for pair in pairs for s in pair}
        for one, many in pairs:
            add_form(one, name, False)
            add_form(many, name, True)
        missing = [c for c in raw["cooccurs"] if c not in table["objects"]]
        if missing:
            raise ValueError(f"cooccurrence.json: {name!r} co-occurs with unknown {missing}")
        objects[name] = _ObjectEntry(
            name=name,
            singular=singular,
            plural=plural,
            cooccurs=tuple(raw["cooccurs"]),
            mention=_phrase_re(surfaces),
        )

    colour_groups: list[list[str]] = lexicon["colours"]
    colour_group = {word: i for i, group in enumerate(colour_groups) for word in group}
    swaps: dict[EditKind, dict[str, tuple[str, ...]]] = {
        kind: {_norm(k): tuple(v) for k, v in lexicon[section].items()}
        for kind, section in (
            (EditKind.ATTRIBUTE, "attributes"),
            (EditKind.SPATIAL, "spatial"),
            (EditKind.RELATION, "relations"),
            (EditKind.REASONING, "negations"),
        )
    }
    return _Data(
        table_version=str(table["version"]),
        lexicon_version=str(lexicon["version"]),
        objects=objects,
        object_names=tuple(sorted(objects)),
        forms=forms,
        object_re=_phrase_re(forms),
        colours=tuple(group[0] for group in colour_groups),
        colour_group=colour_group,
        colour_re=_phrase_re(colour_group),
        swaps=swaps,
        swap_re={kind: _phrase_re(table) for kind, table in swaps.items()},
        texts=tuple(lexicon["texts"]),
    )


# ---------------------------------------------------------------------------------------------
# Text helpers


def _match_case(original: str, replacement: str) -> str:
    """``replacement`` written in the capitalisation style of ``original``."""
    letters = [ch for ch in original if ch.isalpha()]
    if len(letters) > 1 and all(ch.isupper() for ch in letters):
        if original.casefold() in _ACRONYMS:
            return replacement
        return replacement.upper()
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


def _is_negated(text: str, start: int) -> bool:
    """Whether one of the three words before ``start``, in the same clause, negates it."""
    window = text[max(0, start - 48) : start]
    breaks = list(_CLAUSE_BREAK.finditer(window))
    if breaks:
        window = window[breaks[-1].end() :]
    words = window.replace(_CURLY_APOSTROPHE, "'").casefold().split()[-3:]
    return any(w in _NEGATORS or w.endswith("n't") for w in words)


def _orange_is_colour(text: str, start: int, end: int, data: _Data) -> bool:
    """Whether the word "orange" at ``[start, end)`` is the colour (see the module docs)."""
    if text[end : end + 1] == "-":
        return True
    following = _NEXT_WORD.match(text, end)
    if following is not None:
        word = following.group(1).casefold()
        if word in ("and", "or"):
            after = _next_word(text, following.end())
            if after is not None and after in data.colour_group:
                return True
        elif word not in _NOT_COLOUR_FOLLOWERS:
            return True
    previous = _previous_word(text, start)
    if previous is not None and previous in _COLOUR_LEADERS:
        return True
    joined = _PREV_COLOUR_JOIN.search(text, max(0, start - 40), start)
    return joined is not None and joined.group(1).casefold() in data.colour_group


def _guess_plural(text: str, start: int, end: int) -> bool:
    """The number of a noun spelt alike in both numbers ("sheep"), from its neighbours."""
    previous = _previous_word(text, start)
    if previous is not None:
        if previous in _PLURAL_CUES or previous in _NUMBER_WORDS[_MIN_COUNT:]:
            return True
        if previous.isdigit() and int(previous) >= _MIN_COUNT:
            return True
        if previous in _SINGULAR_CUES:
            return False
    return _next_word(text, end) in ("are", "were", "have")


# ---------------------------------------------------------------------------------------------
# Candidates


@dataclass(frozen=True)
class _Candidate:
    kind: EditKind
    source: str  # how to replace it: object, colour, swap, count_word, count_digit, text, yes_no
    start: int
    end: int
    key: str  # the normalised matched phrase, or the object name for objects
    plural: bool = False
    article: int | None = None  # start of a directly preceding "a"/"an"

    @property
    def low(self) -> int:
        """The start of the span this candidate may rewrite, article included."""
        return self.start if self.article is None else self.article


@dataclass(frozen=True)
class _Replacement:
    kind: EditKind
    start: int
    end: int
    original: str
    injected: str


def _find_candidates(
    text: str, data: _Data, kinds: frozenset[EditKind]
) -> tuple[list[_Candidate], list[str]]:
    """Every falsifiable span of ``text`` of an allowed kind, and the objects it names."""
    found: list[_Candidate] = []
    present: list[str] = []

    def add(
        kind: EditKind, source: str, start: int, end: int, key: str, plural: bool = False
    ) -> None:
        if kind not in kinds:
            return
        # In a negated phrase a swap keeps the statement true ("no kite" -> "no dog").
        if kind not in (EditKind.REASONING, EditKind.TEXT) and _is_negated(text, start):
            return
        found.append(_Candidate(kind, source, start, end, key, plural, _article_start(text, start)))

    for match in data.object_re.finditer(text):
        form = data.forms.get(_norm(match.group()))
        if form is None:
            continue
        if (
            form.name == "orange"
            and form.plural is False
            and _orange_is_colour(text, match.start(), match.end(), data)
        ):
            continue
        plural = form.plural
        if plural is None:
            plural = _guess_plural(text, match.start(), match.end())
        if form.name not in present:
            present.append(form.name)
        add(EditKind.OBJECT, "object", match.start(), match.end(), form.name, plural)

    for match in data.colour_re.finditer(text):
        word = _norm(match.group())
        if word not in data.colour_group:
            continue
        if word == "orange" and not _orange_is_colour(text, match.start(), match.end(), data):
            continue
        add(EditKind.ATTRIBUTE, "colour", match.start(), match.end(), word)

    for kind, pattern in data.swap_re.items():
        for match in pattern.finditer(text):
            key = _norm(match.group())
            if key in data.swaps[kind]:
                add(kind, "swap", match.start(), match.end(), key)

    for match in re.finditer(r"(?<!\w)[A-Za-z]+(?!\w)", text):
        word = match.group().casefold()
        if word in _NUMBER_WORDS[_MIN_COUNT:]:
            add(EditKind.COUNT, "count_word", match.start(), match.end(), word)

    for match in _DIGITS.finditer(text):
        if _MIN_COUNT <= int(match.group(1)) <= _MAX_DIGIT_COUNT:
            add(EditKind.COUNT, "count_digit", match.start(1), match.end(1), match.group(1))

    for pattern in _QUOTES:
        for match in pattern.finditer(text):
            inner = match.group(1)
            if inner.strip() and any(ch.isalnum() for ch in inner):
                add(EditKind.TEXT, "text", match.start(1), match.end(1), inner)

    yes_no = _YES_NO.match(text)
    if yes_no is not None:
        add(
            EditKind.REASONING, "yes_no", yes_no.start(1), yes_no.end(1), yes_no.group(1).casefold()
        )

    # Sorted so that the draw below does not depend on the order the finders ran in.
    found.sort(key=lambda c: (c.start, c.end, c.kind.value, c.source))
    return found, present


# ---------------------------------------------------------------------------------------------
# The hallucinator


class RuleHallucinator(Hallucinator):
    """Injects typed errors into an answer with word lists and a co-occurrence table.

    No network and no model: the embedded default hallucinator and the baseline the LLM
    providers are compared with. See the module documentation for the method.

    Args:
        min_edits: the fewest edits to make when the answer has enough candidates (at least 1).
        max_edits: the most edits to make (at least ``min_edits``). The number of edits is
            drawn uniformly between the two for each example.
        kinds: the :class:`~povidgen.EditKind` values (or their names) that may be used;
            every kind when ``None``.

    Raises:
        ValueError: on a bad value of any argument.
    """

    name: ClassVar[str] = "rule"

    def __init__(
        self,
        *,
        min_edits: int = 2,
        max_edits: int = 3,
        kinds: Collection[str | EditKind] | None = None,
    ) -> None:
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
        """The kinds of edit this instance may make."""
        return self._kinds

    def params(self) -> dict[str, Any]:
        data = _data()
        return {
            "min_edits": self._min_edits,
            "max_edits": self._max_edits,
            "kinds": sorted(kind.value for kind in self._kinds),
            "table_version": data.table_version,
            "lexicon_version": data.lexicon_version,
        }

    async def ahallucinate(self, example: Example) -> Hallucination:
        """Return ``example.answer`` with between ``min_edits`` and ``max_edits`` errors.

        Raises:
            HallucinationError: the answer has no candidate and no absent object can be
                inserted (every table object is named, or ``kinds`` excludes objects).
        """
        rng = random.Random(derive_seed(example.seed, example.id, "rule"))
        return self._corrupt(example.answer, rng)

    # The work is pure CPU and quick, so the async entry point simply calls it.
    def _corrupt(self, text: str, rng: random.Random) -> Hallucination:
        data = _data()
        candidates, present = _find_candidates(text, data, self._kinds)
        mentioned = frozenset(n for n in data.object_names if data.objects[n].mention.search(text))
        state = _DrawState(text, data, present, mentioned, rng)
        target = rng.randint(self._min_edits, self._max_edits)
        replacements = _choose(candidates, target, state)
        if replacements:
            return _apply(text, replacements)
        if EditKind.OBJECT not in self._kinds:
            raise HallucinationError(
                "the answer has no word that the rule hallucinator can falsify with the "
                f"allowed kinds {sorted(k.value for k in self._kinds)}, and inserting an absent "
                "object needs the 'object' kind"
            )
        return _insert_absent_object(text, state)


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
            valid = ", ".join(k.value for k in EditKind)
            raise ValueError(f"unknown edit kind {kind!r}; choose from: {valid}") from None
    if not parsed:
        raise ValueError("kinds must name at least one edit kind")
    return frozenset(parsed)


class _DrawState:
    """What the replacements of one answer share: the text, the rng, the objects used."""

    def __init__(
        self,
        text: str,
        data: _Data,
        present: list[str],
        mentioned: frozenset[str],
        rng: random.Random,
    ) -> None:
        self.text = text
        self.data = data
        self.present = present
        self.mentioned = mentioned
        self.rng = rng
        self.used_objects: set[str] = set()
        words = {m.group().casefold() for m in re.finditer(r"\w+", text)}
        self.used_colours = {data.colour_group[w] for w in words if w in data.colour_group}
        self.used_numbers = {
            _NUMBER_WORDS.index(w) if w in _NUMBER_WORDS else int(w)
            for w in words
            if w in _NUMBER_WORDS or (w.isascii() and w.isdigit() and len(w) <= 3)
        }

    def absent_object(self, near: Iterable[str]) -> str | None:
        """An object not named in the answer, preferring those that co-occur with ``near``."""
        data = self.data
        blocked = self.mentioned | self.used_objects
        pools = (
            [c for name in near for c in data.objects[name].cooccurs],
            [c for name in self.present for c in data.objects[name].cooccurs],
            list(data.object_names),
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


def _propose(candidate: _Candidate, state: _DrawState) -> str | None:
    """The lower-case wrong word(s) for ``candidate``, or ``None`` when there are none."""
    data, rng = state.data, state.rng
    source, key = candidate.source, candidate.key
    if source == "object":
        name = state.absent_object([key])
        if name is None:
            return None
        entry = data.objects[name]
        return entry.plural if candidate.plural else entry.singular
    if source == "colour":
        group = data.colour_group[key]
        others = [i for i in range(len(data.colours)) if i != group]
        return data.colours[state.prefer_unused(others, state.used_colours)]
    if source == "swap":
        return rng.choice(data.swaps[candidate.kind][key])
    if source == "count_word":
        n = _NUMBER_WORDS.index(key)
        low, high = max(_MIN_COUNT, n - 2), min(_MAX_WORD_COUNT, n + 3)
        options = [m for m in range(low, high + 1) if m != n]
        return _NUMBER_WORDS[state.prefer_unused(options, state.used_numbers)]
    if source == "count_digit":
        n = int(key)
        spread = max(2, n // 4)
        low, high = max(_MIN_COUNT, n - spread), min(_MAX_DIGIT_COUNT, n + spread)
        options = [m for m in range(low, high + 1) if m != n]
        return str(state.prefer_unused(options, state.used_numbers))
    if source == "text":
        return _other_text(key, data, rng)
    if source == "yes_no":
        return "no" if key == "yes" else "yes"
    raise AssertionError(f"unknown candidate source {source!r}")  # pragma: no cover


def _other_text(inner: str, data: _Data, rng: random.Random) -> str:
    """Different sign or label text in the same style as ``inner``."""
    stripped = inner.strip()
    if stripped.isascii() and stripped.isdigit():
        width = len(stripped)
        low = 10 ** (width - 1) if width > 1 else 0
        numbers = [n for n in range(low, min(10**width, low + 200)) if str(n) != stripped]
        number = str(rng.choice(numbers)).zfill(width)
        return inner.replace(stripped, number)
    options = [t for t in data.texts if t.casefold() != stripped.casefold()]
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


def _choose(candidates: list[_Candidate], target: int, state: _DrawState) -> list[_Replacement]:
    """Up to ``target`` non-overlapping replacements, taking kinds in turn for diversity."""
    rng = state.rng
    pools: dict[EditKind, list[_Candidate]] = {}
    for candidate in candidates:
        pools.setdefault(candidate.kind, []).append(candidate)
    order = sorted(pools, key=lambda k: k.value)
    rng.shuffle(order)
    for pool in pools.values():
        rng.shuffle(pool)

    chosen: list[tuple[_Candidate, _Replacement]] = []

    def overlaps(candidate: _Candidate) -> bool:
        return any(candidate.low < c.end and c.low < candidate.end for c, _ in chosen)

    while len(chosen) < target and any(pools.values()):
        for kind in order:
            pool = pools[kind]
            while pool:
                candidate = pool.pop()
                if overlaps(candidate):
                    continue
                word = _propose(candidate, state)
                if word is None or word.casefold() == candidate.key.casefold():
                    continue
                replacement = _replacement(candidate, word, state.text)
                if replacement.injected == replacement.original:
                    continue
                chosen.append((candidate, replacement))
                break
            if len(chosen) >= target:
                break
    return sorted((r for _, r in chosen), key=lambda r: r.start)


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


def _insert_absent_object(text: str, state: _DrawState) -> Hallucination:
    """The fallback: add one sentence (or clause) naming an object the answer does not."""
    name = state.absent_object(state.present)
    if name is None:
        raise HallucinationError(
            "the answer has no word the rule hallucinator can falsify, and it already names "
            "every object in the co-occurrence table, so no absent object can be inserted"
        )
    noun = state.data.objects[name].singular
    article = _article_for(noun)
    sentence_end = _SENTENCE_END.search(text)
    if sentence_end is not None:
        template = state.rng.choice(_INSERT_SENTENCES)
        injected = template.format(a=article, A=article.capitalize(), obj=noun)
        at = sentence_end.end()
    else:
        template = state.rng.choice(_INSERT_CLAUSES)
        injected = template.format(a=article, obj=noun)
        at = len(text.rstrip())
    rejected = text[:at] + " " + injected + text[at:]
    logger.debug("rule hallucinator: no candidates, inserted %r", injected)
    edit = Edit(
        kind=EditKind.OBJECT,
        original="",
        injected=injected,
        start=at + 1,
        end=at + 1 + len(injected),
    )
    return Hallucination(rejected=rejected, edits=[edit])
