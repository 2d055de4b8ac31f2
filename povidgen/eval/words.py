"""Words of a caption: tokens, and English nouns made singular, with no corpus to download.

CHAIR's reference implementation lower-cases a caption, tokenises it with NLTK and makes every
token singular (``pattern.en.singularize``; later copies use NLTK's WordNet lemmatiser). Both
need downloads, so povidgen makes nouns singular with its own rules: the regular English
plurals (``-s``, ``-es``, ``-ies``), the irregular ones that object words have (``people``,
``children``, ``mice``, ``knives``, ``geese``, ``oxen``, ``-men``), and the words that end in
*s* and are singular already (``bus``, ``glass``, ``tennis``, ``scissors``, ``species``).
The rules are written for the object words of :mod:`povidgen.eval` (COCO's synonym lists and
the demo scenes' names) and the words around them; a word they do not know is handled by the
regular rules.
"""

from __future__ import annotations

import re

__all__ = ["singularize", "tokenize"]

_TOKEN = re.compile(r"[^\W_]+")


def _set(words: str) -> frozenset[str]:
    """The whitespace-separated words of ``words``."""
    return frozenset(words.split())


# Plurals that no suffix rule gives.
_IRREGULAR: dict[str, str] = {
    "people": "person",
    "children": "child",
    "grandchildren": "grandchild",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "oxen": "ox",
    "lice": "louse",
    "dice": "die",
    "cacti": "cactus",
    "fungi": "fungus",
    "octopi": "octopus",
    "busses": "bus",
    "lenses": "lens",
    "gases": "gas",
    "canvases": "canvas",
    "quizzes": "quiz",
    "knives": "knife",
    "pocketknives": "pocketknife",
    "wives": "wife",
    "lives": "life",
    "leaves": "leaf",
    "loaves": "loaf",
    "halves": "half",
    "calves": "calf",
    "wolves": "wolf",
    "shelves": "shelf",
    "scarves": "scarf",
    "thieves": "thief",
    "elves": "elf",
    "selves": "self",
    "hooves": "hoof",
    "sheaves": "sheaf",
}

# Words that end in "s" and are singular (or the same in both numbers).
_UNINFLECTED = _set(
    """
    species series news scissors means headquarters crossroads barracks gallows mathematics
    physics economics politics athletics gymnastics measles diabetes rabies herpes mumps pants
    jeans shorts trousers pliers tongs clothes binoculars goggles sunglasses eyeglasses
    always perhaps yes thus plus towards afterwards besides across upstairs downstairs outdoors
    indoors sometimes nevertheless whereas its was has does is his this us as
    gas canvas atlas bias alias christmas texas pancreas alas overseas
    chaos cosmos kudos ethos pathos asbestos rhinoceros thermos
    lens iris pelvis trellis mantis axis dais chassis tennis penis clitoris metropolis
    """
)

# Plurals of nouns in "-u": the "-us" rule below would keep them whole.
_U_PLURALS = _set(
    "menus emus gnus gurus tutus haikus zebus tofus bayous caribous tiramisus sudokus kudus"
)

# Singular nouns in "-us" whose plural is "-uses" (others, like "houses", lose only the "s").
_US_NOUNS = _set(
    """
    bus minibus trolleybus omnibus airbus octopus cactus virus campus walrus circus bonus chorus
    genius platypus hippopotamus citrus fungus census abacus asparagus syllabus status
    """
)

# Singular nouns in "-ie": their plural "-ies" loses only the "s" ("ties", not "ty").
_IE_NOUNS = _set(
    """
    tie necktie bowtie pie lie die cookie movie brownie zombie hoodie goalie selfie smoothie
    rookie calorie hippie pixie veggie birdie budgie collie doggie magpie cowrie prairie genie
    beanie sweetie auntie bootie bookie walkie talkie foodie junkie newbie nightie oldie roomie
    sortie yuppie cutie lassie kiddie sheltie yorkie westie frenchie quickie techie eerie
    """
)

# Singular nouns in "-o" whose plural is "-oes" (others, like "shoes", lose only the "s").
_O_ES_NOUNS = _set(
    """
    tomato potato hero mango volcano mosquito echo torpedo buffalo domino tornado avocado veto
    cargo embargo
    """
)

# Singular nouns in "-che" (their plural "-ches" loses only the "s").
_CHE_NOUNS = _set(
    """
    niche cache headache ache moustache mustache avalanche cliche quiche creche microfiche
    douche psyche panache attache gouache
    """
)

# Endings of singular words ("glass", "bus", "famous", "analysis", "arthritis"). Other words in
# "-is" are plurals ("skis", "taxis") unless listed above ("tennis").
_SINGULAR_ENDINGS = ("ss", "us", "ous", "sis", "itis")

# "-men" words that are not plurals of "-man".
_MEN_WORDS = _set("specimen abdomen omen amen stamen semen hymen regimen acumen yemen")


def tokenize(text: str) -> list[str]:
    """The lower-cased words of ``text``: runs of letters and digits.

    Punctuation separates words, so ``"dog's"`` is ``["dog", "s"]`` (as NLTK's ``"dog",
    "'s"``) and a hyphen splits too (``"hot-dog"`` is ``["hot", "dog"]``).
    """
    return _TOKEN.findall(text.lower())


def singularize(word: str) -> str:
    """``word`` (lower case) as a singular noun: ``"dogs"`` -> ``"dog"``, ``"buses"`` ->
    ``"bus"``, ``"ponies"`` -> ``"pony"``, ``"ties"`` -> ``"tie"``, ``"knives"`` ->
    ``"knife"``, ``"people"`` -> ``"person"``, ``"policemen"`` -> ``"policeman"``.

    Singular words come back unchanged (``"bus"``, ``"glass"``, ``"tennis"``, ``"scissors"``,
    ``"sheep"``), and so does any word that is not a noun the rules recognise as plural.
    """
    w = word
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _UNINFLECTED or len(w) < 3:
        return w
    if w.endswith("men") and w not in _MEN_WORDS:
        return w[:-3] + "man"
    if not w.endswith("s"):
        return w
    if w in _U_PLURALS:
        return w[:-1]
    if w.endswith(_SINGULAR_ENDINGS):
        return w
    if w.endswith("ies"):
        if w[:-1] in _IE_NOUNS or len(w) <= 4:
            return w[:-1]
        return w[:-3] + "y"
    if w.endswith("oes"):
        return w[:-2] if w[:-2] in _O_ES_NOUNS else w[:-1]
    if w.endswith(("sses", "zzes", "xes", "shes")):
        return w[:-2]
    if w.endswith("ches"):
        return w[:-1] if w[:-1] in _CHE_NOUNS else w[:-2]
    if w.endswith("uses"):
        return w[:-2] if w[:-2] in _US_NOUNS or w.endswith("buses") else w[:-1]
    return w[:-1]
