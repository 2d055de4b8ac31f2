"""The data model's validation, and the seed derivation."""

from __future__ import annotations

import pytest
from PIL import Image
from pydantic import ValidationError

from povidgen import (
    Edit,
    EditKind,
    Example,
    Hallucination,
    MissingColumnError,
    PreferencePair,
    Provenance,
    derive_seed,
)

IMAGE = Image.new("RGB", (4, 4))


def test_edit_span_must_match_injected_length() -> None:
    Edit(kind="count", original="two", injected="three", start=4, end=9)
    with pytest.raises(ValidationError, match="length"):
        Edit(kind="count", original="two", injected="three", start=4, end=8)
    with pytest.raises(ValidationError, match="does not change"):
        Edit(kind="count", original="two", injected="two", start=0, end=3)
    with pytest.raises(ValidationError):
        Edit(kind="colour", original="a", injected="b", start=0, end=1)  # type: ignore[arg-type]


def test_hallucination_spans_point_at_their_text() -> None:
    rejected = "There are three blue apples."
    edits = [
        Edit(kind=EditKind.COUNT, original="two", injected="three", start=10, end=15),
        Edit(kind=EditKind.ATTRIBUTE, original="red", injected="blue", start=16, end=20),
    ]
    assert Hallucination(rejected=rejected, edits=edits).edits == edits
    wrong = Edit(kind=EditKind.ATTRIBUTE, original="red", injected="blue", start=15, end=19)
    with pytest.raises(ValidationError, match="holds ' blu'"):
        Hallucination(rejected=rejected, edits=[wrong])
    past_end = Edit(kind=EditKind.OBJECT, original="", injected="dog", start=40, end=43)
    with pytest.raises(ValidationError, match="past the end"):
        Hallucination(rejected=rejected, edits=[past_end])
    with pytest.raises(ValidationError, match="empty"):
        Hallucination(rejected="   ", edits=[])


def test_overlapping_spans_are_refused() -> None:
    a = Edit(kind=EditKind.OBJECT, original="x", injected="abc", start=0, end=3)
    b = Edit(kind=EditKind.OBJECT, original="y", injected="cd", start=2, end=4)
    with pytest.raises(ValidationError, match="overlap"):
        Hallucination(rejected="abcd", edits=[a, b])


def test_examples_need_text() -> None:
    Example(id="a", image=IMAGE, prompt="q", answer="a")
    for field in ("prompt", "answer"):
        with pytest.raises(ValidationError, match="empty"):
            Example(**{"id": "a", "image": IMAGE, "prompt": "q", "answer": "a", field: " \n"})
    with pytest.raises(ValidationError):
        Example(id="", image=IMAGE, prompt="q", answer="a")
    with pytest.raises(ValidationError, match="extra"):
        Example(id="a", image=IMAGE, prompt="q", answer="a", extra=1)  # type: ignore[call-arg]


def test_a_pair_must_differ() -> None:
    provenance = Provenance(
        hallucinator="rule",
        hallucinator_params={},
        distorter=None,
        distorter_params=None,
        seed=0,
        example_seed=1,
        edits=[],
        povidgen_version="0",
    )
    common = {"id": "a", "image": IMAGE, "prompt": "q", "provenance": provenance}
    PreferencePair(chosen="a cat", rejected="a dog", **common)
    with pytest.raises(ValidationError, match="identical"):
        PreferencePair(chosen="a cat", rejected="a cat ", **common)


def test_derive_seed_is_stable_and_spread() -> None:
    # pinned: a change here silently changes every published dataset
    assert derive_seed(0, "demo-0000") == derive_seed(0, "demo-0000")
    assert derive_seed(0, "a") == 1481238324449861677
    assert derive_seed(0, "a") != derive_seed(1, "a")
    assert derive_seed(0, "a") != derive_seed(0, "b")
    assert 0 <= derive_seed(2**70, "x") < 2**63


def test_missing_column_error_lists_the_columns() -> None:
    error = MissingColumnError("prompt", "question", ["image", "answer"])
    assert "'question'" in str(error)
    assert "'answer', 'image'" in str(error)
    assert isinstance(error, ValueError)
