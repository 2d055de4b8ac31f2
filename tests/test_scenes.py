"""The scene generator (povidgen.sources.scenes) and ``povidgen scenes``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import datasets
import pytest

from povidgen.cli import main
from povidgen.sources.demo import (
    CAPTION_PROMPT,
    POSITIONS,
    Scene,
    SceneObject,
    caption,
    contradicts,
    make_scene,
    parse_scene,
)
from povidgen.sources.scenes import (
    COOCCURRENCE,
    SCENES_MARKER,
    SceneSettings,
    generate_scenes,
    web_caption,
)


def test_same_arguments_give_the_same_rows_down_to_the_png_bytes() -> None:
    first = generate_scenes(10, seed=3, cooccurrence=0.5, web_noise=0.5, size=64)
    second = generate_scenes(10, seed=3, cooccurrence=0.5, web_noise=0.5, size=64)
    for name in ("train", "test"):
        a = first[name].cast_column("image", datasets.Image(decode=False))
        b = second[name].cast_column("image", datasets.Image(decode=False))
        assert a.to_list() == b.to_list()
    other = generate_scenes(10, seed=4, size=64)
    assert other["train"]["scene"] != first["train"]["scene"]


def test_without_cooccurrence_the_scenes_are_the_demo_scenes() -> None:
    scenes = generate_scenes(12, seed=7, qa_per_scene=0)
    for split in scenes.values():
        for row in split:
            index = int(row["id"].removeprefix("scene-"))
            assert parse_scene(row["scene"]) == make_scene(index, 7)
            assert row["answer"] == caption(make_scene(index, 7))


def test_splits_hold_whole_distinct_scenes_in_the_asked_shares() -> None:
    scenes = generate_scenes(30, seed=0, held_out=0.25, qa_per_scene=2, size=64)
    train, test = scenes["train"], scenes["test"]
    # round(30 * 0.25) = 8 test scenes (7.5 rounds to the even 8), 22 train scenes
    assert len(set(test["scene_id"])) == 8
    assert len(set(train["scene_id"])) == 22
    assert len(test) == 8 * 3  # a caption and two questions each
    assert len(train) == 22 * 3
    assert not set(train["scene_id"]) & set(test["scene_id"])
    assert not set(train["scene"]) & set(test["scene"])  # no test image is a training image
    assert len(set(train["id"]) | set(test["id"])) == 90
    assert SceneSettings(n=2, held_out=0.01).test_scenes == 1  # never an empty split
    assert SceneSettings(n=2, held_out=0.99).test_scenes == 1


def test_rows_carry_exact_ground_truth() -> None:
    scenes = generate_scenes(8, seed=1, qa_per_scene=1, size=64)
    for row in scenes["train"]:
        scene = parse_scene(row["scene"])
        assert row["objects"] == sorted(scene.names())
        assert row["web_answer"] == row["answer"]  # no web noise asked for
        if row["task"] == "caption":
            assert row["id"] == row["scene_id"]
            assert row["prompt"] == CAPTION_PROMPT
            assert row["question_type"] == "caption"
            assert row["answer"] == caption(scene)
        else:
            assert row["id"] == row["scene_id"] + "-qa0"
        assert row["image"].size == (64, 64)


def test_cooccurrence_one_makes_every_further_group_a_partner() -> None:
    scenes = generate_scenes(40, seed=2, cooccurrence=1.0, qa_per_scene=0, size=64)
    several = 0
    for split in scenes.values():
        for row in split:
            names = parse_scene(row["scene"]).names()
            for position in range(1, len(names)):
                earlier = names[:position]
                assert any(names[position] in COOCCURRENCE[name] for name in earlier), names
            several += len(names) > 1
    assert several > 10


def test_cooccurrence_is_the_rule_hallucinators_table_on_scene_classes() -> None:
    table = json.loads(
        (
            Path(__file__).resolve().parent.parent
            / "povidgen"
            / "hallucinate"
            / "data"
            / "cooccurrence.json"
        ).read_text()
    )["objects"]
    for a in COOCCURRENCE:
        for b in COOCCURRENCE:
            listed = b in table[a]["cooccurs"] or a in table[b]["cooccurs"]
            assert (b in COOCCURRENCE[a]) == listed, (a, b)


def test_web_caption_adds_one_absent_partner() -> None:
    scene = Scene(objects=[SceneObject(name="book", color="red", count=2, position="left")])
    text = web_caption(scene, random.Random(0))
    assert text is not None
    assert text != caption(scene)
    assert "two red books on the left" in text
    added = {"apple", "clock", "cup"} & {w.rstrip("s.,") for w in text.split()}
    assert len(added) == 1  # one of the book's partners, nothing else
    assert contradicts(scene, "object", text)
    # a kite with its only partners present: nothing absent co-occurs, so no web caption
    full = Scene(
        objects=[
            SceneObject(name="kite", color="red", count=1, position="left"),
            SceneObject(name="umbrella", color="blue", count=1, position="center"),
            SceneObject(name="ball", color="green", count=1, position="right"),
        ]
    )
    assert web_caption(full, random.Random(0)) is None


def test_web_noise_mentions_absent_objects_only_in_web_answers() -> None:
    scenes = generate_scenes(30, seed=5, cooccurrence=0.5, web_noise=1.0, qa_per_scene=1)
    changed = 0
    for row in scenes["train"]:
        scene = parse_scene(row["scene"])
        if row["task"] == "qa":  # (an absence answer names an absent object, truthfully)
            assert row["web_answer"] == row["answer"]
            continue
        assert not contradicts(scene, "object", row["answer"])
        if row["web_answer"] != row["answer"]:
            changed += 1
            assert contradicts(scene, "object", row["web_answer"])
        else:  # only when every partner of the scene's objects is in it
            assert web_caption(scene, random.Random(0)) is None
    assert changed > 15


def test_place_order_lists_the_same_scenes_groups_by_place() -> None:
    """``group_order="place"``: the same scenes, pictures and splits, each scene's groups
    listed left, right, top, bottom, center in its ``scene`` and caption."""
    common: dict[str, Any] = {"seed": 2, "cooccurrence": 0.8, "qa_per_scene": 1, "size": 64}
    drawn = generate_scenes(24, **common)
    placed = generate_scenes(24, group_order="place", **common)
    reordered = 0
    for name in ("train", "test"):
        a_rows = drawn[name].cast_column("image", datasets.Image(decode=False))
        b_rows = placed[name].cast_column("image", datasets.Image(decode=False))
        for a, b in zip(a_rows, b_rows, strict=True):
            assert a["id"] == b["id"]
            assert a["image"]["bytes"] == b["image"]["bytes"]
            groups = list(parse_scene(b["scene"]).objects)
            by_place = sorted(parse_scene(a["scene"]).objects, key=_place)
            assert groups == by_place
            if a["task"] == "caption":
                assert b["answer"] == caption(parse_scene(b["scene"]))
                reordered += a["answer"] != b["answer"]
    assert reordered > 0
    with pytest.raises(ValueError, match="group_order"):
        generate_scenes(10, group_order="size")  # type: ignore[arg-type]


def _place(group: SceneObject) -> int:
    return POSITIONS.index(group.position)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="n"):
        generate_scenes(1)
    with pytest.raises(ValueError, match="held_out"):
        generate_scenes(10, held_out=1.0)
    with pytest.raises(ValueError, match="web_noise"):
        generate_scenes(10, web_noise=1.5)


def test_cli_writes_scenes_that_povidgen_build_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from povidgen import load_pairs

    out = tmp_path / "scenes"
    args = ["scenes", "--n", "10", "--seed", "1", "--out", str(out), "--size", "64"]
    assert main([*args, "--cooccurrence", "0.6", "--web-noise", "0.5"]) == 0
    assert "train:  8 scenes, 16 rows" in capsys.readouterr().out
    marker = json.loads((out / SCENES_MARKER).read_text())
    assert marker["settings"]["cooccurrence"] == 0.6
    assert marker["settings"]["group_order"] == "random"
    placed = tmp_path / "placed"
    assert main(["scenes", "--n", "4", "--out", str(placed), "--group-order", "place"]) == 0
    capsys.readouterr()
    assert json.loads((placed / SCENES_MARKER).read_text())["settings"]["group_order"] == "place"
    assert main(["scenes", "--n", "4", "--out", str(placed), "--group-order", "size"]) == 2
    assert "--group-order" in capsys.readouterr().err
    assert marker["splits"] == {
        "train": {"rows": 16, "scenes": 8},
        "test": {"rows": 4, "scenes": 2},
    }

    # an earlier output is replaced only with --overwrite; anything else is never touched
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["scenes", "--n", "4", "--out", str(other)]) == 2
    assert (other / "notes.txt").read_text() == "keep"
    assert main(["scenes", "--n", "1", "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()

    pairs = tmp_path / "pairs"
    build = ["build", "--dataset", str(out), "--split", "train", "--id-column", "id"]
    assert main([*build, "--out", str(pairs), "--distorter", "none"]) == 0
    built = load_pairs(pairs)
    train = generate_scenes(10, seed=1, size=64)["train"]
    assert sorted(built["id"]) == sorted(train["id"])
    by_id = {row["id"]: row for row in train}
    for row in built:
        assert row["chosen"][0]["content"][0]["text"] == by_id[row["id"]]["answer"]
    # the split folder alone is a dataset too
    assert (
        main(
            [
                "build",
                "--dataset",
                str(out / "test"),
                "--id-column",
                "id",
                "--out",
                str(tmp_path / "test-pairs"),
                "--distorter",
                "none",
            ]
        )
        == 0
    )
