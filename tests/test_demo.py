"""The bundled demo scenes: determinism, exact ground truth, drawings and the truth checker."""

from __future__ import annotations

import re

import datasets
import numpy as np
import pytest
from pydantic import ValidationError

from povidgen.sources.demo import (
    CAPTION_PROMPT,
    COLORS,
    OBJECT_NAMES,
    QUESTION_TYPES,
    Scene,
    SceneObject,
    caption,
    contradicts,
    demo_dataset,
    make_scene,
    parse_scene,
    question_answer,
    region,
    render_scene,
)

NUMBER = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
WHERE = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the center": "center",
}
COLOR_RE = "|".join(COLORS)
WHERE_RE = "|".join(WHERE)
GROUP_RE = re.compile(
    rf"\b(a|an|one|two|three|four|five) ({COLOR_RE}) ([a-z]+) ({WHERE_RE})\b", re.IGNORECASE
)
RELATION_RE = re.compile(
    r"The ([a-z]+) (is|are) (above|below|to the left of|to the right of) the ([a-z]+)\."
)


@pytest.fixture(scope="module")
def demo() -> datasets.Dataset:
    return demo_dataset()


def group_of(scene: Scene, noun: str) -> SceneObject:
    found = scene.find(noun)
    assert found is not None, f"{noun!r} is not in {scene}"
    # The noun is plural exactly when there are several.
    assert (noun == found.name) == (found.count == 1), (noun, found)
    return found


def check_groups(text: str, scene: Scene) -> int:
    """Check every '<count> <colour> <noun> <where>' phrase in text against scene."""
    matches = GROUP_RE.findall(text)
    for number, color, noun, where in matches:
        group = group_of(scene, noun)
        assert group.count == NUMBER[number.lower()], text
        assert group.color == color, text
        assert group.position == WHERE[where], text
    return len(matches)


def holds(scene: Scene, subject: str, relation: str, other: str) -> bool:
    """Whether the relation holds between the two groups' regions, geometrically."""
    a = region(scene, group_of(scene, subject).position)
    b = region(scene, group_of(scene, other).position)
    return {
        "above": a[3] <= b[1],
        "below": b[3] <= a[1],
        "to the left of": a[2] <= b[0],
        "to the right of": b[2] <= a[0],
    }[relation]


def check_relation(text: str, scene: Scene) -> None:
    for subject, verb, relation, other in RELATION_RE.findall(text):
        assert (verb == "are") == (group_of(scene, subject).count > 1)
        group_of(scene, other)
        assert holds(scene, subject, relation, other), (text, scene)


def check_mentions(text: str, scene: Scene) -> None:
    """Every colour, number and (non-negated) object the text mentions is in the scene."""
    words = re.findall(r"[a-z]+", text.lower())
    for word in words:
        if word in COLORS:
            assert word in scene.colors(), text
        if word in ("one", "two", "three", "four", "five"):
            assert NUMBER[word] in scene.counts(), text
    absent = re.findall(r"no ([a-z]+)", text)
    for word in words:
        name = word[:-1] if word.endswith("s") and word[:-1] in OBJECT_NAMES else word
        if name in OBJECT_NAMES and name not in absent:
            assert name in scene.names(), text


def groups(pattern: str, text: str) -> tuple[str, ...]:
    match = re.fullmatch(pattern, text)
    assert match is not None, (pattern, text)
    return match.groups()


def test_dataset_columns_and_tasks(demo: datasets.Dataset) -> None:
    assert len(demo) == 64
    assert demo.column_names == ["id", "image", "question", "answer", "task", "scene"]
    assert isinstance(demo.features["image"], datasets.Image)
    assert demo[0]["id"] == "demo-0000"
    assert demo[63]["id"] == "demo-0063"
    assert demo["task"].count("caption") == 32
    assert demo["task"].count("qa") == 32
    image = demo[5]["image"]
    assert image.mode == "RGB"
    assert image.size == (256, 256)


def test_same_seed_gives_byte_identical_data(demo: datasets.Dataset) -> None:
    again = demo_dataset(12)
    first = demo.select(range(12))
    assert again[:]["answer"] == first[:]["answer"]
    assert again[:]["scene"] == first[:]["scene"]
    raw = datasets.Image(decode=False)
    assert [r["bytes"] for r in again.cast_column("image", raw)["image"]] == [
        r["bytes"] for r in first.cast_column("image", raw)["image"]
    ]


def test_other_seed_gives_other_scenes(demo: datasets.Dataset) -> None:
    other = demo_dataset(12, seed=1)
    different = sum(a != b for a, b in zip(other["scene"], demo["scene"][:12], strict=True))
    assert different >= 10
    assert render_scene(make_scene(0, 1)).tobytes() != render_scene(make_scene(0, 0)).tobytes()


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_positive(n: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        demo_dataset(n)


def test_scenes_are_well_formed() -> None:
    for seed in (0, 7):
        for index in range(150):
            scene = make_scene(index, seed)
            assert 1 <= len(scene.objects) <= 3
            assert len(set(scene.names())) == len(scene.objects)
            assert len(set(scene.positions())) == len(scene.objects)
            assert len(set(scene.colors())) == len(scene.objects)
            if len(scene.objects) > 1:
                assert scene.relation() is not None
            assert make_scene(index, seed) == scene


def test_every_text_matches_its_scene(demo: datasets.Dataset) -> None:
    kinds = set()
    for row in demo:
        scene = parse_scene(row["scene"])
        answer = row["answer"]
        check_mentions(answer, scene)
        check_relation(answer, scene)
        if row["task"] == "caption":
            assert row["question"] == CAPTION_PROMPT
            assert answer == caption(scene)
            assert check_groups(answer, scene) == len(scene.objects)
            if len(scene.objects) > 1:
                assert RELATION_RE.search(answer)
            continue
        question = row["question"]
        if m := re.fullmatch(r"How many ([a-z]+) are there\?", question):
            kinds.add("count")
            number, color, noun = groups(r"There (?:is|are) ([a-z]+) ([a-z]+) ([a-z]+)\.", answer)
            group = group_of(scene, noun)
            assert m.group(1) == group.name + "s"
            assert (NUMBER[number], color) == (group.count, group.color)
        elif m := re.fullmatch(r"What color (?:is|are) the ([a-z]+)\?", question):
            kinds.add("color")
            noun, color = groups(r"The ([a-z]+) (?:is|are) ([a-z]+)\.", answer)
            assert noun == m.group(1)
            assert group_of(scene, noun).color == color
        elif re.fullmatch(r"Where (?:is|are) the ([a-z]+)\?", question):
            kinds.add("position")
            noun, where = groups(rf"The ([a-z]+) (?:is|are) ({WHERE_RE}) of the image\.", answer)
            assert group_of(scene, noun).position == WHERE[where]
        elif m := re.fullmatch(r"Is there an? ([a-z]+) in the image\?", question):
            if answer.startswith("Yes"):
                kinds.add("presence")
                assert check_groups(answer, scene) == 1
                assert scene.find(m.group(1)) is not None
                assert m.group(1) in answer
            else:
                kinds.add("absence")
                assert answer.startswith(f"No, there is no {m.group(1)} in the image; ")
                assert scene.find(m.group(1)) is None
                assert check_groups(answer, scene) == 1
        else:
            assert re.fullmatch(r"Where (?:is|are) the [a-z]+ relative to the [a-z]+\?", question)
            kinds.add("relation")
            assert RELATION_RE.fullmatch(answer)
    assert kinds == set(QUESTION_TYPES)


def test_relation_falls_back_to_count_for_single_groups() -> None:
    scene = Scene(objects=[SceneObject(name="kite", color="pink", count=2, position="top")])
    kind, question, answer = question_answer(scene, QUESTION_TYPES.index("relation"))
    assert kind == "count"
    assert (question, answer) == ("How many kites are there?", "There are two pink kites.")
    assert caption(scene) == "The image shows two pink kites at the top."


def test_caption_wording() -> None:
    scene = Scene(
        objects=[
            SceneObject(name="apple", color="red", count=2, position="left"),
            SceneObject(name="umbrella", color="blue", count=1, position="right"),
        ]
    )
    assert caption(scene) == (
        "The image shows two red apples on the left and a blue umbrella on the right. "
        "The umbrella is to the right of the apples."
    )


def test_objects_are_drawn_in_their_regions(demo: datasets.Dataset) -> None:
    for row in demo.select(range(24)):
        scene = parse_scene(row["scene"])
        pixels = np.asarray(row["image"])
        height, width = pixels.shape[:2]
        for group in scene.objects:
            mask = np.all(pixels == COLORS[group.color], axis=-1)
            x0, y0, x1, y1 = region(scene, group.position)
            inside = mask[y0:y1, x0:x1].sum()
            assert inside > 20 * group.count, (group, inside)
            assert inside == mask.sum(), f"{group.color} drawn outside the {group.position}"
            third = {
                "left": mask[:, : width // 3],
                "right": mask[:, 2 * width // 3 :],
                "top": mask[: height // 3],
                "bottom": mask[2 * height // 3 :],
                "center": mask[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3],
            }[group.position]
            assert third.any()
        for name, rgb in COLORS.items():
            if name not in scene.colors():
                assert not np.all(pixels == rgb, axis=-1).any(), name


def test_scene_validation_and_helpers() -> None:
    apple = SceneObject(name="apple", color="red", count=2, position="left")
    with pytest.raises(ValidationError):
        Scene(objects=[apple, apple.model_copy(update={"position": "right"})])
    with pytest.raises(ValidationError):
        Scene(objects=[apple, SceneObject(name="ball", color="red", count=1, position="left")])
    with pytest.raises(ValidationError):
        SceneObject(name="apple", color="orange", count=1, position="left")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        SceneObject(name="apple", color="red", count=6, position="left")
    with pytest.raises(ValidationError):
        Scene(objects=[])
    scene = Scene(objects=[apple])
    assert scene.find("apples") == apple
    assert scene.find("Apple") == apple
    assert scene.find("kite") is None
    assert parse_scene(scene.model_dump_json()) == scene
    with pytest.raises(ValueError, match="index"):
        make_scene(-1)


@pytest.fixture
def scene() -> Scene:
    return Scene(
        objects=[
            SceneObject(name="apple", color="red", count=2, position="left"),
            SceneObject(name="book", color="blue", count=1, position="center"),
        ]
    )


@pytest.mark.parametrize(
    ("kind", "injected", "expected"),
    [
        ("object", "a banana", True),
        ("object", "bananas", True),
        ("object", "wine glasses", True),
        ("object", "There is also a dog next to it.", True),
        ("object", "an apple", False),
        ("object", "books", False),
        ("object", "something", False),
        ("attribute", "green", True),
        ("attribute", "orange", True),
        ("attribute", "blue", False),
        ("attribute", "large", False),
        ("count", "three", True),
        ("count", "4", True),
        ("count", "two", False),
        ("count", "1", False),
        ("spatial", "right", True),
        ("spatial", "at the top", True),
        ("spatial", "left", False),
        ("spatial", "middle", False),
        ("spatial", "above", True),
        ("spatial", "to the right of", True),
        ("relation", "below", True),
        ("relation", "holding", True),
        ("relation", "near", False),
        ("text", "STOP", True),
        ("reasoning", "so it must be raining", False),
        ("reasoning", "No, there is no apple in the image;", True),
        ("reasoning", "there isn't a red book", True),
        ("reasoning", "No, there is no cup in the image", False),
        ("reasoning", "Yes, there is a cup at the top of the image", True),
        ("reasoning", "Yes, there is a book on the left", False),
    ],
)
def test_contradicts(scene: Scene, kind: str, injected: str, expected: bool) -> None:
    assert contradicts(scene, kind, injected) is expected


@pytest.mark.parametrize(
    ("kind", "rejected", "injected", "expected"),
    [
        # Alone, "left" and "blue" are undecidable: some group is on the left, some is blue.
        ("spatial", "The book is on the left of the image.", "on the left", True),
        ("spatial", "The apples are on the left of the image.", "on the left", False),
        ("attribute", "The apples are blue.", "blue", True),
        ("attribute", "The book is blue.", "blue", False),
        ("count", "There are two red books.", "are two red books", True),
        ("count", "There is a blue book.", "is a blue book", False),
        # A clause naming two groups (or an object the scene lacks) is read alone.
        ("attribute", "The apples and the book are blue.", "blue", False),
        ("attribute", "The bananas are blue.", "blue", False),
        ("spatial", "The apples are to the right of the book.", "to the right of", True),
    ],
)
def test_contradicts_in_context(
    scene: Scene, kind: str, rejected: str, injected: str, expected: bool
) -> None:
    start = rejected.index(injected)
    assert contradicts(scene, kind, injected, rejected=rejected, start=start) is expected


def test_contradicts_context_needs_both_and_the_right_start(scene: Scene) -> None:
    with pytest.raises(ValueError, match="both"):
        contradicts(scene, "spatial", "left", rejected="on the left")
    with pytest.raises(ValueError, match="injected"):
        contradicts(scene, "spatial", "left", rejected="on the left", start=0)


def test_contradicts_rejects_unknown_kinds(scene: Scene) -> None:
    with pytest.raises(ValueError, match="edit kind"):
        contradicts(scene, "smell", "fishy")
