"""povidgen.eval.words: tokens, and the singulariser CHAIR's matching relies on."""

from __future__ import annotations

import pytest

from povidgen.eval import Vocabulary, singularize
from povidgen.eval.words import tokenize

PLURALS = [
    # regular
    ("dogs", "dog"),
    ("cars", "car"),
    ("bananas", "banana"),
    ("pizzas", "pizza"),
    ("skis", "ski"),
    ("taxis", "taxi"),
    ("vases", "vase"),
    ("suitcases", "suitcase"),
    ("horses", "horse"),
    ("gloves", "glove"),
    ("stoves", "stove"),
    ("shoes", "shoe"),
    ("canoes", "canoe"),
    ("flamingos", "flamingo"),
    ("houses", "house"),
    ("headaches", "headache"),
    ("zebus", "zebu"),
    # -es after s, x, ch, sh, z
    ("buses", "bus"),
    ("minibuses", "minibus"),
    ("glasses", "glass"),
    ("boxes", "box"),
    ("benches", "bench"),
    ("sandwiches", "sandwich"),
    ("couches", "couch"),
    ("dishes", "dish"),
    ("buzzes", "buzz"),
    # -ies
    ("ponies", "pony"),
    ("puppies", "puppy"),
    ("lorries", "lorry"),
    ("ties", "tie"),
    ("cookies", "cookie"),
    ("magpies", "magpie"),
    ("collies", "collie"),
    # -oes
    ("tomatoes", "tomato"),
    ("buffaloes", "buffalo"),
    # irregular
    ("people", "person"),
    ("children", "child"),
    ("women", "woman"),
    ("men", "man"),
    ("policemen", "policeman"),
    ("mice", "mouse"),
    ("geese", "goose"),
    ("oxen", "ox"),
    ("knives", "knife"),
    ("calves", "calf"),
    ("wolves", "wolf"),
    ("teeth", "tooth"),
]

SINGULARS = [
    "bus",
    "glass",
    "tennis",
    "scissors",
    "species",
    "sheep",
    "cattle",
    "bison",
    "octopus",
    "famous",
    "analysis",
    "specimen",
    "dog",
    "tie",
    "is",
    "this",
    "was",
    "gas",
    "lens",
]


@pytest.mark.parametrize(("plural", "singular"), PLURALS)
def test_plurals_become_singular(plural: str, singular: str) -> None:
    assert singularize(plural) == singular


@pytest.mark.parametrize("word", SINGULARS)
def test_singular_words_stay(word: str) -> None:
    assert singularize(word) == word


def test_every_coco_synonym_keeps_its_category_in_the_plural() -> None:
    coco = Vocabulary.coco()
    for word, category in coco.synonyms.items():
        if " " in word:
            continue
        last = word[-1]
        plural = (
            word + "es"
            if word.endswith(("s", "x", "ch", "sh"))
            else word[:-1] + "ies"
            if last == "y" and word[-2] not in "aeiou"
            else word + "s"
        )
        if word in ("person", "child", "mouse", "goose", "ox", "sheep", "cattle", "scissors"):
            continue  # irregular or uninflected: tested above
        # ("doggies" is read as "doggie", "knives" as "knife": synonyms of the same category)
        assert [c for _, c in coco.mentions(f"two {plural}")] == [category], plural


def test_tokens_are_lower_case_letter_runs() -> None:
    assert tokenize("A Hot-Dog's bun, 2 CUPS!") == ["a", "hot", "dog", "s", "bun", "2", "cups"]
