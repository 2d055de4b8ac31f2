"""Tests for :class:`povidgen.hallucinate.rule.RuleHallucinator`, the offline hallucinator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from povidgen.errors import HallucinationError
from povidgen.hallucinate.rule import RuleHallucinator
from povidgen.schema import INJECTED_KINDS, Edit, EditKind, Example, Hallucination

_IMAGE = Image.new("RGB", (8, 8))

DEMO_ANSWERS = [
    "The image shows two red apples on the left and a blue book on the right. "
    "The apples are above the book.",
    "There are three green balls.",
    "The kite is yellow.",
    "The cup is at the top of the image.",
    "Yes, there is a clock in the image.",
]
COLOURS = {
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "brown",
    "gray", "grey", "silver", "gold", "golden", "beige", "turquoise",
}  # fmt: skip
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
]  # fmt: skip


def _json(name: str) -> dict[str, Any]:
    path = resources.files("povidgen.hallucinate").joinpath("data", name)
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


TABLE = _json("cooccurrence.json")
OBJECTS: dict[str, Any] = TABLE["objects"]
SINGULARS = {o.get("singular", name) for name, o in OBJECTS.items()}
PLURALS = {o["plural"] for o in OBJECTS.values()}


def example(answer: str, *, seed: int = 0, id: str = "ex-1") -> Example:
    return Example(id=id, image=_IMAGE, prompt="Describe the image.", answer=answer, seed=seed)


def run(answer: str, *, seed: int = 0, id: str = "ex-1", **kwargs: Any) -> Hallucination:
    return RuleHallucinator(**kwargs).hallucinate(example(answer, seed=seed, id=id))


def one_edit(answer: str, kinds: Collection[str], *, seed: int = 0) -> tuple[Hallucination, Edit]:
    result = run(answer, seed=seed, kinds=kinds, min_edits=1, max_edits=1)
    assert len(result.edits) == 1
    return result, result.edits[0]


def undo(result: Hallucination) -> str:
    """The rejected answer with every edit put back: the original answer, for replacements."""
    text = result.rejected
    for edit in sorted(result.edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.original + text[edit.end :]
    return text


def check_exact(answer: str, result: Hallucination) -> None:
    assert result.rejected != answer
    for edit in result.edits:
        assert result.rejected[edit.start : edit.end] == edit.injected
        assert edit.original != edit.injected
    if all(edit.original for edit in result.edits):
        assert undo(result) == answer


# --- shipped data ------------------------------------------------------------------------------


def test_cooccurrence_table_is_consistent() -> None:
    assert len(OBJECTS) >= 80
    assert "hand-curated" in TABLE["note"].lower()
    assert "not computed from coco" in TABLE["note"].lower()
    for name in ("apple", "ball", "book", "cup", "clock", "kite", "umbrella", "bottle"):
        assert name in OBJECTS
    for name, entry in OBJECTS.items():
        cooccurs = entry["cooccurs"]
        assert 5 <= len(cooccurs) <= 10, name
        assert len(set(cooccurs)) == len(cooccurs), name
        assert name not in cooccurs
        assert all(other in OBJECTS for other in cooccurs), name


def test_lexicon_swaps_always_change_the_word() -> None:
    lexicon = _json("lexicon.json")
    for section in ("attributes", "spatial", "relations", "negations"):
        for word, options in lexicon[section].items():
            assert options, word
            assert word == word.lower()
            assert all(option != word for option in options), word


# --- one kind at a time ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_colour_becomes_another_colour(seed: int) -> None:
    result, edit = one_edit("The kite is yellow.", ["attribute"], seed=seed)
    assert edit.kind is EditKind.ATTRIBUTE
    assert edit.original == "yellow"
    assert edit.injected in COLOURS - {"yellow"}
    assert result.rejected == f"The kite is {edit.injected}."


@pytest.mark.parametrize("seed", range(5))
def test_count_word_becomes_another_plural_count(seed: int) -> None:
    result, edit = one_edit("There are three green balls.", ["count"], seed=seed)
    assert edit.kind is EditKind.COUNT
    assert edit.original == "three"
    assert edit.injected in NUMBER_WORDS[2:]
    assert edit.injected != "three"
    assert result.rejected == f"There are {edit.injected} green balls."


@pytest.mark.parametrize("seed", range(8))
def test_the_fruit_before_a_verb_is_not_read_as_a_colour(seed: int) -> None:
    result = run("Two apples and one orange sit on the table.", seed=seed)
    assert all(edit.original != "orange" or edit.kind is not EditKind.ATTRIBUTE
               for edit in result.edits)  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    "answer",
    [
        "Two orange buses are parked near the station.",
        "There are three orange trees.",
        "Three apple pies sit on a plate.",
        "One orange bus is parked.",
    ],
)
def test_a_noun_that_modifies_the_next_word_is_not_inflected_for_a_new_count(
    answer: str, seed: int
) -> None:
    # "orange" and "apple" are nouns, but here they describe the word after them
    try:
        result = run(answer, seed=seed)
    except HallucinationError:
        return  # refused is honest; "four oranges buses" is not
    assert "oranges bus" not in result.rejected
    assert "oranges trees" not in result.rejected
    assert "apples pies" not in result.rejected
    check_exact(answer, result)


@pytest.mark.parametrize("seed", range(5))
def test_count_digit_stays_a_digit(seed: int) -> None:
    result, edit = one_edit("There are 12 cars parked.", ["count"], seed=seed)
    assert edit.original == "12"
    assert edit.injected.isdigit()
    assert int(edit.injected) >= 2
    assert int(edit.injected) != 12
    check_exact("There are 12 cars parked.", result)


def test_articles_are_not_counts_but_one_before_a_known_noun_is() -> None:
    with pytest.raises(HallucinationError, match="nothing"):
        run("There is a cat and a dog.", kinds=["count"])
    # "one" before a known noun becomes a larger number, and the noun and verb agree.
    for seed in range(5):
        result, edit = one_edit("There is one cat and a dog.", ["count"], seed=seed)
        number = edit.injected.split()[1]
        assert number in NUMBER_WORDS[2:]
        assert result.rejected == f"There are {number} cats and a dog."
        assert edit.original == "is one cat"


@pytest.mark.parametrize(
    ("answer", "original", "allowed"),
    [
        (
            "The cup is at the top of the image.",
            "at the top",
            {"at the bottom", "on the left", "on the right", "in the center"},
        ),
        ("The cup is on top of the box.", "on top of", {"underneath", "beneath"}),
        ("The ball is in front of the box.", "in front of", {"behind"}),
        ("Left of the ball is a box.", "Left", {"Right"}),
        ("The lamp hangs above the box.", "above", {"below", "beneath"}),
    ],
)
def test_spatial_terms_flip(answer: str, original: str, allowed: set[str]) -> None:
    result, edit = one_edit(answer, ["spatial"])
    assert edit.kind is EditKind.SPATIAL
    assert (edit.original, edit.injected in allowed) == (original, True)
    check_exact(answer, result)


def test_relation_is_swapped() -> None:
    result, edit = one_edit("A man is holding a kite.", ["relation"])
    assert edit.kind is EditKind.RELATION
    assert edit.original == "holding"
    assert edit.injected in {"throwing", "dropping"}
    check_exact("A man is holding a kite.", result)


def test_multi_word_relation_wins_over_its_first_word() -> None:
    result, edit = one_edit("The cat is sitting on the mat.", ["relation"])
    assert edit.original == "sitting on"
    assert edit.injected in {"standing next to", "lying under"}
    check_exact("The cat is sitting on the mat.", result)


@pytest.mark.parametrize("seed", range(5))
def test_quoted_text_is_replaced_in_the_same_style(seed: int) -> None:
    answer = 'The red sign says "STOP" in white letters.'
    result, edit = one_edit(answer, ["text"], seed=seed)
    assert edit.kind is EditKind.TEXT
    assert edit.original == "STOP"
    assert edit.injected == edit.injected.upper()
    assert edit.injected != "STOP"
    assert result.rejected == f'The red sign says "{edit.injected}" in white letters.'


def test_lower_case_quoted_text_stays_lower_case() -> None:
    _, edit = one_edit("A door marked 'exit' is open.", ["text"])
    assert edit.original == "exit"
    assert edit.injected == edit.injected.lower()


def test_leading_yes_flips_to_no_and_the_rest_follows() -> None:
    # Without a question, a yes/no answer that says "there is ..." is read as the answer to
    # "Is there a clock?": the flip says the clock is absent instead of "No, there is a clock".
    result, edit = one_edit("Yes, there is a clock in the image.", ["reasoning"])
    assert edit.kind is EditKind.REASONING
    assert result.rejected == "No, there is no clock in the image."


def test_negation_is_dropped() -> None:
    result, edit = one_edit("The cat is not sleeping.", ["reasoning"])
    assert (edit.original, edit.injected) == ("is not", "is")
    assert result.rejected == "The cat is sleeping."


# --- objects -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_plural_object_becomes_an_absent_plural_cooccurring_object(seed: int) -> None:
    answer = "The image shows two red apples."
    result, edit = one_edit(answer, ["object"], seed=seed)
    assert edit.kind is EditKind.OBJECT
    assert edit.original == "apples"
    assert edit.injected in {OBJECTS[name]["plural"] for name in OBJECTS["apple"]["cooccurs"]}
    assert result.rejected == f"The image shows two red {edit.injected}."


def test_article_follows_the_new_object() -> None:
    outcomes: dict[str, str] = {}
    for seed in range(40):
        result, edit = one_edit("There is an apple.", ["object"], seed=seed)
        check_exact("There is an apple.", result)
        noun = result.rejected.removeprefix("There is ").removesuffix(".").split(" ", 1)
        assert noun[0] == ("an" if noun[1][0] in "aeiou" else "a")
        outcomes[edit.original] = edit.injected
    # A consonant-initial object changes the article, so the edit covers it; a vowel one not.
    assert outcomes.get("an apple", "").startswith("a ")
    assert outcomes.get("apple") == "orange"


def test_capital_article_and_noun_keep_their_case() -> None:
    for seed in range(10):
        result, _ = one_edit("An apple lies there.", ["object"], seed=seed)
        article, noun = result.rejected.split(" ")[:2]
        assert article in ("A", "An")
        assert noun.islower()
        _, edit = one_edit("Apples lie there.", ["object"], seed=seed)
        assert edit.original == "Apples"
        assert edit.injected[0].isupper()
        assert edit.injected[1:].islower()
        _, edit = one_edit("The ball is on the LEFT.", ["spatial"], seed=seed)
        assert edit.original == "on the LEFT"
        assert edit.injected.split()[-1] in {"RIGHT", "TOP", "BOTTOM", "CENTER"}
        assert edit.injected.split()[0].islower()
        _, edit = one_edit("The ball is LEFT of the box.", ["spatial"], seed=seed)
        assert edit.injected == "RIGHT"


@pytest.mark.parametrize(
    ("answer", "original"),
    [
        ("Two people are walking.", "people"),
        ("Three buses are parked.", "buses"),
        ("The knives are sharp.", "knives"),
        ("A teddy bear is here.", "teddy bear"),
        ("The dining table is long.", "dining table"),
        ("The traffic light is lit.", "traffic light"),
    ],
)
def test_irregular_and_multi_word_objects(answer: str, original: str) -> None:
    result, edit = one_edit(answer, ["object"])
    assert edit.original.removeprefix("A ").lower() == original
    injected = edit.injected.removeprefix("An ").removeprefix("A ").lower()
    plural = original in PLURALS
    assert injected in (PLURALS if plural else SINGULARS)
    check_exact(answer, result)


def test_new_object_is_not_mentioned_anywhere_in_the_answer() -> None:
    answer = "A cup, a bowl and a spoon are on the dining table next to a fork."
    present = {"cup", "bowl", "spoon", "dining table", "fork"}
    for seed in range(20):
        result = run(answer, seed=seed, kinds=["object"], min_edits=3, max_edits=3)
        assert len(result.edits) == 3
        injected = [e.injected.split(" ", 1)[-1] if e.injected.startswith(("a ", "an ")) else
                    e.injected for e in result.edits]  # fmt: skip
        assert not present & set(injected)
        assert len(set(injected)) == 3  # never the same absent object twice
        check_exact(answer, result)


def test_negated_objects_are_left_alone() -> None:
    # Swapping "kite" in "there is no kite" would leave a true statement.
    with pytest.raises(HallucinationError, match="nothing in the answer"):
        run("No, there is no kite in the image.", kinds=["object"])
    result = run("There is no kite, but a dog runs.", kinds=["object"])
    assert result.rejected.startswith("There is no kite, but ")
    # With the reasoning kind the conclusion flips and the kite gets a place.
    result = run("No, there is no kite in the image.")
    assert result.rejected.startswith("Yes, there is a kite ")
    assert result.rejected.endswith(" of the image.")


# --- "orange" ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "colour_words"),
    [
        ("An orange cat sits next to an orange.", ["An orange"]),
        ("The kite is orange.", ["orange"]),
        ("It is orange and white.", ["orange", "white"]),
        ("The ball is red and orange.", ["red", "orange"]),
    ],
)
def test_orange_as_a_colour(answer: str, colour_words: list[str]) -> None:
    for seed in range(3):
        result = run(answer, seed=seed, kinds=["attribute"], min_edits=3, max_edits=3)
        # Only the colour uses can be edited: "An orange" loses its article when the new
        # colour starts with a consonant, so compare on the last word.
        originals = [e.original.split(" ")[-1] for e in result.edits]
        assert originals == [w.split(" ")[-1] for w in colour_words]
        for edit in result.edits:
            assert edit.injected.split(" ")[-1].lower() in COLOURS
        check_exact(answer, result)


@pytest.mark.parametrize(
    "answer", ["There is an orange on the plate.", "Two oranges.", "I see an orange."]
)
def test_orange_as_a_fruit(answer: str) -> None:
    result, edit = one_edit(answer, ["object"])
    assert edit.original.lower().endswith(("orange", "oranges"))
    assert edit.injected.removeprefix("an ").removeprefix("a ") in SINGULARS | PLURALS
    check_exact(answer, result)
    with pytest.raises(HallucinationError):
        run(answer, kinds=["attribute"])


# --- several edits, determinism ----------------------------------------------------------------


@pytest.mark.parametrize("answer", DEMO_ANSWERS)
def test_demo_answers_get_two_or_more_contradicting_edits(answer: str) -> None:
    for i in range(15):
        result = run(answer, id=f"demo-{i}")
        # A flipped yes/no answer may be one edit: "No, there is no clock in the image."
        assert (1 if answer.startswith("Yes") else 2) <= len(result.edits) <= 3
        check_exact(answer, result)
        for edit in result.edits:
            if edit.kind is EditKind.OBJECT:
                assert edit.injected.split(" ")[-1].lower() not in answer.lower()
            if edit.kind is EditKind.ATTRIBUTE:
                assert edit.original.lower() in COLOURS
                assert edit.injected.lower() in COLOURS - {edit.original.lower()}
            if edit.kind is EditKind.COUNT:
                assert edit.injected != edit.original


def test_edits_use_different_kinds_first() -> None:
    answer = "There are three green balls."
    for i in range(10):
        result = run(answer, id=f"div-{i}", min_edits=3, max_edits=3)
        assert {e.kind for e in result.edits} == {
            EditKind.COUNT,
            EditKind.ATTRIBUTE,
            EditKind.OBJECT,
        }


def test_same_seed_and_id_give_the_same_result() -> None:
    for answer in DEMO_ANSWERS:
        assert run(answer, seed=7, id="a") == run(answer, seed=7, id="a")


def test_other_seeds_and_ids_give_other_results() -> None:
    by_seed = [tuple(run(a, seed=s).rejected for a in DEMO_ANSWERS) for s in range(4)]
    assert len(set(by_seed)) == 4
    by_id = [tuple(run(a, id=f"id-{i}").rejected for a in DEMO_ANSWERS) for i in range(4)]
    assert len(set(by_id)) == 4


def test_fewer_candidates_than_min_edits_uses_what_there_is() -> None:
    result = run("The kite is yellow.", kinds=["attribute"], min_edits=2, max_edits=2)
    assert len(result.edits) == 1


# --- nothing to change ------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["Hello there. Goodbye.", "good morning", "It is."])
def test_nothing_to_change_is_an_error_not_boilerplate(answer: str) -> None:
    with pytest.raises(HallucinationError, match="nothing in the answer can be changed") as info:
        run(answer)
    assert "baseball" not in str(info.value)


def test_no_absent_object_left_is_an_error() -> None:
    every = ", ".join(o["plural"] for o in OBJECTS.values())
    with pytest.raises(HallucinationError, match="every object"):
        run(every, kinds=["object"])


def test_kinds_that_cover_nothing_are_named() -> None:
    with pytest.raises(HallucinationError, match=r"allowed kinds \['count', 'spatial'\]"):
        run("Hello there, a dog.", kinds=["count", "spatial"])


# --- constructor, params, entry points ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_edits": 0}, "min_edits"),
        ({"min_edits": True}, "min_edits"),
        ({"min_edits": 2.0}, "min_edits"),
        ({"min_edits": 3, "max_edits": 2}, "max_edits"),
        ({"kinds": []}, "at least one"),
        ({"kinds": ["object", "bogus"]}, "bogus"),
        ({"kinds": "object"}, "collection"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuleHallucinator(**kwargs)


def test_params_and_repr() -> None:
    hallucinator = RuleHallucinator(min_edits=1, max_edits=4, kinds=[EditKind.COUNT, "Object"])
    params = hallucinator.params()
    assert params["min_edits"] == 1
    assert params["max_edits"] == 4
    assert params["kinds"] == ["count", "object"]
    assert params["table_version"] == TABLE["version"]
    assert json.loads(json.dumps(params)) == params
    assert RuleHallucinator().params()["kinds"] == sorted(k.value for k in INJECTED_KINDS)
    assert RuleHallucinator.name == "rule"
    assert repr(hallucinator).startswith("RuleHallucinator(min_edits=1")


def test_async_and_many() -> None:
    hallucinator = RuleHallucinator()
    examples = [example(a, id=f"m-{i}") for i, a in enumerate(DEMO_ANSWERS)]
    many = hallucinator.hallucinate_many(examples, concurrency=2)
    singles = [hallucinator.hallucinate(e) for e in examples]
    awaited = [asyncio.run(hallucinator.ahallucinate(e)) for e in examples]
    assert many == singles == awaited


# --- properties --------------------------------------------------------------------------------

_VOCABULARY = [
    "a", "an", "A", "An", "the", "The", "two", "Three", "12", "1", "apple", "apples", "orange",
    "oranges", "red", "Orange", "left", "LEFT", "in front of", "is", "not", "no", "Yes,", "No.",
    "holding", "sitting on", "teddy bear", "sheep", "people", '"STOP"', "'exit'", "and", ",",
    ".", "!", "\n", "  ", "é", "\u0130", "\u017f", "ß", "\u212a",
]  # fmt: skip


def _check_property(answer: str) -> None:
    try:
        result = run(answer, id="prop")
    except HallucinationError:
        return
    check_exact(answer, result)
    assert result.rejected.strip()


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=200).filter(lambda s: bool(s.strip())))
def test_any_text_gives_a_valid_hallucination_or_a_hallucination_error(answer: str) -> None:
    _check_property(answer)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_VOCABULARY), min_size=1, max_size=25).map(" ".join))
def test_vocabulary_soup_gives_a_valid_hallucination(answer: str) -> None:
    if answer.strip():
        _check_property(answer)
