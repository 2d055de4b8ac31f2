"""POPE: answers read as POPE's script reads them, figures by hand, questions per strategy."""

from __future__ import annotations

import pytest

from povidgen.eval import parse_yes_no, pope, pope_questions


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        ("Yes", True),
        ("Yes, there is a dog in the image.", True),
        ("No", False),
        ("No, there is no dog.", False),
        ("no.", False),
        ("There is not a dog.", False),
        ("There is no dog in the image.", False),
        ("Yes. It is not a cat though.", True),  # only the first sentence counts
        ("I see a dog, no doubt", False),
        ("Nope", True),  # POPE's rule: only the words "No", "no" and "not" mean no
        ("NO", True),  # ...case-sensitively
        ("", True),
        ("No\nthere is none", False),  # povidgen splits at any whitespace
    ],
)
def test_answers_are_read_as_pope_reads_them(answer: str, yes: bool) -> None:
    assert parse_yes_no(answer) is yes


def test_pope_by_hand() -> None:
    answers = [
        "Yes, there is.",  # yes, label yes: TP
        "yes",  # TP
        "No.",  # no, label yes: FN
        "Yes. It is not clear.",  # yes (first sentence), label no: FP
        "There is no dog.",  # TN
        "I do not think so",  # TN
    ]
    labels = [True, "yes", "YES", False, "no", "No"]
    result = pope(answers, labels)
    assert (result.tp, result.fn, result.fp, result.tn) == (2, 1, 1, 2)
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.f1 == pytest.approx(2 / 3)
    assert result.yes_ratio == pytest.approx(3 / 6)
    assert result.predictions == (True, True, False, True, False, False)
    assert result.n == 6
    assert result.to_dict()["answers"][3] == {
        "answer": "Yes. It is not clear.",
        "predicted": True,
        "label": False,
    }


def test_a_model_that_always_says_yes() -> None:
    result = pope(["Yes"] * 4, [True, True, False, False])
    assert (result.accuracy, result.precision, result.recall, result.yes_ratio) == (
        0.5,
        0.5,
        1.0,
        1.0,
    )
    assert result.f1 == pytest.approx(2 / 3)
    nothing = pope(["No"] * 2, [True, False])  # no yes at all: precision and F1 are 0
    assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)


def test_groups_resample_images() -> None:
    answers = ["Yes", "No", "Yes", "Yes", "No", "No"] * 4
    labels = [True, False, False, True, True, False] * 4
    groups = [i // 2 for i in range(24)]
    by_image = pope(answers, labels, groups=groups, seed=1)
    by_answer = pope(answers, labels, seed=1)
    assert by_image.figures() == by_answer.figures()
    assert by_image.intervals != by_answer.intervals
    for name, value in by_image.figures().items():
        assert by_image.intervals[name].covers(value)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="a bool or 'yes'/'no'"):
        pope(["Yes"], ["maybe"])
    with pytest.raises(ValueError, match="1 answers but 2 labels"):
        pope(["Yes"], [True, False])
    with pytest.raises(ValueError, match="no answers"):
        pope([], [])


# annotations for the strategies: popularity car 4, bus 3, dog 3, cat 2; dog goes with cat
OBJECTS = [
    ["dog", "cat"],
    ["dog", "cat"],
    ["car", "bus"],
    ["car", "bus"],
    ["car", "bus"],
    ["dog"],
    ["car"],
    [],
]


def negatives(questions: list, image: int) -> list[str]:
    return [q.object for q in questions if q.image_index == image and not q.label]


def test_popular_asks_about_the_most_frequent_absent_objects() -> None:
    questions = pope_questions(OBJECTS, strategy="popular")
    assert negatives(questions, 5) == ["car"]  # the most frequent object not in image 5
    assert negatives(questions, 6) == ["bus"]  # bus and dog tie (3 images); by name
    assert negatives(questions, 0) == ["car", "bus"]


def test_adversarial_asks_about_absent_objects_that_go_with_present_ones() -> None:
    questions = pope_questions(OBJECTS, strategy="adversarial")
    assert negatives(questions, 5) == ["cat"]  # cat is with dog in 2 images
    assert negatives(questions, 6) == ["bus"]  # bus is with car in 3 images
    # no co-occurrence with dog or cat: by popularity
    assert negatives(questions, 0) == ["car", "bus"]


@pytest.mark.parametrize("strategy", ["random", "popular", "adversarial"])
def test_questions_are_balanced_and_true(strategy: str) -> None:
    questions = pope_questions(OBJECTS, strategy=strategy, n_per_image=3, seed=5)  # type: ignore[arg-type]
    for image, names in enumerate(OBJECTS):
        asked = [q for q in questions if q.image_index == image]
        k = min(3, len(names), 4 - len(names))  # 4 objects in the vocabulary
        assert len(asked) == 2 * k
        assert [q.label for q in asked] == [True, False] * k
        for q in asked:
            assert (q.object in names) is q.label
            assert q.question == f"Is there a {q.object} in the image?"
        assert len({q.object for q in asked}) == 2 * k
    assert not [q for q in questions if q.image_index == 7]  # no object: no question


def test_random_is_seeded_and_per_image() -> None:
    objects = [["dog"], ["cat", "car"], ["bus"], ["person", "dog"]] * 10
    vocabulary = ["dog", "cat", "car", "bus", "person", "kite", "apple", "cup"]
    first = pope_questions(objects, vocabulary=vocabulary, seed=3)
    assert first == pope_questions(objects, vocabulary=vocabulary, seed=3)
    assert first != pope_questions(objects, vocabulary=vocabulary, seed=4)
    # image i's questions do not depend on the images after it
    shorter = pope_questions(objects[:5], vocabulary=vocabulary, seed=3)
    assert shorter == [q for q in first if q.image_index < 5]
    # negatives come from the vocabulary (kite, apple and cup are in no annotation)
    assert {q.object for q in first if not q.label} & {"kite", "apple", "cup"}


def test_bad_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        pope_questions(OBJECTS, strategy="hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_per_image"):
        pope_questions(OBJECTS, n_per_image=0)
