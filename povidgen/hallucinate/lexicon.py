"""The word lists behind :class:`~povidgen.RuleHallucinator` and the question-aware check.

A :class:`Lexicon` holds everything the rules know about one language: object names (singular,
plural, what co-occurs with what), colour groups, number words, swap tables for attributes,
spatial terms, relations and negations, place phrases ("on the left", "at the top"), and the
function words that recognise the language.

* :func:`english` is the shipped English lexicon, read once from ``data/cooccurrence.json``
  and ``data/lexicon.json``.
* :func:`load_word_lists` builds a lexicon for another language from the user's word lists: a
  JSON file or a mapping of the shape below. Every section except ``language`` is optional;
  unknown sections are an error::

      {
        "language": "fr",                        # the language the lists are for (a code)
        "function_words": ["le", "la", "est"],   # how answers in it are recognised; built in
                                                 #   for fr, de, es, it, pt and nl
        "objects": {"pomme": "pommes"},          # singular -> plural
        "colours": [["rouge", "rouges"], ["bleu", "bleue"]],   # spellings of one colour;
                                                 #   a replacement is written as the first
        "numbers": ["zéro", "un", "deux", "trois"],  # number words, by value
        "attributes": {"grand": ["petit"]},      # word -> words that contradict it
        "spatial": {"gauche": ["droite"]},
        "relations": {"tient": ["lance"]},
        "negations": {"n'est pas": ["est"]},
        "negators": ["ne", "pas", "aucun"],      # words that negate what follows
        "version": "my-lists-1"                  # recorded in provenance
      }

  Words are matched case-insensitively on word boundaries, longest phrase first. A supplied
  language gets word-for-word swaps only: no co-occurrence table (a swapped object is another
  object of the list), no agreement fixes, no yes/no flips and no reading of the question
  beyond protecting the objects it names.
* :func:`detect_language` tells English answers from answers in the languages it has function
  words for (French, German, Spanish, Italian, Portuguese, Dutch, and any supplied language)
  and from answers written mostly in a non-Latin script.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from povidgen.schema import EditKind

__all__ = [
    "Lexicon",
    "ObjectEntry",
    "WordListSource",
    "detect_language",
    "english",
    "language_name",
    "load_word_lists",
]


def _words(spaced: str) -> list[str]:
    """The words of a whitespace-separated list (long word lists read better as text)."""
    return spaced.split()


WordListSource = str | os.PathLike[str] | Mapping[str, Any]
"""A JSON file of word lists, or the same content as a mapping."""

CURLY_APOSTROPHE = "\u2019"

_ENGLISH_NUMBERS: tuple[str, ...] = tuple(
    _words(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty"
    )
)
_ENGLISH_NEGATORS = frozenset({"no", "not", "never", "without", "nor", "neither", "none", "cannot"})

# Function words that mark a language: frequent, short, and (for the other languages) not
# English words, so an English answer never scores for them.
_ENGLISH_WORDS = frozenset(
    _words("""the a an is are was were be been there here this that these those it its of in on at
    to with from by and or but not no yes has have had can could which what where how many
    some any one two three four five six seven eight nine ten shows image picture photo left
    right top bottom center middle front behind next near his her their they he she you i""")
)
_BUILT_IN_PROFILES: dict[str, frozenset[str]] = {
    "fr": frozenset(
        _words("""le la les un une des de du est sont et il elle ils elles y dans sur avec pas
        oui non au aux ce cette ces deux trois quatre cinq qui que à gauche droite sous ne
        très image ont être""")
    ),
    "de": frozenset(
        _words("""der die das ein eine einen einem ist sind und mit auf im nicht ja nein es gibt
        zwei drei vier fünf links rechts bild dem den des von zu oben unten neben hinter vor sie
        er""")
    ),
    "es": frozenset(
        _words("""el la los las un una unos unas es son y hay en con sí dos tres cuatro cinco
        izquierda derecha imagen de del al está están sobre debajo""")
    ),
    "it": frozenset(
        _words("""il lo la gli le un una uno è sono e ci di con sì due tre quattro cinque sinistra
        destra immagine nell nella della del sul sulla sotto""")
    ),
    "pt": frozenset(
        _words("""o os as um uma é são e há em com sim não dois duas três quatro cinco esquerda
        direita imagem de na do da dos das está estão sobre""")
    ),
    "nl": frozenset(
        _words("""de het een zijn en er met op ja nee niet twee drie vier vijf links rechts
        afbeelding van staat staan onder boven""")
    ),
}
_LANGUAGE_NAMES = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
}
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)?")
_QUOTED = re.compile(r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d|\u2018[^\u2019\n]*\u2019")
_WORD_LIST_KEYS = frozenset(
    {
        "language",
        "function_words",
        "objects",
        "colours",
        "numbers",
        "attributes",
        "spatial",
        "relations",
        "negations",
        "negators",
        "version",
    }
)


@dataclass(frozen=True)
class ObjectEntry:
    """One object category: its written forms and the objects that co-occur with it."""

    name: str
    singular: str
    plural: str
    cooccurs: tuple[str, ...]
    mention: re.Pattern[str]  # any form of the object, to test whether a text names it


@dataclass(frozen=True)
class Form:
    """What one written form of an object is: which object, and in which number."""

    name: str
    plural: bool | None  # None: singular and plural are spelt alike ("sheep")


@dataclass(frozen=True)
class Lexicon:
    """Every word list of one language (see the module documentation)."""

    language: str
    version: str
    objects: Mapping[str, ObjectEntry]
    object_names: tuple[str, ...]  # sorted, so random choices do not depend on hashing
    forms: Mapping[str, Form]
    inflections: Mapping[str, tuple[str, str]]  # any form -> (singular, plural) of its pair
    object_re: re.Pattern[str]
    colours: tuple[str, ...]  # the written name of each colour group
    colour_group: Mapping[str, int]
    colour_re: re.Pattern[str]
    swaps: Mapping[EditKind, Mapping[str, tuple[str, ...]]]
    swap_re: Mapping[EditKind, re.Pattern[str]]
    places: Mapping[str, tuple[str, ...]]  # place phrase -> other place phrases
    place_re: re.Pattern[str] | None
    new_places: tuple[str, ...]  # where an object said to be absent is put by a flip
    texts: tuple[str, ...]
    numbers: tuple[str, ...]  # number words by value
    negators: frozenset[str]
    function_words: frozenset[str]
    table_version: str = ""
    fingerprint: str = field(default="", compare=False)

    @property
    def english(self) -> bool:
        """Whether this is the shipped English lexicon (the only one with grammar rules)."""
        return self.language == "en"

    def number_value(self, word: str) -> int | None:
        """The value of a number word (any case), or ``None``."""
        folded = word.casefold()
        return self.numbers.index(folded) if folded in self.numbers else None


def norm(surface: str) -> str:
    """The lookup key of a matched phrase: case-folded, single-spaced, straight apostrophes."""
    return " ".join(surface.replace(CURLY_APOSTROPHE, "'").casefold().split())


def phrase_re(phrases: Iterable[str]) -> re.Pattern[str]:
    """A case-insensitive pattern for any of ``phrases`` on word boundaries, longest first."""
    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    if not ordered:
        return re.compile(r"(?!)")
    parts = (
        r"\s+".join(re.escape(w).replace("'", f"['{CURLY_APOSTROPHE}]") for w in p.split())
        for p in ordered
    )
    return re.compile(rf"(?<!\w)(?:{'|'.join(parts)})(?!\w)", re.IGNORECASE)


def _read_json(name: str) -> dict[str, Any]:
    path = resources.files("povidgen.hallucinate").joinpath("data", name)
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _objects(
    table: Mapping[str, Any],
) -> tuple[dict[str, ObjectEntry], dict[str, Form], dict[str, tuple[str, str]]]:
    objects: dict[str, ObjectEntry] = {}
    forms: dict[str, Form] = {}
    inflections: dict[str, tuple[str, str]] = {}

    def add_form(surface: str, name: str, plural: bool) -> None:
        key = norm(surface)
        previous = forms.get(key)
        if previous is not None and previous.name == name and previous.plural != plural:
            forms[key] = Form(name, None)
        else:
            forms[key] = Form(name, plural)

    for name, raw in table.items():
        singular = str(raw.get("singular", name))
        plural = str(raw["plural"])
        aliases: dict[str, str] = dict(raw.get("aliases", {}))
        pairs = [(singular, plural), *aliases.items()]
        surfaces = {name} | {s for pair in pairs for s in pair}
        for one, many in pairs:
            add_form(one, name, False)
            add_form(many, name, True)
            inflections[norm(one)] = inflections[norm(many)] = (one, many)
        cooccurs = [str(c) for c in raw.get("cooccurs", [])]
        missing = [c for c in cooccurs if c not in table]
        if missing:
            raise ValueError(f"object {name!r} co-occurs with unknown {missing}")
        objects[name] = ObjectEntry(
            name=name,
            singular=singular,
            plural=plural,
            cooccurs=tuple(cooccurs),
            mention=phrase_re(surfaces),
        )
    return objects, forms, inflections


def _swap_table(raw: Any, section: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"word lists: {section!r} must map words to lists of words")
    table: dict[str, tuple[str, ...]] = {}
    for word, options in raw.items():
        if isinstance(options, str) or not isinstance(options, list) or not options:
            raise ValueError(f"word lists: {section}[{word!r}] must be a non-empty list of words")
        cleaned = tuple(str(o) for o in options if norm(str(o)) != norm(str(word)))
        if not cleaned:
            raise ValueError(f"word lists: {section}[{word!r}] only repeats the word")
        table[norm(str(word))] = cleaned
    return table


def _build(
    *,
    language: str,
    version: str,
    table_version: str,
    objects: dict[str, ObjectEntry],
    forms: dict[str, Form],
    inflections: dict[str, tuple[str, str]],
    colour_groups: list[list[str]],
    swaps: dict[EditKind, dict[str, tuple[str, ...]]],
    places: dict[str, tuple[str, ...]],
    new_places: tuple[str, ...],
    texts: tuple[str, ...],
    numbers: tuple[str, ...],
    negators: frozenset[str],
    function_words: frozenset[str],
    fingerprint: str,
) -> Lexicon:
    colour_group = {norm(word): i for i, group in enumerate(colour_groups) for word in group}
    return Lexicon(
        language=language,
        version=version,
        table_version=table_version,
        objects=objects,
        object_names=tuple(sorted(objects)),
        forms=forms,
        inflections=inflections,
        object_re=phrase_re(forms),
        colours=tuple(group[0] for group in colour_groups),
        colour_group=colour_group,
        colour_re=phrase_re(colour_group),
        swaps=swaps,
        swap_re={kind: phrase_re(table) for kind, table in swaps.items()},
        places=places,
        place_re=phrase_re(places) if places else None,
        new_places=new_places,
        texts=texts,
        numbers=numbers,
        negators=negators,
        function_words=function_words,
        fingerprint=fingerprint,
    )


@functools.cache
def english() -> Lexicon:
    """The shipped English lexicon (read once)."""
    table = _read_json("cooccurrence.json")
    lexicon = _read_json("lexicon.json")
    objects, forms, inflections = _objects(table["objects"])
    swaps = {
        kind: {norm(k): tuple(v) for k, v in lexicon[section].items()}
        for kind, section in (
            (EditKind.ATTRIBUTE, "attributes"),
            (EditKind.SPATIAL, "spatial"),
            (EditKind.RELATION, "relations"),
            (EditKind.REASONING, "negations"),
        )
    }
    places = {norm(k): tuple(v) for k, v in lexicon["places"].items()}
    return _build(
        language="en",
        version=str(lexicon["version"]),
        table_version=str(table["version"]),
        objects=objects,
        forms=forms,
        inflections=inflections,
        colour_groups=lexicon["colours"],
        swaps=swaps,
        places=places,
        new_places=tuple(lexicon["new_places"]),
        texts=tuple(lexicon["texts"]),
        numbers=_ENGLISH_NUMBERS,
        negators=_ENGLISH_NEGATORS,
        function_words=_ENGLISH_WORDS,
        fingerprint="",
    )


def _string_list(raw: Any, section: str) -> list[str]:
    if (
        isinstance(raw, str)
        or not isinstance(raw, list)
        or not all(isinstance(w, str) for w in raw)
    ):
        raise ValueError(f"word lists: {section!r} must be a list of words")
    return [w for w in raw if w.strip()]


def load_word_lists(source: WordListSource) -> Lexicon:
    """A :class:`Lexicon` for another language from the user's word lists.

    ``source`` is a JSON file or a mapping of the shape in the module documentation.

    Raises:
        ValueError: the file cannot be read, or a section is missing, unknown or malformed.
    """
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        where = "word lists"
    else:
        path = Path(source)
        where = f"word lists {str(path)!r}"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{where} cannot be read: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a JSON object")
    unknown = sorted(set(raw) - _WORD_LIST_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown section(s) {unknown}; the sections are {sorted(_WORD_LIST_KEYS)}"
        )
    language = raw.get("language")
    if not isinstance(language, str) or not language.strip():
        raise ValueError(f"{where}: 'language' (the language the lists are for) is required")
    language = language.strip().casefold()
    if language == "en":
        raise ValueError(f"{where}: English lists are built in; supply lists for another language")
    function_words = frozenset(
        norm(w) for w in _string_list(raw.get("function_words", []), "function_words")
    )
    if not function_words:
        function_words = _BUILT_IN_PROFILES.get(language, frozenset())
    if not function_words:
        raise ValueError(
            f"{where}: 'function_words' is required for {language!r} (how answers in it are "
            f"recognised); it is built in only for {sorted(_BUILT_IN_PROFILES)}"
        )
    objects_raw = raw.get("objects", {})
    if not isinstance(objects_raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in objects_raw.items()
    ):
        raise ValueError(f"{where}: 'objects' must map singular names to plural names")
    objects, forms, inflections = _objects(
        {norm(k): {"plural": v, "cooccurs": []} for k, v in objects_raw.items()}
    )
    groups_raw = raw.get("colours", [])
    if not isinstance(groups_raw, list):
        raise ValueError(f"{where}: 'colours' must be a list of lists of spellings")
    colour_groups = [[g] if isinstance(g, str) else _string_list(g, "colours") for g in groups_raw]
    colour_groups = [g for g in colour_groups if g]
    swaps = {
        kind: _swap_table(raw.get(section, {}), section)
        for kind, section in (
            (EditKind.ATTRIBUTE, "attributes"),
            (EditKind.SPATIAL, "spatial"),
            (EditKind.RELATION, "relations"),
            (EditKind.REASONING, "negations"),
        )
    }
    numbers = tuple(norm(w) for w in _string_list(raw.get("numbers", []), "numbers"))
    if "version" in raw and not isinstance(raw["version"], str):
        raise ValueError(f"{where}: 'version' must be a string")
    encoded = json.dumps(raw, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return _build(
        language=language,
        version=str(raw.get("version", "")),
        table_version="",
        objects=objects,
        forms=forms,
        inflections=inflections,
        colour_groups=colour_groups,
        swaps=swaps,
        places={},
        new_places=(),
        texts=english().texts,
        numbers=numbers,
        negators=frozenset(norm(w) for w in _string_list(raw.get("negators", []), "negators")),
        function_words=function_words,
        fingerprint=hashlib.sha256(encoded).hexdigest()[:16],
    )


def language_name(code: str) -> str:
    """A readable name for a language code ("fr" -> "French"); the code itself otherwise."""
    return _LANGUAGE_NAMES.get(code, code)


def _script(text: str) -> str | None:
    """The script most letters of ``text`` are in, when it is not Latin; else ``None``."""
    scripts: dict[str, int] = {}
    for char in text:
        if char.isalpha():
            name = unicodedata.name(char, "")
            script = name.split(" ")[0] if name else "UNKNOWN"
            scripts[script] = scripts.get(script, 0) + 1
    if not scripts:
        return None
    script = max(scripts.items(), key=lambda item: item[1])[0]
    latin = scripts.get("LATIN", 0)
    if script == "LATIN" or latin * 2 >= sum(scripts.values()):
        return None
    return script if script in ("CJK",) else script.title()


def detect_language(text: str, profiles: Mapping[str, frozenset[str]] | None = None) -> str:
    """The language ``text`` is written in: ``"en"``, a language code, or ``"script:<Name>"``.

    Rules, on the text outside double quotes: a text whose letters are mostly in a non-Latin
    script is ``"script:<Name>"`` ("script:Cyrillic", "script:CJK"); otherwise each language's
    function words are counted (English and ``fr``, ``de``, ``es``, ``it``, ``pt``, ``nl``, plus
    ``profiles``, which may add or replace languages) and the text is English unless another
    language counts more of its words than English does, and at least two of them (one when
    the text has at most three words). Anything undecided is English: the rules then simply
    find nothing to change.
    """
    unquoted = _QUOTED.sub(" ", text)
    script = _script(unquoted)
    if script is not None:
        return f"script:{script}"
    words = [norm(w) for w in _WORD.findall(unquoted)]
    if not words:
        return "en"
    english_score = sum(w in _ENGLISH_WORDS for w in words)
    candidates = dict(_BUILT_IN_PROFILES)
    candidates.update(profiles or {})
    best, best_score = "en", english_score
    for code, vocabulary in sorted(candidates.items()):
        score = sum(w in vocabulary for w in words)
        if score > best_score:
            best, best_score = code, score
    needed = 1 if len(words) <= 3 else 2
    return best if best != "en" and best_score >= needed else "en"
