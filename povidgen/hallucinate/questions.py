"""Reading a question and the answers to it: what is asked, and whether a rewrite still answers it.

The rules here are shared by :class:`~povidgen.RuleHallucinator` (which corrupts what the
question asks) and by :func:`povidgen.hallucinate.verify.verify_answer_to_question` (which checks
any hallucinator's rewrite). They are English rules over the shipped word lists
(:mod:`povidgen.hallucinate.lexicon`).

**The question** (:func:`parse_question`). A prompt is a question when its last sentence ends
with "?" or starts with a question word; requests for a description ("Describe the image",
"What is happening in this picture?") are not questions. The question's *kind* is read from
its wording:

* ``count``: "How many X ...", "the number of X", "Count the X";
* ``attribute``: "What colour is/are the X", "the colour of the X" (``attribute="colour"``);
  "What size/shape/material ..." (``attribute="other"``);
* ``relation``: two objects and "relative to", "in relation to", "with respect to",
  "compared to", or "What is the X doing?";
* ``position``: "Where is/are the X", "Which side/part/corner ...";
* ``existence``: "Is/Are there (a/an/any) X", "Do/Can you see (a/an/any) X", "Does the image
  show/contain/have/include (a/an/any) X" (with a number, "Are there two X" is ``yes_no``);
* ``yes_no``: any other question starting with is/are/was/were/do/does/did/can/could/has/have;
  its :attr:`Question.value` is the colour, number, place, spatial, relation or attribute word
  the question asks to confirm ("Is the cup *red*?");
* ``object``: "What is the X holding/eating/riding/carrying/wearing/...";
* ``other``: anything else.

Its *subjects* are the objects it asks about: the noun phrase the kind's pattern names ("How
many **red apples** are there?" gives apples), read as a known object of the word lists when it
is one, or as the head noun as written; a relation question has two. A supplied (non-English)
lexicon gets kind ``other`` with the objects of its lists that the prompt names.

**Reading an answer.** A *mention* of a subject is any of its two forms (singular, plural). The
*quantity* of a mention is a number word, a digit string, "a"/"an" (1) or "no" (0) before it,
with at most three adjectives between ("three small red kites"). Its *colours* are colour
words among those adjectives or after "<subject> is/are". Its *places* are the place phrases
("on the left") and spatial words of the clause (split at ``. ; ! ? ,`` and "and") it stands
in. The answer's *polarity* about a subject is "no" when it starts with "No" or says there is no
such object ("there is no X", "there isn't a X", "I don't see any X"), "yes" when it starts
with "Yes" or mentions the subject otherwise.

**The check** (:func:`answer_problem`), in this order, each only where the rewrite can be read:

1. the rewrite still mentions every subject the correct answer mentions (never swapped away);
2. for an existence question, a rewrite that starts with "No" says the subject is absent and
   never states a quantity of it, and one that starts with "Yes" never says it is absent;
3. every quantity agrees with its noun ("one kite", "three kites") and with a verb directly
   before it ("there is one", "there are three"), and "the kite is" / "the kites are"; only
   disagreements the correct answer does not already have count;
4. what was asked changed: the subject's quantity (count), its colours (colour questions), its
   places (position), the spatial and relation words of the clause holding both subjects
   (relation), the polarity (existence), the leading yes/no (yes/no questions).

With a supplied (non-English) lexicon only check 1 applies: the grammar is English.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from povidgen.hallucinate.lexicon import Lexicon, norm, phrase_re
from povidgen.schema import EditKind

__all__ = [
    "Mention",
    "Quantity",
    "Question",
    "QuestionKind",
    "Subject",
    "agreement_problems",
    "answer_problem",
    "mentions",
    "negation_spans",
    "parse_question",
    "places_of",
    "polarity",
    "quantity_before",
    "stated_colours",
]


def _words(spaced: str) -> list[str]:
    """The words of a whitespace-separated list (long word lists read better as text)."""
    return spaced.split()


QuestionKind = Literal[
    "count", "attribute", "position", "existence", "relation", "yes_no", "object", "other"
]

# Words that end a run of adjectives: function words, quantifiers and collective nouns.
NOT_ADJECTIVES = frozenset(
    _words("""a an the of and or but nor is are was were be been being in on at to with by for from
    that which who whom whose there here this these those it its their his her my your our some
    any no not as than while near next beside behind under over above below into onto has have
    had can could will would do does did few lot lots couple pair dozen number group bunch
    variety total set herd flock pile stack row handful more most other all both each every
    several many another such only also very too just same""")
)
_WORD_NUMBERS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_ADJECTIVE = (
    r"(?!(?:" + "|".join(sorted(NOT_ADJECTIVES | set(_WORD_NUMBERS))) + r")(?![\w'-]))"
    r"[A-Za-z][A-Za-z'-]*"
)
_QUANTITY_BEFORE = re.compile(
    r"(?<![\w.,-])(?P<q>\d{1,3}|an?|no|" + "|".join(_WORD_NUMBERS) + r")"
    r"(?P<adjectives>(?:[ \t]+" + _ADJECTIVE + r"){0,3}?)[ \t]+\Z",
    re.IGNORECASE,
)
_VERB_BEFORE = re.compile(r"(?<!\w)(?P<verb>is|are|was|were)[ \t]+\Z", re.IGNORECASE)
_THERES_BEFORE = re.compile(r"(?<!\w)there(?P<verb>['\u2019]s)[ \t]+\Z", re.IGNORECASE)
_CLAUSE_SPLIT = re.compile(r"[.;!?,:()\n]|(?<!\w)(?:and|but|while|whereas)(?!\w)", re.IGNORECASE)
_LEADING_YES_NO = re.compile(
    r"\A[\s\"'\u201c\u2018(\[*]*(?P<word>yes|no)(?=[ \t]*(?:[,.!;:]|\Z))", re.IGNORECASE
)
_QUESTION_WORD = re.compile(
    r"^(?:how|what|which|where|who|whose|when|why|is|are|was|were|do|does|did|can|could|has|"
    r"have|count|tell|name|list)\b",
    re.IGNORECASE,
)
_DESCRIBE = re.compile(
    r"\b(?:describe|description|caption|summari[sz]e|what(?:'s| is) (?:happening|going on|"
    r"shown|depicted|in (?:the|this) (?:image|picture|photo|scene))|what do you see|"
    r"what can you see)\b",
    re.IGNORECASE,
)
_NP = r"(?P<np>[\w' -]+?)"
_DET = r"(?:(?:the|this|that|these|those|his|her|their|its) )?"
_SUBJECT_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    kind: tuple(re.compile(p, re.IGNORECASE) for p in patterns)
    for kind, patterns in {
        "count": (
            rf"\bhow many {_NP}(?= (?:are|is|were|was|can|could|do|does|did|there|in|on|at|"
            r"visible|appear|have|has|you)\b|\?|$)",
            rf"\bnumber of {_NP}(?= (?:are|is|in|on|at|visible|that|which|you)\b|\?|$)",
            rf"^count {_DET}{_NP}(?= (?:in|on|at|that)\b|[.?]|$)",
        ),
        "colour": (
            rf"\bcolou?rs? (?:is|are|was|were|does|do) {_DET}{_NP}(?= (?:in|on|at|of|that|"
            r"which|have|has)\b|\?|$)",
            rf"\bcolou?rs? of {_DET}{_NP}(?= (?:in|on|at|that|which)\b|\?|$)",
        ),
        "attribute": (
            rf"\b(?:size|shape|material|pattern) (?:is|are|was|were) {_DET}{_NP}(?= (?:in|on|"
            r"at|of|that|which)\b|\?|$)",
            rf"\b(?:is|are|was|were) {_DET}{_NP} made of\b",
        ),
        "position": (
            rf"\bwhere (?:is|are|was|were) {_DET}{_NP}(?= (?:located|placed|positioned|"
            r"situated|sitting|standing|lying|relative|in|on|at|with|compared)\b|\?|$)",
        ),
        "existence": (
            rf"^(?:is|are) there (?:an? |any |some |one )?{_NP}(?= (?:in|on|at|near|next|"
            r"visible|present|here|there|inside|outside|under|behind)\b|\?|$)",
            rf"^(?:do|can|could) you see (?:an? |any |some )?{_NP}(?= (?:in|on|at|near|"
            r"anywhere)\b|\?|$)",
            rf"^does {_DET}(?:image|picture|photo|scene) (?:show|contain|have|include|depict) "
            rf"(?:an? |any |some )?{_NP}(?= (?:in|on|at|near)\b|\?|$)",
        ),
    }.items()
}
_RELATIVE = re.compile(
    r"\b(?:relative to|in relation to|with respect to|compared to|compared with)\b", re.IGNORECASE
)
_DOING = re.compile(r"\bwhat (?:is|are|was|were) .+ doing\b", re.IGNORECASE)
_WHAT_OBJECT = re.compile(
    r"^what (?:is|are|was|were) .+ (?:holding|eating|riding|carrying|wearing|drinking|"
    r"reading|using|playing with|looking at|sitting on|standing on|lying on)\b",
    re.IGNORECASE,
)
_WHICH_PLACE = re.compile(
    r"\b(?:which|what) (?:side|part|corner|half|area|region)\b|\bin what part\b", re.IGNORECASE
)
_YES_NO_QUESTION = re.compile(
    r"^(?:is|are|was|were|do|does|did|can|could|has|have)\b", re.IGNORECASE
)
_OTHER_ATTRIBUTE = re.compile(r"^what (?:size|shape|material|pattern)\b|\bmade of\b", re.I)
_COUNT_WORDING = re.compile(r"^how many\b|\bnumber of\b|^count\b", re.IGNORECASE)
_COLOUR_WORDING = re.compile(r"\b(?:what|which) colou?rs?\b|\bcolou?rs? of\b", re.IGNORECASE)
_IMAGE_WORDS = frozenset({"image", "picture", "photo", "photograph", "scene", "view", "frame"})


@dataclass(frozen=True)
class Subject:
    """An object a question asks about.

    ``name`` is the object's name in the word lists (``known``), or the head noun as the
    question writes it, in the singular.
    """

    name: str
    singular: str
    plural: str
    plural_in_question: bool
    known: bool
    pattern: re.Pattern[str]

    def form(self, plural: bool) -> str:
        """The subject written in the singular or the plural."""
        return self.plural if plural else self.singular


@dataclass(frozen=True)
class Question:
    """What a prompt asks (see the module documentation)."""

    text: str
    kind: QuestionKind
    subjects: tuple[Subject, ...]
    attribute: Literal["colour", "other"] | None = None
    value: str | None = None
    value_kind: EditKind | None = None
    value_is_colour: bool = False


@dataclass(frozen=True)
class Mention:
    """One mention of a subject in a text: its span and number (``None``: spelt alike)."""

    start: int
    end: int
    plural: bool | None


@dataclass(frozen=True)
class Quantity:
    """A quantity before a noun: its span, value and how it is written."""

    start: int
    end: int
    value: int
    style: Literal["digit", "word", "article", "no"]


# ---------------------------------------------------------------------------------------------
# Nouns


def _singular_of(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "oes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _plural_of(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    if word.endswith(("ch", "sh", "x", "ss", "s", "o")):
        return word + "es"
    return word + "s"


def _subject_from_phrase(phrase: str, lexicon: Lexicon) -> Subject | None:
    """The object a noun phrase names: its last known object, else its head noun."""
    known = list(lexicon.object_re.finditer(phrase))
    if known:
        surface = norm(known[-1].group())
        form = lexicon.forms[surface]
        singular, plural = lexicon.inflections[surface]
        in_plural = form.plural if form.plural is not None else True
        return Subject(
            name=form.name,
            singular=singular,
            plural=plural,
            plural_in_question=in_plural,
            known=True,
            pattern=phrase_re({singular, plural}),
        )
    words = [w for w in re.findall(r"[a-z][a-z'-]*", phrase.casefold()) if w not in _IMAGE_WORDS]
    if not words:
        return None
    head = words[-1]
    if head in NOT_ADJECTIVES or len(head) < 3 or head in _WORD_NUMBERS:
        return None
    singular = _singular_of(head)
    in_plural = singular != head
    plural = head if in_plural else _plural_of(head)
    return Subject(
        name=singular,
        singular=singular,
        plural=plural,
        plural_in_question=in_plural,
        known=False,
        pattern=phrase_re({singular, plural}),
    )


def _known_subjects(text: str, lexicon: Lexicon) -> list[Subject]:
    found: list[Subject] = []
    for match in lexicon.object_re.finditer(text):
        subject = _subject_from_phrase(match.group(), lexicon)
        if subject is not None and all(s.name != subject.name for s in found):
            found.append(subject)
    return found


# ---------------------------------------------------------------------------------------------
# The question


def _question_sentence(prompt: str) -> str | None:
    text = " ".join(prompt.replace("<image>", " ").split())
    if not text:
        return None
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if s.strip()]
    asked = [s for s in sentences if s.endswith("?")]
    if asked:
        return asked[-1]
    last = sentences[-1] if sentences else text
    return last if _QUESTION_WORD.match(last) else None


def parse_question(prompt: str, lexicon: Lexicon) -> Question | None:
    """What ``prompt`` asks, or ``None`` when it is not a question (a request to describe).

    See the module documentation for the kinds and subjects.
    """
    if not lexicon.english:
        subjects = tuple(_known_subjects(prompt, lexicon))
        return Question(prompt, "other", subjects) if subjects else None
    sentence = _question_sentence(prompt)
    if sentence is None or _DESCRIBE.search(sentence):
        return None
    low = sentence.casefold().rstrip("?").strip() + "?"

    def subject_for(kind: str) -> Subject | None:
        for pattern in _SUBJECT_PATTERNS[kind]:
            found = pattern.search(low)
            if found is not None:
                subject = _subject_from_phrase(found.group("np"), lexicon)
                if subject is not None:
                    return subject
        return None

    named = _known_subjects(low, lexicon)
    if _RELATIVE.search(low) and len(named) >= 2:
        return Question(sentence, "relation", tuple(named[:2]))
    if _COUNT_WORDING.search(low):
        subject = subject_for("count")
        return _with(sentence, "count", subject, named)
    if _COLOUR_WORDING.search(low):
        subject = subject_for("colour")
        return _with(sentence, "attribute", subject, named, attribute="colour")
    if _OTHER_ATTRIBUTE.search(low):
        subject = subject_for("attribute")
        return _with(sentence, "attribute", subject, named, attribute="other")
    if _DOING.search(low):
        return Question(sentence, "relation", tuple(named))
    if low.startswith("where") or _WHICH_PLACE.search(low):
        subject = subject_for("position")
        return _with(sentence, "position", subject, named)
    if _WHAT_OBJECT.search(low):
        return Question(sentence, "object", tuple(named))
    if _YES_NO_QUESTION.search(low):
        existence = subject_for("existence")
        value, value_kind, is_colour = _asked_value(low, named, lexicon)
        if existence is not None and value_kind is not EditKind.COUNT:
            return Question(sentence, "existence", (existence,))
        return Question(
            sentence,
            "yes_no",
            tuple(named),
            value=value,
            value_kind=value_kind,
            value_is_colour=is_colour,
        )
    return Question(sentence, "other", tuple(named))


def _with(
    sentence: str,
    kind: QuestionKind,
    subject: Subject | None,
    named: list[Subject],
    attribute: Literal["colour", "other"] | None = None,
) -> Question:
    if subject is None:
        return Question(sentence, kind, tuple(named[:1]), attribute=attribute)
    return Question(sentence, kind, (subject,), attribute=attribute)


def _asked_value(
    low: str, named: list[Subject], lexicon: Lexicon
) -> tuple[str | None, EditKind | None, bool]:
    """The word a yes/no question asks to confirm, its kind, and whether it is a colour."""
    taken = [m.span() for s in named for m in s.pattern.finditer(low)]

    def free(match: re.Match[str]) -> bool:
        return all(match.end() <= a or match.start() >= b for a, b in taken)

    for match in lexicon.colour_re.finditer(low):
        if free(match):
            return norm(match.group()), EditKind.ATTRIBUTE, True
    for match in re.finditer(r"(?<!\w)(\d{1,3}|" + "|".join(_WORD_NUMBERS[2:]) + r")(?!\w)", low):
        return match.group(), EditKind.COUNT, False
    if lexicon.place_re is not None:
        for match in lexicon.place_re.finditer(low):
            return norm(match.group()), EditKind.SPATIAL, False
    for kind in (EditKind.SPATIAL, EditKind.RELATION, EditKind.ATTRIBUTE):
        for match in lexicon.swap_re[kind].finditer(low):
            if free(match):
                return norm(match.group()), kind, False
    return None, None, False


# ---------------------------------------------------------------------------------------------
# Reading an answer


def mentions(text: str, subject: Subject) -> list[Mention]:
    """Every mention of ``subject`` in ``text``, left to right."""
    found = []
    for match in subject.pattern.finditer(text):
        surface = norm(match.group())
        if subject.singular.casefold() == subject.plural.casefold():
            plural: bool | None = None
        else:
            plural = surface == norm(subject.plural)
        found.append(Mention(match.start(), match.end(), plural))
    return found


def quantity_before(text: str, start: int) -> Quantity | None:
    """The quantity written before the noun at ``start`` (at most three adjectives between)."""
    found = _QUANTITY_BEFORE.search(text, max(0, start - 80), start)
    if found is None:
        return None
    word = found.group("q").casefold()
    if word.isdigit():
        return Quantity(found.start("q"), found.end("q"), int(word), "digit")
    if word in ("a", "an"):
        return Quantity(found.start("q"), found.end("q"), 1, "article")
    if word == "no":
        return Quantity(found.start("q"), found.end("q"), 0, "no")
    return Quantity(found.start("q"), found.end("q"), _WORD_NUMBERS.index(word), "word")


def verb_before(text: str, start: int) -> tuple[int, int, str] | None:
    """The "is"/"are"/"was"/"were" (or the "'s" of "there's") directly before ``start``."""
    window = max(0, start - 12)
    found = _VERB_BEFORE.search(text, window, start) or _THERES_BEFORE.search(text, window, start)
    if found is None:
        return None
    return found.start("verb"), found.end("verb"), found.group("verb")


def adjectives_before(text: str, start: int) -> tuple[int, str]:
    """Where the run of adjectives before ``start`` begins, and the run."""
    found = _QUANTITY_BEFORE.search(text, max(0, start - 80), start)
    if found is not None:
        return found.start("adjectives"), found.group("adjectives")
    run = re.search(r"(?:(?<=\s)|^)((?:" + _ADJECTIVE + r"[ \t]+){0,3})\Z", text[:start], re.I)
    if run is None:
        return start, ""
    return run.start(1), run.group(1)


def _clauses(text: str) -> Iterator[tuple[int, int]]:
    cursor = 0
    for match in _CLAUSE_SPLIT.finditer(text):
        yield cursor, match.start()
        cursor = match.end()
    yield cursor, len(text)


def clause_around(text: str, start: int, end: int) -> tuple[int, int]:
    """The clause (see the module documentation) that holds ``[start, end)``."""
    for low, high in _clauses(text):
        if low <= start and end <= high:
            return low, high
    return 0, len(text)


def stated_colours(text: str, subject: Subject, lexicon: Lexicon) -> set[int]:
    """The colour groups ``text`` gives ``subject`` (among its adjectives or after is/are)."""
    groups: set[int] = set()
    for mention in mentions(text, subject):
        _, run = adjectives_before(text, mention.start)
        for word in re.findall(r"[A-Za-z]+", run):
            group = lexicon.colour_group.get(word.casefold())
            if group is not None:
                groups.add(group)
        after = re.match(
            r"[ \t]+(?:is|are|was|were|looks?|appears?)[ \t]+(?:mostly[ \t]+|all[ \t]+|"
            r"bright[ \t]+|dark[ \t]+|light[ \t]+)?([A-Za-z]+)",
            text[mention.end :],
        )
        if after is not None:
            group = lexicon.colour_group.get(after.group(1).casefold())
            if group is not None:
                groups.add(group)
    if not mentions(text, subject) and len(text.split()) <= 4:
        for match in lexicon.colour_re.finditer(text):
            groups.add(lexicon.colour_group[norm(match.group())])
    return groups


def places_of(text: str, subject: Subject | None, lexicon: Lexicon) -> set[str]:
    """The place phrases and spatial words of the clauses that mention ``subject`` (of the
    whole text when ``subject`` is ``None`` or not mentioned)."""
    spans = (
        [clause_around(text, m.start, m.end) for m in mentions(text, subject)] if subject else []
    )
    if not spans:
        spans = [(0, len(text))]
    found: set[str] = set()
    for low, high in spans:
        clause = text[low:high]
        taken: list[tuple[int, int]] = []
        if lexicon.place_re is not None:
            for match in lexicon.place_re.finditer(clause):
                found.add(norm(match.group()))
                taken.append(match.span())
        for match in lexicon.swap_re[EditKind.SPATIAL].finditer(clause):
            if all(match.end() <= a or match.start() >= b for a, b in taken):
                found.add(norm(match.group()))
    return found


def relation_words(text: str, subjects: tuple[Subject, ...], lexicon: Lexicon) -> set[str] | None:
    """The spatial and relation words of the first clause that mentions every subject."""
    if len(subjects) < 2:
        return None
    for low, high in _sentences(text):
        clause = text[low:high]
        if all(s.pattern.search(clause) for s in subjects):
            words = {norm(m.group()) for m in lexicon.swap_re[EditKind.SPATIAL].finditer(clause)}
            words |= {norm(m.group()) for m in lexicon.swap_re[EditKind.RELATION].finditer(clause)}
            return words
    return None


def _sentences(text: str) -> Iterator[tuple[int, int]]:
    cursor = 0
    for match in re.finditer(r"[.;!?]+(?=\s|\Z)", text):
        yield cursor, match.start()
        cursor = match.end()
    if cursor < len(text):
        yield cursor, len(text)


def negation_spans(text: str, subject: Subject) -> list[tuple[int, int]]:
    """Where ``text`` says there is no ``subject``: "there is no (adjectives) X", "there
    isn't a X", "I don't see any X", "no X"."""
    noun = noun_alternation(subject)
    adjectives = r"(?:" + _ADJECTIVE + r"[ \t]+){0,3}?"
    patterns = (
        rf"(?<!\w)there[ \t]+(?:is|are|was|were)[ \t]+no[ \t]+{adjectives}(?:{noun})(?!\w)",
        rf"(?<!\w)there[ \t]+(?:isn't|aren't|wasn't|weren't|is[ \t]+not|are[ \t]+not|"
        rf"was[ \t]+not|were[ \t]+not)[ \t]+(?:an?|any)[ \t]+{adjectives}(?:{noun})(?!\w)",
        rf"(?<!\w)(?:I[ \t]+)?(?:do[ \t]+not|don't|cannot|can't|can[ \t]+not|could[ \t]+not|"
        rf"couldn't)[ \t]+see[ \t]+(?:an?|any)[ \t]+{adjectives}(?:{noun})(?!\w)",
        rf"(?<!\w)no[ \t]+{adjectives}(?:{noun})(?!\w)",
    )
    spans: list[tuple[int, int]] = []
    for pattern in patterns:
        for match in re.finditer(pattern, text.replace("\u2019", "'"), re.IGNORECASE):
            if all(match.end() <= a or match.start() >= b for a, b in spans):
                spans.append(match.span())
    return sorted(spans)


def noun_alternation(subject: Subject) -> str:
    """A pattern (no groups) for either form of ``subject``."""
    forms = sorted({subject.singular, subject.plural}, key=len, reverse=True)
    return "|".join(r"[ \t]+".join(re.escape(w) for w in form.split()) for form in forms)


def leading_yes_no(text: str) -> tuple[int, int, str] | None:
    """The "Yes"/"No" an answer starts with: its span and the word in lower case."""
    found = _LEADING_YES_NO.match(text)
    if found is None:
        return None
    return found.start("word"), found.end("word"), found.group("word").casefold()


def polarity(text: str, subject: Subject) -> Literal["yes", "no"] | None:
    """Whether ``text`` says ``subject`` is there ("yes"), is not ("no"), or neither (None)."""
    leading = leading_yes_no(text)
    if leading is not None:
        return "yes" if leading[2] == "yes" else "no"
    if negation_spans(text, subject):
        return "no"
    return "yes" if mentions(text, subject) else None


def asserted_quantities(text: str, subject: Subject) -> list[int]:
    """The quantities of at least one that ``text`` states for ``subject``."""
    values = []
    for mention in mentions(text, subject):
        quantity = quantity_before(text, mention.start)
        if quantity is not None and quantity.value >= 1:
            values.append(quantity.value)
    return values


def stated_counts(text: str, subject: Subject) -> list[int]:
    """Every quantity ``text`` states for ``subject``, "no" as 0."""
    values = []
    for mention in mentions(text, subject):
        quantity = quantity_before(text, mention.start)
        if quantity is not None:
            values.append(quantity.value)
    return values


def agreement_problems(
    text: str, lexicon: Lexicon, subjects: tuple[Subject, ...] = ()
) -> list[str]:
    """Quantities and verbs that disagree with their noun, as short quotes of the text."""
    problems: list[str] = []
    nouns: list[tuple[int, int, bool | None]] = []
    for match in lexicon.object_re.finditer(text):
        form = lexicon.forms.get(norm(match.group()))
        if form is None:
            continue
        # A noun that modifies the next noun is not the head ("orange kites", "tennis ball")
        following = re.match(r"[ \t]+([A-Za-z][A-Za-z'-]*)", text[match.end() :])
        if following is not None and (
            lexicon.object_re.match(text, match.end() + following.start(1)) is not None
            or (form.name == "orange" and following.group(1).casefold() not in NOT_ADJECTIVES)
        ):
            continue
        nouns.append((match.start(), match.end(), form.plural))
    for subject in subjects:
        if not subject.known:
            nouns.extend((m.start, m.end, m.plural) for m in mentions(text, subject))
    for start, end, plural in nouns:
        if plural is None:
            continue
        quantity = quantity_before(text, start)
        if quantity is not None and quantity.style != "no":
            quote = text[quantity.start : end]
            if (quantity.value == 1) == plural:
                problems.append(quote)
            verb = verb_before(text, quantity.start)
            if verb is not None:
                many = verb[2].casefold() in ("are", "were")
                if many != (quantity.value != 1):
                    problems.append(text[verb[0] : end])
        after = re.match(r"[ \t]+(is|are|was|were)(?!\w)", text[end:])
        the = re.search(r"(?<!\w)the[ \t]+(?:" + _ADJECTIVE + r"[ \t]+){0,2}\Z", text[:start], re.I)
        if after is not None and the is not None and quantity is None:
            many = after.group(1).casefold() in ("are", "were")
            if many != plural:
                problems.append(text[the.start() : end + after.end()])
    return problems


# ---------------------------------------------------------------------------------------------
# The check


def _names(subject: Subject) -> str:
    return subject.plural


def answer_problem(
    question: Question | None,
    answer: str,
    rejected: str,
    lexicon: Lexicon,
    *,
    require_change: bool = True,
) -> str | None:
    """Why ``rejected`` is not a coherent wrong answer to ``question``, or ``None``.

    The reason is written to the model that made ``rejected`` (it is fed back on a retry).
    See the module documentation for the checks and their order; ``require_change=False``
    leaves out the last one (what was asked changed).
    """
    subjects = question.subjects if question is not None else ()
    for subject in subjects:
        if mentions(answer, subject) and not mentions(rejected, subject):
            return (
                f"The rewrite no longer mentions the {_names(subject)} that the question "
                f"({question.text if question else ''}) asks about. Keep the {_names(subject)} "
                "and change what the question asks about them instead of swapping them for "
                "another object."
            )
    if question is not None and question.kind == "existence" and subjects:
        subject = subjects[0]
        leading = leading_yes_no(rejected)
        says_no = leading is not None and leading[2] == "no"
        if says_no and (
            asserted_quantities(rejected, subject) or not negation_spans(rejected, subject)
        ):
            return (
                f"The rewrite answers 'No' but still says there are {_names(subject)}. A "
                f"wrong 'No' must say there is no {subject.singular} and describe the rest "
                "consistently with that."
            )
        if leading is not None and leading[2] == "yes" and negation_spans(rejected, subject):
            return (
                f"The rewrite answers 'Yes' but says there is no {subject.singular}. A wrong "
                f"'Yes' must say where the {subject.singular} is and describe the rest "
                "consistently with that."
            )
    if not lexicon.english:
        return None  # the grammar below is English
    before = agreement_problems(answer, lexicon, subjects)
    new = [p for p in agreement_problems(rejected, lexicon, subjects) if p not in before]
    if new:
        return (
            f"The rewrite does not agree with itself in number: {new[0]!r}. Make each number, "
            "noun and verb agree ('one kite is', 'three kites are')."
        )
    if question is None or not require_change:
        return None
    return _unchanged(question, answer, rejected, lexicon)


def _unchanged(question: Question, answer: str, rejected: str, lexicon: Lexicon) -> str | None:
    """Why the rewrite leaves what the question asks as it was, or ``None``."""
    subject = question.subjects[0] if question.subjects else None
    what: str | None = None
    if question.kind == "count" and subject is not None:
        before, after = stated_counts(answer, subject), stated_counts(rejected, subject)
        if before and after and before[0] == after[0]:
            what = f"the number of {subject.plural} ({before[0]})"
    elif question.kind == "attribute" and question.attribute == "colour" and subject is not None:
        before_colours = stated_colours(answer, subject, lexicon)
        if before_colours and before_colours == stated_colours(rejected, subject, lexicon):
            what = f"the colour of the {subject.plural}"
    elif question.kind == "position" and subject is not None:
        before_places = places_of(answer, subject, lexicon)
        if before_places and before_places == places_of(rejected, subject, lexicon):
            what = f"where the {subject.plural} are"
    elif question.kind == "relation":
        before_words = relation_words(answer, question.subjects, lexicon)
        if before_words and before_words == relation_words(rejected, question.subjects, lexicon):
            what = "how the objects are placed or related"
    elif question.kind == "existence" and subject is not None:
        before_said = polarity(answer, subject)
        if before_said is not None and before_said == polarity(rejected, subject):
            what = f"the answer ({before_said}) to whether there is a {subject.singular}"
    elif question.kind == "yes_no":
        before_yes, after_yes = leading_yes_no(answer), leading_yes_no(rejected)
        if before_yes and after_yes and before_yes[2] == after_yes[2]:
            what = f"the conclusion ('{before_yes[2]}')"
    if what is None:
        return None
    return (
        f"The rewrite keeps {what}, which is what the question ({question.text}) asks. "
        "Change that first (and the words that must agree with it); other errors may follow."
    )
