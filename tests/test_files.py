"""Reading input datasets from the formats the CLI accepts."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from povidgen import DatasetFormatError, load_examples_file

ROWS = [
    {"id": "a", "image": "a.png", "question": "What is it?", "answer": "A cat."},
    {"id": "b", "image": "b.png", "question": "Where?", "answer": "On the left."},
]

LLAVA = [
    {
        "id": "000000001",
        "image": "COCO_train2014_000000000001.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is on the table?"},
            {"from": "gpt", "value": "Two red apples."},
            {"from": "human", "value": "And to the left?"},
            {"from": "gpt", "value": "A cup."},
        ],
    },
    {"id": "2", "conversations": [{"from": "human", "value": "Hi"}]},
]


def test_jsonl_and_json_and_parquet_and_saved_folders(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    reference = datasets.Dataset.from_list(ROWS)
    reference.to_parquet(str(tmp_path / "rows.parquet"))
    reference.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": reference, "test": reference}).save_to_disk(str(tmp_path / "dd"))
    for path in ("rows.jsonl", "rows.json", "rows.parquet", "saved"):
        loaded = load_examples_file(tmp_path / path)
        assert loaded.to_list() == ROWS, path
    assert load_examples_file(tmp_path / "dd", split="test").to_list() == ROWS
    with pytest.raises(DatasetFormatError, match=r"no split 'dev': it holds the splits \['test'"):
        load_examples_file(tmp_path / "dd", split="dev")


def test_a_folder_of_splits_reads_train_unless_told(tmp_path: Path) -> None:
    """As ``--split``'s help says: 'train' if there is one; else a split must be named."""
    train, test = datasets.Dataset.from_list(ROWS[:1]), datasets.Dataset.from_list(ROWS[1:])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    assert load_examples_file(tmp_path / "dd").to_list() == ROWS[:1]
    assert load_examples_file(tmp_path / "dd", split="test").to_list() == ROWS[1:]
    datasets.DatasetDict({"dev": train, "test": test}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(DatasetFormatError, match=r"holds the splits \['dev', 'test'\]; choose"):
        load_examples_file(tmp_path / "no_train")


def test_llava_records_are_flattened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(LLAVA))
    with caplog.at_level("WARNING", logger="povidgen"):
        rows = load_examples_file(path).to_list()
    assert "1 of 2 LLaVA records have several exchanges" in caplog.text
    assert rows[0]["id"] == "000000001"
    assert rows[0]["image"] == "COCO_train2014_000000000001.jpg"
    assert rows[0]["prompt"] == "<image>\nWhat is on the table?"
    assert rows[0]["answer"] == "Two red apples."
    assert json.loads(rows[0]["conversations"]) == LLAVA[0]["conversations"]
    assert rows[1]["image"] is None
    assert rows[1]["answer"] == ""  # becomes a per-row error in the builder, not a lost row


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("obj.json", '{"a": 1}', "list of JSON objects"),
        ("empty.json", "[]", "no records"),
        ("data.csv", "a,b\n1,2\n", "cannot tell the format"),
        ("bad.parquet", "not parquet", "cannot read parquet"),
    ],
)
def test_bad_files_say_why(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetFormatError, match=message):
        load_examples_file(path)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="no dataset at"):
        load_examples_file(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetFormatError, match="not a datasets save_to_disk folder"):
        load_examples_file(tmp_path / "folder")
