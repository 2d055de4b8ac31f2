"""Object vocabularies: which words of a caption name which object category.

A :class:`Vocabulary` maps words and short phrases (``"puppy"``, ``"teddy bear"``) to
categories (``"dog"``, ``"teddy bear"``) and finds the object mentions of a caption the way
CHAIR's reference implementation does (Rohrbach et al. 2018, ``utils/chair.py``):

1. tokenise the lower-cased caption and make every word singular
   (:func:`povidgen.eval.words.singularize`);
2. read multi-word names as one word, left to right, longest first (``"hot dog"`` is a hot
   dog, not a dog; ``"teddy bear"`` is not a bear; ``"dining table"`` is one mention), and
   apply the rewrites (``"baby dog"`` is a dog, not a baby, which would be a person);
3. drop the words that a rule drops (``"seat"`` in a caption that mentions a toilet);
4. every remaining word that is in the vocabulary is one mention of its category; a word said
   twice is two mentions.

:meth:`Vocabulary.coco` is CHAIR's: the 80 COCO categories with the reference synonym lists
and its special cases, shipped in ``povidgen/eval/data`` with their source and license.
Any ``{word: category}`` mapping makes a custom one, e.g. :data:`SCENE_VOCABULARY` for
povidgen's demo scenes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from importlib import resources
from types import MappingProxyType

from povidgen.eval.words import singularize, tokenize
from povidgen.sources.demo import OBJECT_NAMES

__all__ = ["SCENE_VOCABULARY", "Vocabulary"]


def _normal(phrase: str) -> str:
    """A phrase as captions are matched: lower-case singular words joined by one space."""
    return " ".join(singularize(word) for word in tokenize(phrase))


class Vocabulary:
    """Words and phrases that name object categories, and how a caption's mentions are found.

    Args:
        synonyms: ``{word or phrase: category}``. Every category also names itself, so
            ``{"puppy": "dog"}`` finds both "puppy" and "dog". Keys are matched
            case-insensitively and in singular or plural ("puppies").
        rewrites: ``{phrase: word}``: the phrase is read as the word before the synonyms are
            looked up (``{"baby dog": "dog"}``); a phrase rewritten to itself is only kept in
            one piece (``{"home plate": "home plate"}``, which names no object).
        drops: ``{word: other}``: ``word`` is dropped from a caption that also holds ``other``
            (``{"seat": "toilet"}``).
        name: what reports call it.

    Raises:
        ValueError: a key is empty, or two keys that are equal once normalised (``"Dogs"`` and
            ``"dog"``) name different categories.
    """

    def __init__(
        self,
        synonyms: Mapping[str, str],
        *,
        rewrites: Mapping[str, str] | None = None,
        drops: Mapping[str, str] | None = None,
        name: str = "custom",
    ) -> None:
        self.name = name
        table: dict[str, str] = {}
        categories: set[str] = set()
        pairs = [*((c, c) for c in synonyms.values()), *synonyms.items()]
        for key, category in pairs:
            normal = _normal(key)
            if not normal or not category.strip():
                raise ValueError(f"empty word or category in the vocabulary: {key!r}: {category!r}")
            category = " ".join(category.split())
            if table.get(normal, category) != category:
                raise ValueError(
                    f"{key!r} names both {table[normal]!r} and {category!r} in the vocabulary"
                )
            table[normal] = category
            categories.add(category)
        phrases = {key: key for key in table if " " in key}
        for phrase, word in (rewrites or {}).items():
            normal = _normal(phrase)
            if not normal:
                raise ValueError(f"empty phrase in the vocabulary's rewrites: {phrase!r}")
            phrases[normal] = _normal(word)
        self._synonyms = table
        self._phrases = phrases
        self._longest = max((key.count(" ") + 1 for key in phrases), default=1)
        self._drops = {_normal(w): _normal(o) for w, o in (drops or {}).items()}
        self.categories: frozenset[str] = frozenset(categories)
        """The category names."""

    @property
    def synonyms(self) -> Mapping[str, str]:
        """``{normalised word or phrase: category}``, read-only."""
        return MappingProxyType(self._synonyms)

    @classmethod
    def coco(cls) -> Vocabulary:
        """CHAIR's COCO vocabulary: 80 categories, the reference synonym lists and rules.

        Read once from ``povidgen/eval/data/coco_synonyms.txt`` and ``coco_double_words.txt``
        (copied from github.com/LisaAnne/Hallucination, BSD 2-Clause; see their headers).
        """
        return _coco()

    def mentions(self, caption: str) -> list[tuple[str, str]]:
        """The object mentions of ``caption`` in order, as ``(word, category)``: ``word`` is
        the (normalised) word or phrase that was read, every occurrence counted.

        >>> Vocabulary.coco().mentions("Two hot dogs and a dog on a dining table.")
        [('hot dog', 'hot dog'), ('dog', 'dog'), ('dining table', 'dining table')]
        """
        words = [singularize(token) for token in tokenize(caption)]
        merged: list[str] = []
        i = 0
        while i < len(words):
            for size in range(min(self._longest, len(words) - i), 1, -1):
                replacement = self._phrases.get(" ".join(words[i : i + size]))
                if replacement is not None:
                    merged.append(replacement)
                    i += size
                    break
            else:
                merged.append(words[i])
                i += 1
        present = set(merged)
        dropped = {word for word, other in self._drops.items() if other in present}
        return [
            (word, self._synonyms[word])
            for word in merged
            if word in self._synonyms and word not in dropped
        ]

    def category(self, name: str) -> str:
        """The category that ``name`` (a category, a synonym, singular or plural) stands for.

        Raises:
            ValueError: ``name`` is not in the vocabulary.
        """
        clean = " ".join(name.split())
        if clean in self.categories:
            return clean
        found = self._synonyms.get(_normal(clean))
        if found is None:
            mentioned = {category for _, category in self.mentions(clean)}
            if len(mentioned) == 1:
                return mentioned.pop()
            raise ValueError(
                f"{name!r} is not an object of the {self.name} vocabulary; give one of its "
                "categories or synonyms, or a vocabulary that has it"
            )
        return found

    def categories_of(self, names: Iterable[str]) -> frozenset[str]:
        """:meth:`category` of each name, as a set."""
        return frozenset(self.category(name) for name in names)

    def __repr__(self) -> str:
        return f"Vocabulary(name={self.name!r}, {len(self.categories)} categories)"


def _read_rules(text: str) -> Iterable[str]:
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


@functools.cache
def _coco() -> Vocabulary:
    data = resources.files("povidgen.eval").joinpath("data")
    synonyms: dict[str, str] = {}
    for line in _read_rules(data.joinpath("coco_synonyms.txt").read_text(encoding="utf-8")):
        # Names are stripped: the reference's split(", ") keeps the leading space of
        # " motor bike" and " cheesecake" (after a double space), so it never matches them.
        names = [name.strip() for name in line.split(",") if name.strip()]
        for name in names:
            synonyms.setdefault(name.lower(), names[0])
    rewrites: dict[str, str] = {}
    drops: dict[str, str] = {}
    for line in _read_rules(data.joinpath("coco_double_words.txt").read_text(encoding="utf-8")):
        if line.startswith("-"):
            word, _, other = line[1:].partition(" if ")
            drops[word.strip()] = other.strip()
        else:
            phrase, _, word = line.partition("=>")
            rewrites[phrase.strip()] = (word or phrase).strip()
    return Vocabulary(synonyms, rewrites=rewrites, drops=drops, name="coco")


SCENE_VOCABULARY: Mapping[str, str] = MappingProxyType({name: name for name in OBJECT_NAMES})
"""The objects of povidgen's demo scenes (:mod:`povidgen.sources.demo`), each its own
category: ``chair(captions, [scene.names() for scene in scenes], vocabulary=SCENE_VOCABULARY)``
scores scene captions exactly. (Under :meth:`Vocabulary.coco` "ball" is a "sports ball" and
colour words such as "orange" are COCO objects.)"""
