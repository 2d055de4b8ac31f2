"""`povidgen build` never loses a user's data: each failure the issue reported, reproduced and
shown to hold (the input survives --overwrite, user folders survive, a killed swap leaves a
loadable dataset, two builds never share a folder, an empty result loads)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from povidgen import load_pairs
from povidgen.cli import main
from povidgen.pairs import output as output_module
from povidgen.pairs.builder import PairBuilder
from povidgen.pairs.output import MARKER, OutputFolder, OutputFolderError

DEMO = ["build", "--demo", "--demo-size", "4", "--distorter", "none"]


def build_demo(out: Path, *extra: str) -> int:
    return main([*DEMO, "--out", str(out), *extra])


def loadable(path: Path) -> int:
    return len(load_pairs(path))


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "dataset_info.json").write_text("{}")  # merely looks like a dataset
    return path


def test_the_input_survives_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert build_demo(data) == 0  # a pairs folder used as the next build's input
    before = sorted(p.name for p in data.iterdir())
    command = ["build", "--dataset", str(data), "--image-column", "images"]
    command += ["--prompt-column", "id", "--answer-column", "id", "--overwrite"]
    for out in (data, data / "inner", tmp_path):
        assert main([*command, "--out", str(out)]) == 2
        assert "input" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == before
    assert loadable(data) == 4


def test_a_user_folder_is_never_wiped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = user_folder(tmp_path / "mine")
    assert build_demo(folder, "--overwrite") == 2
    assert "is not a povidgen output folder" in capsys.readouterr().err
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_a_folder_made_during_the_run_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    real = OutputFolder.begin

    def begin_while_a_user_writes(self: OutputFolder, configuration: Any) -> Path:
        user_folder(out)  # appears between the check and the first write
        return real(self, configuration)

    monkeypatch.setattr(OutputFolder, "begin", begin_while_a_user_writes)
    assert build_demo(out) == 2
    assert "is not a povidgen output folder" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.partial")] == []


def test_a_second_build_into_the_same_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with OutputFolder(out, overwrite=False).lock():  # a build in progress
        assert build_demo(out) == 2
    assert "another povidgen build is writing" in capsys.readouterr().err
    assert build_demo(out) == 0


def test_a_failed_overwrite_keeps_the_good_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "rows.jsonl"
    rows = [
        {"id": f"r{i}", "image": "nowhere.png", "prompt": "q?", "answer": "a red cup."}
        for i in range(3)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert build_demo(out) == 0
    command = ["build", "--dataset", str(data), "--id-column", "id", "--out", str(out)]
    assert main([*command, "--overwrite"]) == 1  # the image folder was mistyped: 0 pairs
    assert "keeps its earlier dataset" in capsys.readouterr().out
    assert loadable(out) == 4
    assert main([*command, "--overwrite", "--allow-empty"]) == 1  # asked for it
    assert loadable(out) == 0


def test_an_empty_result_is_a_loadable_dataset_with_every_column(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"image": "nowhere.png", "prompt": "q?", "answer": "a cup."}))
    out = tmp_path / "out"
    assert main(["build", "--dataset", str(data), "--out", str(out)]) == 1
    empty = load_pairs(out)
    assert len(empty) == 0
    assert {"images", "prompt", "chosen", "rejected", "provenance"} <= set(empty.column_names)
    assert (out / "errors.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("where", ["exchange", "fallback-first", "fallback-second"])
def test_a_killed_swap_leaves_a_loadable_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Kill the swap of a new output for an old one at each step (the kill is an exception
    from inside the swap; the next run must find a loadable dataset and tidy up)."""
    out = tmp_path / "out"
    assert build_demo(out) == 0

    class Killed(BaseException):
        pass

    if where == "exchange":

        def killed_exchange(first: Path, second: Path) -> bool:
            raise Killed

        monkeypatch.setattr(output_module, "_exchange", killed_exchange)
    else:
        monkeypatch.setattr(output_module, "_exchange", lambda first, second: False)
        renames = []
        real_rename = os.rename

        def rename(src: Any, dst: Any) -> None:
            renames.append(dst)
            # fallback-second: the old output is moved aside, the new one not in yet
            if len(renames) == (1 if where == "fallback-first" else 2):
                raise Killed
            real_rename(src, dst)

        monkeypatch.setattr(output_module.os, "rename", rename)
    with pytest.raises(Killed):
        build_demo(out, "--overwrite", "--seed", "1")
    monkeypatch.undo()
    if where != "fallback-second":
        assert loadable(out) == 4  # the old dataset, whole
    assert build_demo(out, "--overwrite", "--seed", "2") == 0  # the next run repairs, tidies
    assert loadable(out) == 4
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers == []  # no staging, old or lock file is left behind


def test_the_exchange_is_atomic_where_the_kernel_has_it(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "x").write_text("1")
    (second / "y").write_text("2")
    if not output_module._exchange(first, second):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    assert (first / "y").exists()
    assert (second / "x").exists()


@pytest.mark.parametrize("kind", ["symlink", "dangling", "file", "unwritable"])
def test_bad_out_paths_are_refused_before_any_work(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    if kind == "symlink":
        (tmp_path / "real").mkdir()
        out.symlink_to(tmp_path / "real")
    elif kind == "dangling":
        out.symlink_to(tmp_path / "gone")
    elif kind == "file":
        out.write_text("a file")
    else:
        real_access = os.access
        monkeypatch.setattr(
            output_module.os,
            "access",
            lambda p, m: False if Path(p) == tmp_path else real_access(p, m),
        )
    called: list[bool] = []
    monkeypatch.setattr(PairBuilder, "build", lambda self, **_: called.append(True))
    assert build_demo(out) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert called == []


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert build_demo(tmp_path / "out") == 0
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
    assert mode == 0o750
    assert (tmp_path / "out" / MARKER).is_file()


def test_stale_staging_folders_of_dead_runs_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = OutputFolder(out, overwrite=False).staging()  # a run killed while writing
    (dead / "data-00000-of-00001.arrow").write_bytes(b"half")
    foreign = tmp_path / ".out.partial-notours"
    foreign.mkdir()  # no marker: not povidgen's, never touched
    assert build_demo(out) == 0
    assert not dead.exists()
    assert foreign.exists()


def test_check_errors_are_output_folder_errors(tmp_path: Path) -> None:
    folder = user_folder(tmp_path / "x")
    with pytest.raises(OutputFolderError, match="not a povidgen output folder"):
        OutputFolder(folder, overwrite=True).check()


def test_ctrl_c_exits_130_without_a_traceback_and_keeps_the_old_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert build_demo(out) == 0

    def interrupted(self: PairBuilder, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(PairBuilder, "run", interrupted)
    capsys.readouterr()
    assert build_demo(out, "--overwrite") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "povidgen: build interrupted" in err
    assert loadable(out) == 4
