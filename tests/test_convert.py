"""Converters: TRL <-> LLaVA/POVID <-> VLFeedback round trips are lossless (ids, texts, image
bytes, provenance), a POVID-format file goes in and comes out the same, and ``povidgen export``
never overwrites what it did not write."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from povidgen import load_pairs
from povidgen.cli import main
from povidgen.convert import (
    EXPORT_MARKER,
    detect_format,
    export,
    from_llava,
    from_vlfeedback,
    image_extension,
    read_pairs,
    to_llava,
    to_vlfeedback,
)
from povidgen.convert.formats import iter_parquet_rows
from povidgen.errors import DatasetFormatError
from tests.conftest import encode

TEXT_COLUMNS = ("id", "prompt", "chosen", "rejected", "provenance")


def raw(dataset: Any) -> list[dict[str, Any]]:
    """The rows of a dataset with images as stored ({"bytes", "path"})."""
    rows: list[dict[str, Any]] = []
    for batch in dataset.with_format("arrow").iter(batch_size=64):
        rows.extend(batch.to_pylist())
    return rows


def image_bytes(cells: list[dict[str, Any]] | None) -> list[bytes]:
    return [cell["bytes"] for cell in cells or []]


def assert_same_pairs(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Same ids, messages, provenance; images bit-equal (their file names may differ)."""
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        for column in TEXT_COLUMNS:
            assert a[column] == b[column], column
        assert image_bytes(a["images"]) == image_bytes(b["images"])
        assert image_bytes(a.get("rejected_images")) == image_bytes(b.get("rejected_images"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("convert") / "pairs"
    assert main(["build", "--demo", "--demo-size", "6", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def built_rows(built: Path) -> list[dict[str, Any]]:
    rows = raw(load_pairs(built))
    assert all(r["rejected_images"] and r["provenance"] for r in rows)
    return rows


def test_trl_to_llava_to_trl_is_lossless(
    built: Path, built_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    report = export(built, tmp_path / "llava", format="llava")
    assert (report.rows, report.image_files, report.source_format) == (6, 12, "trl")
    records = json.loads((tmp_path / "llava" / "pairs.json").read_text())
    first = records[0]
    assert set(first) == {
        "id",
        "image",
        "conversations",
        "rejected_conversations",
        "rejected_image",
        "provenance",
    }
    assert first["conversations"][0]["value"].startswith("<image>\n")
    assert [t["from"] for t in first["rejected_conversations"]] == ["human", "gpt"]
    for record, row in zip(records, built_rows, strict=True):
        folder = tmp_path / "llava" / "images"
        assert (folder / record["image"]).read_bytes() == row["images"][0]["bytes"]
        assert (folder / record["rejected_image"]).read_bytes() == row["rejected_images"][0][
            "bytes"
        ]
        assert record["image"].endswith(image_extension(row["images"][0]["bytes"]))
    assert detect_format(tmp_path / "llava") == "llava"
    back = read_pairs(tmp_path / "llava")
    assert_same_pairs(raw(back), built_rows)
    # and through the plain functions, to a file and an image folder of one's choosing
    to_llava(load_pairs(built), tmp_path / "own.json", tmp_path / "pictures")
    assert_same_pairs(raw(from_llava(tmp_path / "own.json", tmp_path / "pictures")), built_rows)
    assert back[0]["images"][0].size == (256, 256)  # decodes as an image


def test_trl_to_vlfeedback_to_trl_is_lossless(
    built: Path, built_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    export(built, tmp_path / "vlf", format="vlfeedback")
    rows = list(iter_parquet_rows(sorted((tmp_path / "vlf" / "data").glob("*.parquet"))))
    assert set(rows[0]) == {"id", "image", "prompt", "completions", "rejected_images", "provenance"}
    for row, pair in zip(rows, built_rows, strict=True):
        chosen, rejected = row["completions"]
        assert chosen["rating"] > rejected["rating"]
        assert chosen["response"] == pair["chosen"][0]["content"][0]["text"]
        assert rejected["response"] == pair["rejected"][0]["content"][0]["text"]
        assert row["prompt"] == pair["prompt"][0]["content"][1]["text"]
        assert row["image"]["bytes"] == pair["images"][0]["bytes"]
    assert detect_format(tmp_path / "vlf") == "vlfeedback"
    assert_same_pairs(raw(read_pairs(tmp_path / "vlf")), built_rows)
    to_vlfeedback(load_pairs(built), tmp_path / "one.parquet")
    assert_same_pairs(raw(from_vlfeedback(tmp_path / "one.parquet")), built_rows)


def test_trl_export_keeps_every_row_as_it_is(
    built: Path, built_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    assert main(["export", str(built), "--out", str(tmp_path / "trl")]) == 0
    assert raw(read_pairs(tmp_path / "trl")) == built_rows
    # every layout converts to every other and back
    export(built, tmp_path / "a", format="vlfeedback")
    export(tmp_path / "a", tmp_path / "b", format="llava")
    export(tmp_path / "b", tmp_path / "c", format="trl")
    assert_same_pairs(raw(read_pairs(tmp_path / "c")), built_rows)


def write_povid(folder: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """A hand-written POVID-format file (LLaVA records with rejected_conversations) and its
    COCO-named images: a JPEG, a PNG in a subfolder, and a two-exchange record."""
    images = folder / "coco"
    (images / "train2014").mkdir(parents=True)
    jpeg = encode(Image.new("RGB", (40, 30), (10, 120, 200)), "JPEG")
    png = encode(Image.new("RGB", (30, 40), (200, 120, 10)), "PNG")
    (images / "COCO_train2014_000000033471.jpg").write_bytes(jpeg)
    (images / "train2014" / "COCO_train2014_000000052846.png").write_bytes(png)
    question = "<image>\nWhat are the colors of the bus in the image?"
    records = [
        {
            "id": "000000033471",
            "image": "COCO_train2014_000000033471.jpg",
            "conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": "The bus in the image is white and red."},
            ],
            "rejected_conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": "The bus in the image is blue and yellow."},
            ],
        },
        {
            "id": "000000052846",
            "image": "train2014/COCO_train2014_000000052846.png",
            "conversations": [
                {"from": "human", "value": "Where is the cat?\n<image>"},
                {"from": "gpt", "value": "On the sofa, next to a cushion."},
                {"from": "human", "value": "What colour is it?"},
                {"from": "gpt", "value": "It is grey with white paws."},
            ],
            "rejected_conversations": [
                {"from": "human", "value": "Where is the cat?\n<image>"},
                {"from": "gpt", "value": "On the sofa, next to a cushion."},
                {"from": "human", "value": "What colour is it?"},
                {"from": "gpt", "value": "It is black with a fishing pole beside it."},
            ],
        },
        {
            "id": "000000033471-2",
            "image": "COCO_train2014_000000033471.jpg",  # two questions on one image
            "conversations": [
                {"from": "human", "value": "<image>\nIs it raining?"},
                {"from": "gpt", "value": "No, the street is dry."},
                {"from": "human", "value": "How many people wait?"},
                {"from": "gpt", "value": "Three people wait at the stop."},
            ],
            "rejected_conversations": [
                {"from": "human", "value": "<image>\nIs it raining?"},
                {"from": "gpt", "value": "Yes, the street is flooded."},
                {"from": "human", "value": "How many people wait?"},
                {"from": "gpt", "value": "Seven people wait at the stop."},
            ],
        },
    ]
    path = folder / "povid_17k.json"
    path.write_text(json.dumps(records, indent=2))
    return path, images, records


def files_of(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_povid_file_goes_in_and_comes_out_the_same(tmp_path: Path) -> None:
    path, images, records = write_povid(tmp_path / "in")
    command = ["export", str(path), "--image-folder", str(images)]
    assert main([*command, "--format", "trl", "--out", str(tmp_path / "trl")]) == 0
    pairs = read_pairs(tmp_path / "trl")
    assert pairs["id"] == [r["id"] for r in records]
    multi = pairs[1]
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user"]
    assert [p["type"] for p in multi["prompt"][0]["content"]] == ["text", "image"]
    assert multi["chosen"][0]["content"][0]["text"] == "It is grey with white paws."
    assert [m["role"] for m in pairs[2]["chosen"]] == ["assistant", "user", "assistant"]
    assert pairs[0]["provenance"] is None
    assert (
        main(["export", str(tmp_path / "trl"), "--format", "llava", "--out", str(tmp_path / "out")])
        == 0
    )
    assert json.loads((tmp_path / "out" / "pairs.json").read_text()) == records
    assert files_of(tmp_path / "out" / "images") == files_of(images)
    # straight across too, and from the library
    export(path, tmp_path / "direct", format="llava", image_folder=images)
    assert json.loads((tmp_path / "direct" / "pairs.json").read_text()) == records
    assert files_of(tmp_path / "direct" / "images") == files_of(images)


def test_vlfeedback_refuses_what_it_cannot_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, images, _ = write_povid(tmp_path / "in")
    out = tmp_path / "vlf"
    command = ["export", str(path), "--image-folder", str(images), "--format", "vlfeedback"]
    assert main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("povidgen: error: pair '000000052846'")
    assert err.count("\n") == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_vlfeedback_input_in_its_own_layout(tmp_path: Path) -> None:
    """VLFeedback's released rows rate each completion in annotations; ties are skipped."""
    import datasets

    png = encode(Image.new("RGB", (8, 8), (1, 2, 3)))

    def completion(response: str, *ratings: str) -> dict[str, Any]:
        names = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
        return {
            "model": "m",
            "response": response,
            "annotations": {
                n: {"Rating": r, "Rationale": "."} for n, r in zip(names, ratings, strict=True)
            },
        }

    rows = [
        {
            "id": "q1",
            "image": {"bytes": png, "path": None},
            "prompt": "What is shown?",
            "completions": [
                completion("A cat.", "3", "4", "5"),
                completion("A red cup.", "5", "5", "5"),
                completion("A dog on a boat.", "1", "2", "5"),
            ],
        },
        {
            "id": "q2",
            "image": {"bytes": png, "path": None},
            "prompt": "Tie?",
            "completions": [completion("x", "3", "3", "3"), completion("y", "3", "3", "3")],
        },
    ]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "prompt": datasets.Value("string"),
            "completions": datasets.List(
                {
                    "model": datasets.Value("string"),
                    "response": datasets.Value("string"),
                    "annotations": {
                        n: {
                            "Rating": datasets.Value("string"),
                            "Rationale": datasets.Value("string"),
                        }
                        for n in ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
                    },
                }
            ),
        }
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "vlf.parquet"))
    pairs = raw(from_vlfeedback(tmp_path / "vlf.parquet"))
    assert [p["id"] for p in pairs] == ["q1"]
    assert pairs[0]["chosen"][0]["content"][0]["text"] == "A red cup."
    assert pairs[0]["rejected"][0]["content"][0]["text"] == "A dog on a boat."
    assert pairs[0]["images"][0]["bytes"] == png


def test_image_files_get_safe_names_and_their_format_s_extension(tmp_path: Path) -> None:
    jpeg = encode(Image.new("RGB", (8, 8), (9, 9, 9)), "JPEG")
    row = {
        "id": "../../etc/passwd",
        "images": [{"bytes": jpeg, "path": "/abs/where.png"}],
        "prompt": [
            {
                "role": "user",
                "content": [{"type": "image", "text": None}, {"type": "text", "text": "q"}],
            }
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "b"}]}],
        "provenance": None,
    }
    to_llava([row], tmp_path / "x.json", tmp_path / "images")
    [record] = json.loads((tmp_path / "x.json").read_text())
    name = record["image"]
    assert "/" not in name
    assert name.endswith(".jpg")
    assert not name.startswith(".")
    assert (tmp_path / "images" / name).read_bytes() == jpeg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "x.json"]


def test_an_existing_image_file_is_never_replaced(tmp_path: Path) -> None:
    path, images, _ = write_povid(tmp_path / "in")
    pairs = from_llava(path, images)
    other = tmp_path / "other"
    other.mkdir()
    (other / "COCO_train2014_000000033471.jpg").write_bytes(b"mine")
    with pytest.raises(DatasetFormatError, match="already exists with other content"):
        to_llava(pairs, tmp_path / "y.json", other)
    assert (other / "COCO_train2014_000000033471.jpg").read_bytes() == b"mine"


def test_llava_image_paths_stay_inside_the_image_folder(tmp_path: Path) -> None:
    path, images, records = write_povid(tmp_path / "in")
    records[0]["image"] = "../povid_17k.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetFormatError, match="relative path inside the image folder"):
        from_llava(path, images)


def test_a_placeholder_without_newline_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, images, records = write_povid(tmp_path / "in")
    for key in ("conversations", "rejected_conversations"):
        records[0][key][0]["value"] = "<image>What?"
    records[0]["extra"] = 1
    path.write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING, logger="povidgen"):
        pairs = from_llava(path, images)
    assert pairs[0]["prompt"][0]["content"][1]["text"] == "What?"
    assert "1 turn(s) put <image> without a newline" in caplog.text
    assert "not kept in the pairs: extra" in caplog.text


def test_export_never_overwrites_what_it_did_not_write(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["export", str(built), "--out", str(mine), "--overwrite"]) == 2
    assert "is not a povidgen export" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"
    afile = tmp_path / "file.json"
    afile.write_text("{}")
    assert main(["export", str(built), "--out", str(afile)]) == 2
    assert afile.read_text() == "{}"
    assert main(["export", str(built), "--out", str(built / "inside")]) == 2
    assert "input" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(built), "--format", "llava", "--out", str(empty)]) == 0
    assert (empty / EXPORT_MARKER).is_file()
    assert main(["export", str(built), "--format", "vlfeedback", "--out", str(empty)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert detect_format(empty) == "llava"
    command = ["export", str(built), "--format", "vlfeedback", "--out", str(empty)]
    assert main([*command, "--overwrite"]) == 0
    assert detect_format(empty) == "vlfeedback"
    assert not (empty / "images").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_sources_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["export", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]) == 2
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": "nope"}]))
    assert main(["export", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert all(line.startswith("povidgen: error: ") for line in err)
    assert not (tmp_path / "o").exists()
