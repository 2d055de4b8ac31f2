"""CHAIR on captions written for the test, every value counted by hand."""

from __future__ import annotations

import pytest

from povidgen.eval import SCENE_VOCABULARY, Vocabulary, chair
from povidgen.sources.demo import caption, make_scene

# (caption, objects present); the comments count what CHAIR reads in each caption.
CASES = [
    # man -> person, dogs -> dog, teddy bear (not a bear), dogs -> dog: 4 mentions, teddy bear
    # hallucinated; person and dog recalled (2 of 2)
    ("A man walks two dogs past a teddy bear. The dogs bark.", ["dog", "person"]),
    # hot dogs -> hot dog (not a dog), dining table once, dog, cat: 4 mentions, dog and cat
    # hallucinated; 2 of 2 recalled
    ("Hot dogs on a dining table next to a dog and a cat.", ["hot dog", "dining table"]),
    # tennis is no object, player -> person, racket -> tennis racket: 2 mentions, none
    # hallucinated; the ball is not mentioned: 2 of 3 recalled
    ("A tennis player holds a racket.", ["sports ball", "tennis racket", "person"]),
    # toilet seat -> toilet, and "seat" (a chair) is dropped beside a toilet: 2 mentions of
    # toilet, none hallucinated; 1 of 1 recalled
    ("A toilet seat, and the seat of the toilet is up.", ["toilet"]),
    # no object word: no mention; the car is missed (0 of 1)
    ("An empty street at night.", ["car"]),
    # buses -> bus, women -> person, baby elephant -> elephant (not a person), wine glasses ->
    # wine glass: 4 mentions, elephant and wine glass hallucinated; 2 of 2 recalled
    ("Two buses, three women, a baby elephant and wine glasses.", ["bus", "person"]),
]


def test_chair_by_hand() -> None:
    result = chair([c for c, _ in CASES], [o for _, o in CASES])
    assert result.n_captions == 6
    assert result.n_hallucinating == 3  # captions 1, 2 and 6
    assert result.chair_s == pytest.approx(3 / 6)
    assert result.n_mentions == 4 + 4 + 2 + 2 + 0 + 4
    assert result.n_hallucinated == 1 + 2 + 0 + 0 + 0 + 2
    assert result.chair_i == pytest.approx(5 / 16)
    assert (result.n_recalled, result.n_present) == (9, 11)
    assert result.recall == pytest.approx(9 / 11)


def test_per_caption_detail() -> None:
    result = chair([c for c, _ in CASES], [o for _, o in CASES])
    first, second, third, fourth, fifth, sixth = result.captions
    assert first.mentioned == ("person", "dog", "teddy bear", "dog")
    assert first.words == ("man", "dog", "teddy bear", "dog")
    assert first.hallucinated == ("teddy bear",)
    assert second.mentioned == ("hot dog", "dining table", "dog", "cat")
    assert second.hallucinated == ("dog", "cat")
    assert third.mentioned == ("person", "tennis racket")
    assert third.recalled == ("person", "tennis racket")
    assert third.present == ("person", "sports ball", "tennis racket")
    assert fourth.mentioned == ("toilet", "toilet")
    assert not fourth.hallucinates
    assert fifth.mentioned == ()
    assert fifth.recalled == ()
    assert sixth.words == ("bus", "woman", "elephant", "wine glass")
    assert sixth.hallucinated == ("elephant", "wine glass")
    assert result.to_dict()["captions"][1]["hallucinated"] == ["dog", "cat"]


def test_every_mention_counts_as_the_reference_counts() -> None:
    # CHAIR_I counts each mention, so a hallucinated object said twice counts twice
    result = chair(["A dog and another dog near a cat."], [["cat"]])
    assert (result.n_mentions, result.n_hallucinated) == (3, 2)
    assert result.chair_i == pytest.approx(2 / 3)
    assert result.chair_s == 1.0
    # ...while recall counts each present category once
    assert chair(["A cat, a cat and a cat."], [["cat", "dog"]]).recall == 0.5


def test_synonyms_and_two_word_names() -> None:
    coco = Vocabulary.coco()
    assert [c for _, c in coco.mentions("A puppy and a kitten on a sofa")] == [
        "dog",
        "cat",
        "couch",
    ]
    assert [c for _, c in coco.mentions("a teddy bear and a bear")] == ["teddy bear", "bear"]
    assert [c for _, c in coco.mentions("passenger trains and a passenger")] == [
        "train",
        "person",
    ]
    assert [c for _, c in coco.mentions("motor bikes, cell phones and a traffic light")] == [
        "motorcycle",
        "cell phone",
        "traffic light",
    ]
    assert coco.mentions("the train tracks by home plate") == []
    assert [c for _, c in coco.mentions("a bow tie")] == ["tie"]


def test_objects_may_be_synonyms_and_unknown_ones_are_refused() -> None:
    result = chair(["A ball and a puppy."], [["ball", "puppies"]])
    assert result.captions[0].present == ("dog", "sports ball")
    assert result.chair_s == 0.0
    assert result.recall == 1.0
    with pytest.raises(ValueError, match="'lamp' is not an object of the coco vocabulary"):
        chair(["A lamp."], [["lamp"]])


def test_custom_vocabulary() -> None:
    vocabulary = {"ball": "ball", "kite": "kite", "paper kite": "kite", "orange": "fruit"}
    result = chair(
        ["Three balls and two paper kites.", "An orange ball and an apple."],
        [["ball"], ["ball"]],
        vocabulary=vocabulary,
    )
    # "paper kites" is one mention of kite; "apple" is not in this vocabulary
    assert result.captions[0].words == ("ball", "paper kite")
    assert result.captions[1].mentioned == ("fruit", "ball")
    assert (result.n_mentions, result.n_hallucinated, result.chair_s) == (4, 2, 1.0)
    assert result.vocabulary == "custom"
    with pytest.raises(ValueError, match="names both"):
        Vocabulary({"Dogs": "dog", "dog": "canine"})


def test_scene_captions_score_exactly() -> None:
    scenes = [make_scene(i, seed=3) for i in range(24)]
    captions = [caption(scene) for scene in scenes]
    objects = [scene.names() for scene in scenes]
    for vocabulary in (SCENE_VOCABULARY, None):  # ("ball" is COCO's "sports ball")
        result = chair(captions, objects, vocabulary=vocabulary)
        assert (result.chair_s, result.chair_i, result.recall) == (0.0, 0.0, 1.0)
    # one absent object named in every caption: each caption hallucinates once
    wrong = [
        text + f" There is also a {next(n for n in SCENE_VOCABULARY if n not in names)}."
        for text, names in zip(captions, objects, strict=True)
    ]
    result = chair(wrong, objects, vocabulary=SCENE_VOCABULARY)
    assert result.chair_s == 1.0
    assert result.n_hallucinated == 24
    assert result.chair_i == pytest.approx(24 / result.n_mentions)


def test_intervals_are_seeded_and_hold_the_figures() -> None:
    captions = [c for c, _ in CASES] * 5
    objects = [o for _, o in CASES] * 5
    result = chair(captions, objects, seed=7)
    again = chair(captions, objects, seed=7)
    assert result.intervals == again.intervals
    for name, value in result.figures().items():
        low, high = result.intervals[name]
        assert 0.0 <= low <= value <= high <= 1.0
    assert result.intervals["chair_s"].low < result.intervals["chair_s"].high


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="2 captions but 1 object lists"):
        chair(["a", "b"], [["dog"]])
    with pytest.raises(ValueError, match="no captions"):
        chair([], [])
    with pytest.raises(TypeError):
        chair(["a dog"], ["dog"])  # a string, not a list of names
