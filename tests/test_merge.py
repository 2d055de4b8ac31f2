"""``povidgen merge``: the shares of a ``--num-shards`` build joined equal one run, byte for
byte; what cannot be merged is refused with the folder and the reason; the output folder's
rules hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from povidgen import DiffusionNoise, OutputFolderError, PairBuilder, ShardLimits, load_pairs
from povidgen.cli import main
from povidgen.pairs.merge import MergeError, MergeReport, merge_builds
from povidgen.pairs.output import MARKER
from povidgen.pairs.shards import ERRORS, MANIFEST, SUMMARY, read_manifest
from povidgen.sources.demo import demo_dataset

DEMO = ["build", "--demo", "--demo-size", "24", "--shard-rows", "5"]


def cli_build(out: Path, *extra: str) -> None:
    assert main([*DEMO, "--out", str(out), *extra]) == 0


def cli_shares(folder: Path, count: int = 3, *extra: str) -> list[Path]:
    shares = [folder / f"share-{i}" for i in range(count)]
    for index, share in enumerate(shares):
        cli_build(share, "--num-shards", str(count), "--shard-index", str(index), *extra)
    return shares


def scenes(n: int = 30) -> list[dict[str, Any]]:
    """Demo rows, with a broken image at row 4, a repeated id at row 20 and a row without its
    question at row 25 (three failures, at the image and input stages)."""
    rows = [dict(row) for row in demo_dataset(n=n, seed=0)]
    rows[4]["image"] = b"not an image"
    rows[20]["id"] = rows[2]["id"]
    del rows[25]["question"]
    return rows


def build(rows: list[dict[str, Any]], out: Path, limits: ShardLimits, **options: Any) -> None:
    builder = PairBuilder.from_dataset(
        rows,
        prompt_column="question",
        id_column="id",
        distorter=DiffusionNoise(step=500),
        shard_limits=limits,
        workers=2,
        **options,
    )
    assert builder.run(out).complete


def manifest(folder: Path) -> list[dict[str, Any]]:
    """The manifest lines without time and cost (which differ between any two runs)."""
    lines = (folder / MANIFEST).read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("seconds", "cost_usd")}
        for line in lines
    ]


def assert_same_build(merged: Path, whole: Path) -> None:
    """``merged`` holds what the single run ``whole`` wrote, byte for byte."""
    names = sorted(p.name for p in (whole / "data").iterdir())
    assert sorted(p.name for p in (merged / "data").iterdir()) == names
    for name in names:
        assert (merged / "data" / name).read_bytes() == (whole / "data" / name).read_bytes(), name
    assert (merged / ERRORS).read_bytes() == (whole / ERRORS).read_bytes()
    assert manifest(merged) == manifest(whole)
    marker = json.loads((merged / MARKER).read_text())
    assert marker["configuration"] == json.loads((whole / MARKER).read_text())["configuration"]
    summary, single = (json.loads((f / SUMMARY).read_text()) for f in (merged, whole))
    for key in ("complete", "rows", "pairs", "failed", "failures", "shards", "configuration"):
        assert summary[key] == single[key], key
    assert load_pairs(merged)["id"] == load_pairs(whole)["id"]


def tree(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {
        p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The CLI demo built once whole and once as three shares."""
    folder = tmp_path_factory.mktemp("demo")
    cli_build(folder / "whole")
    return folder / "whole", cli_shares(folder)


def test_the_cli_merge_of_three_shares_equals_one_run(
    demo: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, shares = demo
    assert [len(load_pairs(s)) for s in shares] != [8, 8, 8]  # shares by id, not by position
    out = tmp_path / "merged"
    before = {s: tree(s) for s in shares}
    capsys.readouterr()
    assert main(["merge", str(out), *(str(s) for s in reversed(shares))]) == 0
    printed = capsys.readouterr().out
    assert "pairs:        24" in printed
    assert "rows failed:  0" in printed
    assert_same_build(out, whole)
    assert len(read_manifest(out)) == 5
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["configuration"]["num_shards"] == 1
    assert [m["shard_index"] for m in summary["merged_from"]] == [0, 1, 2]
    assert summary["runs"] == 3
    assert summary["seconds"] > 0
    assert {s: tree(s) for s in shares} == before  # the inputs are only read


@pytest.mark.parametrize(
    "limits",
    [
        ShardLimits(max_rows=7),  # shards close on rows
        ShardLimits(max_bytes=400_000),  # ...on bytes (a row is about 155 kB)
        ShardLimits(max_rows=7, group_rows=3),  # row groups as recorded in the configuration
    ],
)
def test_failed_rows_merge_too(tmp_path: Path, limits: ShardLimits) -> None:
    rows = scenes()
    whole = tmp_path / "whole"
    build(rows, whole, limits)
    shares = [tmp_path / f"share-{i}" for i in range(3)]
    for index, share in enumerate(shares):
        build(rows, share, limits, num_shards=3, shard_index=index)
    out = tmp_path / "merged"
    report = merge_builds(out, shares)
    assert report == MergeReport(rows=30, pairs=27, failed=3, shards=len(read_manifest(whole)))
    assert [json.loads(line)["index"] for line in (out / ERRORS).read_text().splitlines()] == [
        4,
        20,
        25,
    ]
    assert_same_build(out, whole)
    assert set(json.loads((out / SUMMARY).read_text())["failures"]) == {"image", "input"}


def test_an_empty_build_merges_to_the_empty_dataset(tmp_path: Path) -> None:
    limits = ShardLimits(max_rows=7)
    build([], tmp_path / "whole", limits)
    shares = [tmp_path / "a", tmp_path / "b"]
    for index, share in enumerate(shares):
        build([], share, limits, num_shards=2, shard_index=index)
    report = merge_builds(tmp_path / "merged", shares)
    assert (report.rows, report.pairs, report.shards) == (0, 0, 1)
    assert_same_build(tmp_path / "merged", tmp_path / "whole")


def test_a_finished_merge_is_left_alone_unless_overwrite(
    demo: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, shares = demo
    out = tmp_path / "merged"
    merge_builds(out, shares)
    before = tree(out)
    again = merge_builds(out, shares)
    assert again.already_complete
    assert (again.rows, again.pairs, again.shards) == (24, 24, 5)
    assert tree(out) == before
    replaced = merge_builds(out, shares, overwrite=True)
    assert not replaced.already_complete
    assert replaced.pairs == 24


def test_shares_of_other_configurations_are_refused(
    demo: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, shares = demo
    other = tmp_path / "seed-1"
    cli_build(other, "--num-shards", "3", "--shard-index", "1", "--seed", "1")
    with pytest.raises(MergeError, match=rf"{other} was built with another configuration") as info:
        merge_builds(tmp_path / "out", [shares[0], other, shares[2]])
    assert f"seed: 1 in {other}, 0 in {shares[0]}" in str(info.value)
    assert not (tmp_path / "out").exists()

    split_in_two = tmp_path / "two"
    cli_build(split_in_two, "--num-shards", "2", "--shard-index", "1")
    with pytest.raises(MergeError, match=r"num_shards: 2 in .*two, 3 in"):
        merge_builds(tmp_path / "out", [shares[0], split_in_two, shares[2]])


def test_a_missing_or_repeated_share_is_refused(
    demo: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, shares = demo
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=r"split into 3 shares .* 2 folders were given; missing "):
        merge_builds(out, shares[:2])
    with pytest.raises(MergeError, match=r"missing shard index 2"):
        merge_builds(out, shares[:2])
    with pytest.raises(MergeError, match=rf"{shares[0]} and {shares[0]} are both shard 0 of 3"):
        merge_builds(out, [shares[0], shares[1], shares[0]])
    with pytest.raises(MergeError, match=r"both shard 1 of 3"):
        merge_builds(out, [*shares, shares[1]])
    assert main(["merge", str(out), str(shares[0]), str(shares[2])]) == 2
    err = capsys.readouterr().err
    assert "povidgen: error:" in err
    assert "missing shard index 1" in err
    assert not out.exists()


def interrupted_demo(out: Path, *, num_shards: int, shard_index: int) -> None:
    """The library's equivalent of the CLI demo build, stopped with Ctrl-C after 3 rows."""
    done = [0]

    def stop_after_three(count: int) -> None:
        done[0] += count
        if done[0] >= 3:
            raise KeyboardInterrupt

    builder = PairBuilder.from_dataset(
        demo_dataset(n=24, seed=0),
        prompt_column="question",
        id_column="id",
        distorter=DiffusionNoise(step=500),
        shard_limits=ShardLimits(max_rows=5),
        num_shards=num_shards,
        shard_index=shard_index,
        source="demo(n=24, seed=0)",
    )
    with pytest.raises(KeyboardInterrupt):
        builder.run(out, progress=stop_after_three)


def test_an_unfinished_share_is_refused(demo: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, shares = demo
    unfinished = tmp_path / "share-1"
    interrupted_demo(unfinished, num_shards=3, shard_index=1)
    with pytest.raises(MergeError, match=rf"{unfinished} holds an unfinished build .*interrupted"):
        merge_builds(tmp_path / "out", [shares[0], unfinished, shares[2]])
    assert not (tmp_path / "out").exists()


def test_an_unfinished_single_run_of_the_same_build_is_finished_by_the_merge(
    demo: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    whole, shares = demo
    out = tmp_path / "pairs"
    interrupted_demo(out, num_shards=1, shard_index=0)
    assert json.loads((out / SUMMARY).read_text())["complete"] is False
    report = merge_builds(out, shares)
    assert not report.already_complete
    assert_same_build(out, whole)


def test_what_is_not_a_finished_povidgen_build_is_refused(
    demo: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, shares = demo
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(MergeError, match=rf"{plain} is not a povidgen build output"):
        merge_builds(tmp_path / "out", [shares[0], plain, shares[2]])
    with pytest.raises(MergeError, match=r"is not a folder"):
        merge_builds(tmp_path / "out", [shares[0], tmp_path / "absent", shares[2]])
    with pytest.raises(MergeError, match=r"none was given"):
        merge_builds(tmp_path / "out", [])


def test_a_changed_shard_file_fails_the_merge_and_leaves_nothing(
    demo: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, shares = demo
    copies = [tmp_path / s.name for s in shares]
    for share, copy in zip(shares, copies, strict=True):
        shutil.copytree(share, copy)
    shard = copies[2] / read_manifest(copies[2])[-1].shard
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    out = tmp_path / "out" / "merged"
    with pytest.raises(MergeError, match=r"share-2: data/train-\d+\.parquet does not match"):
        merge_builds(out, copies)
    assert list((tmp_path / "out").iterdir()) == []  # no output, no staging, no lock left

    # an earlier merge there is kept when a later one fails
    shutil.copyfile(shares[2] / read_manifest(shares[2])[-1].shard, shard)
    merge_builds(out, copies)
    before = tree(out)
    (copies[0] / ERRORS).write_text("tampered\n")
    with pytest.raises(MergeError, match=r"share-0: errors.jsonl holds"):
        merge_builds(out, copies, overwrite=True)
    assert tree(out) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["merged"]


def test_the_output_folder_rules_hold(
    demo: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, shares = demo
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="not a povidgen output folder"):
            merge_builds(precious, shares, overwrite=overwrite)
    assert main(["merge", str(precious), *map(str, shares), "--overwrite"]) == 2
    assert "not a povidgen output folder" in capsys.readouterr().err
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    assert (precious / "thesis.tex").read_text() == "do not delete"

    with pytest.raises(OutputFolderError, match="input"):
        merge_builds(shares[0], shares, overwrite=True)
    with pytest.raises(OutputFolderError, match="input"):
        merge_builds(shares[0] / "inside", shares)

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputFolderError, match="symbolic link"):
        merge_builds(link, shares)
    assert not (tmp_path / "elsewhere").exists()

    # another build there: refused without --overwrite, replaced with it
    other = tmp_path / "other"
    cli_build(other, "--seed", "7")
    before = tree(other)
    with pytest.raises(OutputFolderError, match=r"another configuration \(seed: 7 there, 0 now"):
        merge_builds(other, shares)
    assert tree(other) == before
    merge_builds(other, shares, overwrite=True)
    assert_same_build(other, whole)

    # the single run itself is this build, finished: left alone
    copy = tmp_path / "whole"
    shutil.copytree(whole, copy)
    before = tree(copy)
    assert merge_builds(copy, shares).already_complete
    assert tree(copy) == before
