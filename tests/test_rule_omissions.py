"""The rule hallucinator's omissions: descriptions whose rejected answer leaves a listed object
out (``RuleHallucinator(omissions=...)``, :attr:`EditKind.OMISSION`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from povidgen import PairBuilder
from povidgen.hallucinate.rule import RuleHallucinator
from povidgen.registry import get_hallucinator
from povidgen.schema import INJECTED_KINDS, Edit, EditKind, Example, Hallucination

_IMAGE = Image.new("RGB", (8, 8), "white")
DESCRIBE = "Describe the image."


def omit(answer: str, *, prompt: str = DESCRIBE, seed: int = 0, **kwargs: Any) -> Hallucination:
    hallucinator = RuleHallucinator(omissions=kwargs.pop("omissions", 1.0), **kwargs)
    return hallucinator.hallucinate(
        Example(id="ex-1", image=_IMAGE, prompt=prompt, answer=answer, seed=seed)
    )


def undo(result: Hallucination) -> str:
    text = result.rejected
    for edit in sorted(result.edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.original + text[edit.end :]
    return text


def test_a_middle_item_goes_with_the_comma_before_it() -> None:
    answer = "A man is riding a horse next to a dog, a cat and two sheep."
    # Three candidates ("a cat", "two sheep"; "a dog" opens the list): every seed leaves
    # exactly one of them out, with its join, and the joins left read right.
    seen = {omit(answer, seed=seed).rejected for seed in range(12)}
    assert seen == {
        "A man is riding a horse next to a dog and two sheep.",
        "A man is riding a horse next to a dog and a cat.",
    }


def test_the_last_item_hands_its_and_to_the_one_before() -> None:
    answer = "A man is riding a horse next to a dog, a cat and two sheep."
    for seed in range(12):
        result = omit(answer, seed=seed)
        if result.rejected.endswith("a dog and a cat."):
            (edit,) = result.edits
            assert edit == Edit(
                kind=EditKind.OMISSION,
                original=", a cat and two sheep",
                injected=" and a cat",
                start=len("A man is riding a horse next to a dog"),
                end=len("A man is riding a horse next to a dog and a cat"),
            )
            assert undo(result) == answer
            return
    pytest.fail("no seed left out the last item")


def test_a_serial_comma_goes_when_two_items_are_left() -> None:
    result = omit("There are three cups, two books, and a clock on the table.")
    assert result.rejected == "There are three cups and a clock on the table."
    (edit,) = result.edits
    assert (edit.original, edit.injected) == (", two books, and ", " and ")
    assert undo(result) == "There are three cups, two books, and a clock on the table."


def test_an_item_named_in_no_other_sentence_is_preferred_and_the_edit_is_empty() -> None:
    answer = (
        "The image shows two yellow umbrellas at the top, a blue ball on the left and a green "
        "kite in the center. The kite is below the umbrellas."
    )
    for seed in range(6):
        result = omit(answer, seed=seed)
        assert result.rejected == (
            "The image shows two yellow umbrellas at the top and a green kite in the center. "
            "The kite is below the umbrellas."
        )
        (edit,) = result.edits
        at = len("The image shows two yellow umbrellas at the top")
        assert edit == Edit(
            kind=EditKind.OMISSION,
            original=", a blue ball on the left",
            injected="",
            start=at,
            end=at,
        )
        assert undo(result) == answer


def test_other_sentences_that_name_the_object_go_too() -> None:
    answer = (
        "The image shows five blue apples on the right and two green cups in the center. "
        "The apples are to the right of the cups."
    )
    result = omit(answer)
    assert result.rejected == "The image shows five blue apples on the right."
    assert [(e.original, e.injected) for e in result.edits] == [
        (" and two green cups in the center", ""),
        (" The apples are to the right of the cups.", ""),
    ]
    assert all(e.kind is EditKind.OMISSION for e in result.edits)
    assert undo(result) == answer


@pytest.mark.parametrize(
    "answer",
    [
        "On the left, a cat sits on a mat.",  # one item after a comma: no list
        "A red bus is parked on the street.",  # no list at all
        "The image shows a dog, a big dog and a small dog.",  # the object is named around it
    ],
)
def test_without_a_list_item_to_leave_out_errors_are_injected_as_before(answer: str) -> None:
    result = omit(answer)
    plain = RuleHallucinator().hallucinate(
        Example(id="ex-1", image=_IMAGE, prompt=DESCRIBE, answer=answer, seed=0)
    )
    assert result == plain
    assert all(e.kind is not EditKind.OMISSION for e in result.edits)


def test_a_question_is_answered_with_injected_errors_not_an_omission() -> None:
    answer = "There are two cups and a book."
    result = omit(answer, prompt="How many cups are there?")
    assert all(e.kind is not EditKind.OMISSION for e in result.edits)
    assert result.rejected != answer


def test_omissions_zero_changes_nothing_not_even_the_parameters() -> None:
    answer = "A man is riding a horse next to a dog, a cat and two sheep."
    example = Example(id="ex-1", image=_IMAGE, prompt=DESCRIBE, answer=answer, seed=3)
    assert RuleHallucinator(omissions=0).hallucinate(example) == (
        RuleHallucinator().hallucinate(example)
    )
    assert "omissions" not in RuleHallucinator().params()
    assert RuleHallucinator(omissions=0.25).params()["omissions"] == 0.25
    assert RuleHallucinator(omissions=0.25).omissions == 0.25


def test_the_share_of_descriptions_left_incomplete_follows_omissions() -> None:
    hallucinator = RuleHallucinator(omissions=0.3)
    answer = "The table holds a cup, a book and a clock."
    results = [
        hallucinator.hallucinate(
            Example(id=f"row-{i}", image=_IMAGE, prompt=DESCRIBE, answer=answer, seed=0)
        )
        for i in range(400)
    ]
    share = sum(r.edits[0].kind is EditKind.OMISSION for r in results) / len(results)
    assert 0.23 < share < 0.37  # 0.3 drawn per row: 0.3 +- 3.1 standard deviations of 400


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.5", None, float("nan")])
def test_a_bad_share_is_a_clear_error(value: Any) -> None:
    with pytest.raises(ValueError, match="omissions must be a number from 0 to 1"):
        RuleHallucinator(omissions=value)


def test_omission_is_no_kind_to_inject() -> None:
    with pytest.raises(ValueError, match="omissions=SHARE"):
        RuleHallucinator(kinds=["object", "omission"])
    assert RuleHallucinator().kinds == frozenset(INJECTED_KINDS)
    assert EditKind.OMISSION not in INJECTED_KINDS


def test_only_an_omission_may_inject_nothing() -> None:
    with pytest.raises(ValidationError, match="must inject some text"):
        Edit(kind=EditKind.OBJECT, original="cat", injected="", start=0, end=0)
    with pytest.raises(ValidationError, match="must name what it left out"):
        Edit(kind=EditKind.OMISSION, original="", injected="", start=0, end=0)
    edit = Edit(kind=EditKind.OMISSION, original=" and a cat", injected="", start=5, end=5)
    assert Hallucination(rejected="A dog.", edits=[edit]).edits == [edit]


_NOUNS = ["cup", "book", "clock", "kite", "umbrella", "bottle", "dog", "cat"]


@settings(max_examples=60, deadline=None)
@given(
    nouns=st.lists(st.sampled_from(_NOUNS), min_size=2, max_size=5, unique=True),
    serial=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_any_list_loses_exactly_one_object_and_the_edits_undo(
    nouns: list[str], serial: bool, seed: int
) -> None:
    items = [f"a {noun}" for noun in nouns]
    joined = items[0] if len(items) == 1 else ", ".join(items[:-1])
    joined += (", and " if serial and len(items) > 2 else " and ") + items[-1]
    answer = f"The image shows {joined}."
    result = omit(answer, seed=seed)
    missing = [n for n in nouns if f"a {n}" not in result.rejected]
    assert len(missing) == 1
    assert missing[0] != nouns[0]
    assert undo(result) == answer
    assert ",," not in result.rejected
    if len(nouns) == 3:  # two items left: "A and B", never "A, and B"
        assert ", and" not in result.rejected
    assert "and and" not in result.rejected
    assert result.rejected.startswith("The image shows a ")
    assert result.rejected.endswith(".")


def test_the_build_option_reaches_the_pairs_and_their_edits(tmp_path: Path) -> None:
    answers = ["A cup, a book and a clock are on the table.", "How nice: a red bus."]
    rows = datasets.Dataset.from_dict(
        {
            "id": ["r0", "r1"],
            "image": [_IMAGE, _IMAGE],
            "prompt": [DESCRIBE, DESCRIBE],
            "answer": answers,
        }
    )
    builder = PairBuilder.from_dataset(
        rows, id_column="id", hallucinator=get_hallucinator("rule", omissions=1.0), seed=0
    )
    pairs = builder.build(tmp_path / "pairs")
    assert not builder.errors
    kinds = {row["id"]: [e["kind"] for e in row["provenance"]["edits"]] for row in pairs}
    assert kinds["r0"] == ["omission"]
    assert "omission" not in kinds["r1"]
    assert kinds["r1"]
    (r0,) = [row for row in pairs if row["id"] == "r0"]
    assert json.loads(r0["provenance"]["hallucinator_params"])["omissions"] == 1.0
