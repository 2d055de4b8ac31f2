"""The streaming build: shards written as rows finish, resume with the same bytes, the folder's
configuration, shares by id, and what a stopped run leaves."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from povidgen import (
    DiffusionNoise,
    Example,
    Hallucination,
    Hallucinator,
    OutputFolderError,
    PairBuilder,
    RuleHallucinator,
    RunStoppedError,
    ShardLimits,
    load_pairs,
)
from povidgen.pairs.shards import ERRORS, MANIFEST, SUMMARY, ShardWriter, read_manifest
from povidgen.sources.demo import demo_dataset

LIMITS = ShardLimits(max_rows=7, group_rows=3)


def scenes(n: int = 30) -> list[dict[str, Any]]:
    """Demo rows, with a broken image at row 4 and a repeated id at row 20 (two failures)."""
    rows = [dict(row) for row in demo_dataset(n=n, seed=0)]
    rows[4]["image"] = b"not an image"
    if n > 20:
        rows[20]["id"] = rows[2]["id"]
    return rows


def builder(rows: list[dict[str, Any]], **options: Any) -> PairBuilder:
    settings: dict[str, Any] = {
        "prompt_column": "question",
        "id_column": "id",
        "distorter": DiffusionNoise(step=500),
        "shard_limits": LIMITS,
        "workers": 2,
    }
    settings.update(options)
    return PairBuilder.from_dataset(rows, **settings)


def interrupt_after(rows: int) -> Any:
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        if done[0] >= rows:
            raise KeyboardInterrupt

    return progress


def same_output(first: Path, second: Path) -> None:
    names = sorted(p.name for p in (first / "data").iterdir())
    assert names == sorted(p.name for p in (second / "data").iterdir())
    for name in names:
        assert filecmp.cmp(first / "data" / name, second / "data" / name, shallow=False), name
    assert (first / ERRORS).read_bytes() == (second / ERRORS).read_bytes()
    assert (first / MANIFEST).read_text().count("\n") == (second / MANIFEST).read_text().count("\n")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "pairs"
    report = builder(scenes()).run(out)
    assert report.complete
    assert (report.pairs, report.failed) == (28, 2)
    return out


def test_shards_manifest_errors_and_summary(reference: Path) -> None:
    segments = read_manifest(reference)
    assert [s.shard for s in segments] == [f"data/train-{i:05d}.parquet" for i in range(5)]
    assert [(s.first, s.end) for s in segments] == [(0, 7), (7, 14), (14, 21), (21, 28), (28, 30)]
    assert sum(s.pairs for s in segments) == 28
    assert segments[0].positions == [0, 1, 2, 3, 5, 6]  # row 4 failed
    errors = [json.loads(line) for line in (reference / ERRORS).read_text().splitlines()]
    assert [(e["index"], e["stage"]) for e in errors] == [(4, "image"), (20, "input")]
    summary = json.loads((reference / SUMMARY).read_text())
    assert summary["complete"] is True
    assert (summary["rows"], summary["pairs"], summary["failed"]) == (30, 28, 2)
    assert set(summary["failures"]) == {"image", "input"}
    assert "duplicate id" in next(iter(summary["failures"]["input"]))
    assert summary["configuration"]["distorter"]["name"] == "diffusion"
    assert summary["povidgen_version"]
    assert summary["rows_per_second"] > 0
    # the standard loaders read the same rows, in input order
    pairs = datasets.load_dataset(str(reference), split="train")
    ids = [r["id"] for r in scenes()]
    assert pairs["id"] == [i for k, i in enumerate(ids) if k not in (4, 20)]
    assert isinstance(pairs[0]["rejected_images"][0], Image.Image)
    assert load_pairs(reference)["id"] == pairs["id"]


def test_image_bytes_are_stored_as_they_are_and_text_compressed(reference: Path) -> None:
    """Encoded images do not compress and their min/max statistics are useless: the shards
    store them plain, with no dictionary and no statistics; text keeps snappy."""
    import pyarrow.parquet as pq

    shard = reference / read_manifest(reference)[0].shard
    group = pq.ParquetFile(shard).metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    for path in ("images.list.element.bytes", "rejected_images.list.element.bytes"):
        assert columns[path].compression == "UNCOMPRESSED"
        assert not columns[path].is_stats_set
        assert not columns[path].has_dictionary_page
    text = columns["chosen.list.element.content.list.element.text"]
    assert text.compression == "SNAPPY"
    assert text.is_stats_set


@pytest.mark.parametrize("stops", [[1], [6], [7], [16, 5], [29], [3, 3, 3, 3, 3]])
def test_an_interrupted_build_resumes_to_the_same_bytes(
    reference: Path, tmp_path: Path, stops: list[int]
) -> None:
    out = tmp_path / "pairs"
    for stop in stops:
        with pytest.raises(KeyboardInterrupt):
            builder(scenes()).run(out, progress=interrupt_after(stop))
        summary = json.loads((out / SUMMARY).read_text())
        assert summary["complete"] is False
        assert summary["stopped"] == "interrupted"
    resumed = builder(scenes())
    report = resumed.run(out)
    assert report.complete
    assert report.resumed_rows > 0
    assert report.rows + report.resumed_rows == 30
    assert (report.pairs, report.failed) == (28, 2)
    assert [e.index for e in resumed.errors] == [4, 20]
    same_output(reference, out)
    assert json.loads((out / SUMMARY).read_text())["runs"] == len(stops) + 1


def test_a_kill_leaves_nothing_past_the_manifest_that_counts(
    reference: Path, tmp_path: Path
) -> None:
    """What a SIGKILL leaves (a partial without its sidecar, a shard and error lines written
    before their manifest line, a torn manifest line) is removed and made again."""
    out = tmp_path / "pairs"
    with pytest.raises(KeyboardInterrupt):
        builder(scenes()).run(out, progress=interrupt_after(17))
    data = out / "data"
    for sidecar in data.glob(".*.json"):
        sidecar.unlink()  # killed before the sidecar: the partial cannot be trusted
    (data / "train-00003.parquet").write_bytes(b"half a shard")
    with (out / ERRORS).open("a") as handle:
        handle.write('{"torn": ')
    with (out / MANIFEST).open("a") as handle:
        handle.write('{"shard": "data/train-00002.parq')
    report = builder(scenes()).run(out)
    assert report.complete
    same_output(reference, out)


def test_a_finished_folder_is_left_alone_and_another_configuration_is_refused(
    reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pairs"
    builder(scenes()).run(out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    report = builder(scenes()).run(out)
    assert report.already_complete
    assert (report.pairs, report.failed) == (28, 2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    with pytest.raises(OutputFolderError, match=r"seed: 0 there, 1 now"):
        builder(scenes(), seed=1).run(out)
    with pytest.raises(OutputFolderError, match=r"distorter\.params\.step: 500 there, 300 now"):
        builder(scenes(), distorter=DiffusionNoise(step=300)).run(out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    report = builder(scenes(), seed=1).run(out, overwrite=True)
    assert report.complete
    assert json.loads((out / SUMMARY).read_text())["configuration"]["seed"] == 1
    # an interrupted build with another configuration is refused the same way
    half = tmp_path / "half"
    with pytest.raises(KeyboardInterrupt):
        builder(scenes()).run(half, progress=interrupt_after(3))
    with pytest.raises(OutputFolderError, match="another configuration"):
        builder(scenes(), seed=2).run(half)


def test_a_duplicate_of_a_row_finished_before_the_interrupt_is_still_caught(
    tmp_path: Path,
) -> None:
    out = tmp_path / "pairs"
    with pytest.raises(KeyboardInterrupt):
        builder(scenes()).run(out, progress=interrupt_after(10))  # row 2 is finished
    resumed = builder(scenes())
    resumed.run(out)
    duplicate = [e for e in resumed.errors if e.index == 20]
    assert duplicate
    assert "duplicate id" in duplicate[0].reason


class _Flaky(Hallucinator):
    """The rule hallucinator, until ``fail_from`` rows: then the run stops (a quota ran out)."""

    name = "flaky"

    def __init__(self, fail_from: int | None) -> None:
        self.fail_from = fail_from
        self.calls = 0
        self.rule = RuleHallucinator()

    def params(self) -> dict[str, Any]:
        return self.rule.params()

    async def ahallucinate(self, example: Example) -> Hallucination:
        self.calls += 1
        if self.fail_from is not None and example.metadata["index"] >= self.fail_from:
            raise RunStoppedError("quota exhausted")
        return await self.rule.ahallucinate(example)


def test_a_stopped_run_writes_nothing_after_the_stop_and_resumes(
    reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pairs"
    stopped = builder(scenes(), hallucinator=_Flaky(fail_from=12))
    report = stopped.run(out)
    assert not report.complete
    assert report.stopped is not None
    assert "quota exhausted" in report.stopped
    assert report.not_attempted + report.withheld == 30 - 12
    assert len(load_pairs(out)) == 11  # rows 0-11 but the broken row 4
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["complete"] is False
    assert summary["not_attempted"] == 18

    report = builder(scenes(), hallucinator=_Flaky(fail_from=None)).run(out)
    assert report.complete
    assert report.rows == 18
    # the configuration names the hallucinator, so compare with a flaky-free run of it
    again = tmp_path / "again"
    builder(scenes(), hallucinator=_Flaky(fail_from=None)).run(again)
    same_output(again, out)


def test_rejected_images_can_be_left_out_and_remade_from_the_seed(
    reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pairs"
    builder(scenes(), store_rejected_images=False).run(out)
    lean = load_pairs(out)
    assert "rejected_images" not in lean.column_names
    full = load_pairs(reference)
    row, stored = lean[3], full[3]
    provenance = row["provenance"]
    assert provenance["distorter"] == "diffusion"
    distorter = DiffusionNoise(**json.loads(provenance["distorter_params"]))
    remade = distorter(row["images"][0].convert("RGB"), seed=provenance["example_seed"])
    assert remade.tobytes() == stored["rejected_images"][0].convert("RGB").tobytes()
    # the trainer remakes it with the same seed
    from types import SimpleNamespace

    from povidgen.train.collate import PreferenceCollator

    trainer_side = SimpleNamespace(seed=12345)
    assert (
        PreferenceCollator.distortion_seed(trainer_side, row, row["id"])
        == (  # type: ignore[arg-type]
            provenance["example_seed"]
        )
    )
    size = sum(p.stat().st_size for p in (out / "data").iterdir())
    assert size < 0.75 * sum(p.stat().st_size for p in (reference / "data").iterdir())


def test_shares_by_id_cover_the_input_once(tmp_path: Path) -> None:
    rows = scenes()
    ids: list[str] = []
    for index in range(3):
        out = tmp_path / f"share-{index}"
        builder(rows, num_shards=3, shard_index=index).run(out)
        share = load_pairs(out)["id"]
        assert 0 < len(share) < 28
        ids += share
    assert sorted(ids) == sorted(r["id"] for k, r in enumerate(rows) if k not in (4, 20))
    with pytest.raises(ValueError, match="shard_index"):
        builder(rows, num_shards=3, shard_index=3)


def test_build_returns_a_dataset_on_disk(tmp_path: Path) -> None:
    made = builder(scenes(12))
    pairs = made.build(tmp_path / "pairs")
    assert len(pairs) == 11
    assert pairs.cache_files  # memory-mapped Arrow files, not a table in RAM
    assert made.build(tmp_path / "pairs")["id"] == pairs["id"]  # resumable: nothing to do
    assert made.report.already_complete


def test_build_without_a_folder_cleans_up_its_temporary_folder(tmp_path: Path) -> None:
    # in a child process, so the clean-up at interpreter exit can be seen
    script = (
        "from povidgen import PairBuilder, RuleHallucinator\n"
        "from povidgen.sources.demo import demo_dataset\n"
        "pairs = PairBuilder.from_dataset(demo_dataset(4, seed=0), prompt_column='question',"
        " hallucinator=RuleHallucinator()).build()\n"
        "assert len(pairs) == 4, len(pairs)\n"
        "import os, tempfile\n"
        "assert any(n.startswith('povidgen-build-') for n in os.listdir(tempfile.gettempdir()))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("povidgen-build-")] == []


def test_a_failed_build_without_a_folder_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    made = builder(scenes(6))
    monkeypatch.setattr(made, "run", fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        made.build()
    assert list(tmp_path.iterdir()) == []


def test_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts: list[int] = []
    builder(scenes(10)).run(tmp_path / "a", progress=counts.append)
    assert sum(counts) == 10
    builder(scenes(10)).run(tmp_path / "b", progress=True)
    err = capsys.readouterr().err
    assert "building pairs" in err
    assert "row/s" in err
    assert "failed=1" in err


def test_an_empty_input_is_a_loadable_dataset_with_every_column(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    report = builder([]).run(out)
    assert report.complete
    assert report.pairs == 0
    empty = load_pairs(out)
    assert len(empty) == 0
    assert "rejected_images" in empty.column_names


def test_rows_out_of_order_are_refused(tmp_path: Path) -> None:
    from povidgen.pairs.trl_format import pair_features

    writer = ShardWriter(tmp_path, pair_features(with_rejected_images=False), LIMITS)
    from povidgen.schema import RowError

    writer.add_error(RowError(id="a", index=3, stage="input", reason="x", error_type="E"))
    with pytest.raises(ValueError, match="out of order"):
        writer.add_error(RowError(id="b", index=2, stage="input", reason="x", error_type="E"))


def test_a_ctrl_c_while_a_row_group_is_written_lands_between_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between a row group reaching the file and the writer's bookkeeping once left
    the group both on disk and in the buffer, so the suspended shard held it twice."""
    import os
    import signal

    import pyarrow.parquet as pq

    from povidgen.pairs.shards import iter_shard_rows, shard_files

    made = builder(scenes(6), store_rejected_images=False)
    made.run(tmp_path / "made")
    rows = list(iter_shard_rows(shard_files(tmp_path / "made")))
    assert len(rows) == 5
    write_table = pq.ParquetWriter.write_table

    def write_then_interrupt(self: Any, *args: Any, **kwargs: Any) -> None:
        write_table(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler a few bytecodes on

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_then_interrupt)
    out = tmp_path / "out"
    out.mkdir()
    writer = ShardWriter(out, made.features(), ShardLimits(max_rows=100, group_rows=2))

    def add_all() -> None:
        for index, row in enumerate(rows):
            writer.add_pair(index, row["id"], row, 1)

    with pytest.raises(KeyboardInterrupt):
        add_all()
    assert writer.pairs == 2  # the interrupt came as the second row's call returned
    monkeypatch.undo()
    writer.suspend()
    partial = out / "data" / ".train-00000.parquet.partial"
    sidecar = json.loads(partial.with_name(partial.name + ".json").read_text(encoding="utf-8"))
    assert len(sidecar["pairs"]) == 2
    assert pq.ParquetFile(partial).metadata.num_rows == 2


def test_sigterm_finishes_what_is_done_and_the_rerun_resumes(tmp_path: Path) -> None:
    """A job scheduler's preemption (SIGTERM) stops a build the way Ctrl-C does: exit 143,
    the finished rows kept in a partial shard, and the rerun resumes from them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "pairs"
    command = [sys.executable, "-m", "povidgen.cli", "build", "--demo", "--demo-size", "160"]
    command += ["--out", str(out), "--shard-rows", "1000", "--workers", "1"]
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ)
    )
    deadline = time.monotonic() + 300
    while not list((out / "data").glob(".train-00000.parquet.partial")):
        assert time.monotonic() < deadline, "the build wrote nothing"
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert b"Run the same command again to resume" in err
    assert b"Traceback" not in err
    assert (out / "data" / ".train-00000.parquet.partial.json").is_file()
    kept = json.loads((out / "data" / ".train-00000.parquet.partial.json").read_text())
    assert kept["end"] > 0

    done = subprocess.run(command, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert b"resumed:" in done.stdout
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["complete"] is True
    assert summary["rows"] == 160
    assert summary["runs"] == 2
