"""Inputs through ``datasets.load_dataset``: ``--dataset`` and ``PairBuilder.from_dataset`` take
a Hub id or a local folder of data files, with ``--dataset-config``, ``--split`` and
``--streaming``.

Nothing goes to the network (``HF_HUB_OFFLINE=1``, see conftest): local folders of parquet and
JSON Lines files take the same code path as a Hub id, and an id that is not cached is a one-line
error."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path
from typing import Any

import datasets
import pytest

from povidgen import DatasetFormatError, OutputFolderError, PairBuilder, load_pairs
from povidgen.cli import main
from povidgen.pairs.shards import ERRORS, SUMMARY, ShardLimits
from povidgen.sources.demo import demo_dataset
from povidgen.sources.hub import looks_like_hub_id, open_input

COLUMNS = ["--prompt-column", "question", "--id-column", "id", "--distorter", "none"]
LIMITS = ShardLimits(max_rows=4, group_rows=2)


def parquet_folder(folder: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """A folder of ``<split>.parquet`` files of demo scenes (images embedded), as a Hub
    dataset repository holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (split, rows) in enumerate(splits.items()):
        demo_dataset(n=rows, seed=seed + offset).to_parquet(str(folder / f"{split}.parquet"))
    return folder


@pytest.fixture
def hub_folder(tmp_path: Path) -> Path:
    return parquet_folder(tmp_path / "hub", {"train": 9})


def built(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out / SUMMARY).read_text())
    return summary


def same_output(first: Path, second: Path) -> None:
    names = sorted(p.name for p in (first / "data").iterdir())
    assert names == sorted(p.name for p in (second / "data").iterdir())
    for name in names:
        assert filecmp.cmp(first / "data" / name, second / "data" / name, shallow=False), name
    assert (first / ERRORS).read_bytes() == (second / ERRORS).read_bytes()


def test_a_folder_of_parquet_files_is_read_by_load_dataset(
    hub_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pairs"
    assert main(["build", "--dataset", str(hub_folder), *COLUMNS, "--out", str(out)]) == 0
    pairs = load_pairs(out)
    assert pairs["id"] == demo_dataset(n=9, seed=0)["id"]
    source = built(out)["configuration"]["source"]
    assert source.startswith(f"load_dataset {hub_folder.resolve()} (config default, split train")
    assert "fingerprint " in source


def test_a_folder_of_jsonl_with_image_paths(tmp_path: Path) -> None:
    folder = tmp_path / "jsonl"
    (folder / "images").mkdir(parents=True)
    rows = []
    for row in demo_dataset(n=4, seed=1).cast_column("image", datasets.Image(decode=False)):
        name = f"images/{row['id']}.png"
        (folder / name).write_bytes(row["image"]["bytes"])
        rows.append({"id": row["id"], "image": name, "question": row["question"]})
        rows[-1]["answer"] = row["answer"]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs"
    # relative image paths point into the dataset's folder by default
    assert main(["build", "--dataset", str(folder), *COLUMNS, "--out", str(out)]) == 0
    assert load_pairs(out)["id"] == [r["id"] for r in rows]
    assert built(out)["failed"] == 0


def test_splits_default_to_train_or_the_only_one(tmp_path: Path) -> None:
    several = parquet_folder(tmp_path / "several", {"train": 3, "test": 2})
    assert len(open_input(several).dataset) == 3  # type: ignore[arg-type]
    test = open_input(several, split="test")
    assert len(test.dataset) == 2  # type: ignore[arg-type]
    assert "split test" in test.source
    assert test.source != open_input(several).source
    only = parquet_folder(tmp_path / "only", {"validation": 2})
    assert len(open_input(only).dataset) == 2  # type: ignore[arg-type]
    assert "split validation" in open_input(only).source


def test_a_missing_split_is_a_one_line_error_listing_the_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = parquet_folder(tmp_path / "dd", {"validation": 2, "test": 2})
    with pytest.raises(DatasetFormatError, match="validation, test and none is 'train'"):
        open_input(folder)
    out = tmp_path / "pairs"
    capsys.readouterr()  # the progress bars of writing the folder
    assert main(["build", "--dataset", str(folder), "--split", "dev", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "has no split 'dev'; its splits are: validation, test" in error
    assert (
        main(["build", "--dataset", str(folder), "--dataset-config", "nope", "--out", str(out)])
        == 2
    )
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"load_dataset('{folder.resolve()}', name='nope') failed" in error
    assert "Traceback" not in error


def test_streaming_builds_the_same_pairs(hub_folder: Path, tmp_path: Path) -> None:
    args = ["build", "--dataset", str(hub_folder), *COLUMNS]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--streaming", "--out", str(tmp_path / "streamed")]) == 0
    same_output(tmp_path / "whole", tmp_path / "streamed")
    # the same data, the same source: one may resume the other
    whole, streamed = built(tmp_path / "whole"), built(tmp_path / "streamed")
    assert whole["configuration"] == streamed["configuration"]


def test_limit_with_streaming_takes_the_first_rows(
    hub_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pairs"
    args = ["build", "--dataset", str(hub_folder), *COLUMNS, "--streaming", "--limit", "3"]
    assert main([*args, "--out", str(out)]) == 0
    assert load_pairs(out)["id"] == demo_dataset(n=9, seed=0)["id"][:3]
    assert built(out)["configuration"]["source"].endswith("(first 3 rows)")
    assert "rows read:    3" in capsys.readouterr().out


def test_an_unknown_id_offline_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no local folder by that name
    out = tmp_path / "pairs"
    assert main(["build", "--dataset", "someone/no-such-set", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("povidgen: error: load_dataset('someone/no-such-set') failed")
    assert "HF_HUB_OFFLINE is set" in error
    assert "no local path someone/no-such-set" in error
    assert not out.exists()
    with pytest.raises(DatasetFormatError, match=r"load_dataset\('plain', name='x'\) failed"):
        PairBuilder.from_dataset("plain", config="x")


def test_hub_ids_and_paths() -> None:
    assert looks_like_hub_id("HuggingFaceM4/VQAv2")
    assert looks_like_hub_id("mnist")
    for text in ["data.jsonl", "rows.parquet", "./x", "/abs/x", "a/b/c", "a--b/c", "~/x"]:
        assert not looks_like_hub_id(text), text


def interrupt_after(rows: int) -> Any:
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        if done[0] >= rows:
            raise KeyboardInterrupt

    return progress


def builder(dataset: Any, **options: Any) -> PairBuilder:
    settings: dict[str, Any] = {
        "prompt_column": "question",
        "id_column": "id",
        "shard_limits": LIMITS,
        "workers": 2,
    }
    settings.update(options)
    return PairBuilder.from_dataset(dataset, **settings)


def test_a_resumed_streaming_build_equals_a_whole_one(hub_folder: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    assert builder(str(hub_folder)).run(whole).complete
    out = tmp_path / "streamed"
    for stop in (2, 5):
        with pytest.raises(KeyboardInterrupt):
            builder(hub_folder, streaming=True).run(out, progress=interrupt_after(stop))
        assert built(out)["complete"] is False
    report = builder(hub_folder, split="train", streaming=True).run(out)
    assert report.complete
    assert report.resumed_rows > 0
    assert report.rows + report.resumed_rows == 9
    same_output(whole, out)
    # started streamed, finished downloaded: the same input, so it resumes too
    mixed = tmp_path / "mixed"
    with pytest.raises(KeyboardInterrupt):
        builder(hub_folder, streaming=True).run(mixed, progress=interrupt_after(3))
    assert builder(hub_folder).run(mixed).resumed_rows > 0
    same_output(whole, mixed)


def test_a_resume_against_changed_data_is_refused(tmp_path: Path) -> None:
    folder = parquet_folder(tmp_path / "hub", {"train": 5})
    out = tmp_path / "pairs"
    with pytest.raises(KeyboardInterrupt):
        builder(folder, streaming=True).run(out, progress=interrupt_after(2))
    parquet_folder(folder, {"train": 5}, seed=7)  # new rows in the same file
    later = (folder / "train.parquet").stat().st_mtime + 10
    os.utime(folder / "train.parquet", (later, later))  # whatever the clock's resolution
    with pytest.raises(OutputFolderError, match="source"):
        builder(folder, streaming=True).run(out)


def test_from_dataset_takes_files_and_rejects_hub_options_for_objects(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    demo_dataset(n=3, seed=0).to_parquet(str(path))
    pairs = builder(str(path), distorter=None).build(tmp_path / "pairs")
    assert len(pairs) == 3
    with pytest.raises(DatasetFormatError, match="config apply to a Hub id"):
        builder(path, config="default")
