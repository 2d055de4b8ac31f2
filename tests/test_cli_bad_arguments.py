"""Every CLI command with a table of bad arguments: exit code 2, one line, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from povidgen.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-arguments")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "in.png")
    (root / "bad.jsonl").write_text('{"image": "a.png", "prompt": "q", "answer": "a"}\n{oops\n')
    (root / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    (root / "list.json").write_text('{"not": "a list"}')
    (root / "empty.jsonl").write_text("\n")
    (root / "folder").mkdir()
    (root / "dangling").symlink_to(root / "gone")
    os.mkfifo(root / "pipe.jsonl")
    (root / "file.txt").write_text("x")
    assert main(["build", "--demo", "--demo-size", "2", "--out", str(root / "pairs")]) == 0
    return root


BUILD = ["build", "--demo", "--demo-size", "2"]

CASES = [
    # build: flags
    [*BUILD, "--out", "{o}", "--concurrency", "0"],
    [*BUILD, "--out", "{o}", "--concurrency", "many"],
    [*BUILD, "--out", "{o}", "--noise-step", "1000"],
    [*BUILD, "--out", "{o}", "--noise-step", "-1"],
    [*BUILD, "--out", "{o}", "--seed", str(2**63)],
    [*BUILD, "--out", "{o}", "--seed", "-1"],
    [*BUILD, "--out", "{o}", "--demo-size", "0"],
    [*BUILD, "--out", "{o}", "--limit", "-1"],
    [*BUILD, "--out", "{o}", "--rpm", "0"],
    [*BUILD, "--out", "{o}", "--max-cost", "nan"],
    [*BUILD, "--out", "{o}", "--max-image-pixels", "0"],
    [*BUILD, "--out", "{o}", "--overflow", "explode"],
    [*BUILD, "--out", "{o}", "--distorter", "smudge"],
    [*BUILD, "--out", "{o}", "--provider", "nobody"],
    [*BUILD, "--out", "{o}", "--max-cost", "3"],  # only for model providers
    [*BUILD, "--out", "{o}", "--provider", "transformers", "--model", "/no/such/model"],
    [*BUILD, "--out", "{o}", "--provider", "transformers", "--model", "{r}/file.txt"],
    [*BUILD],  # no --out
    ["build", "--out", "{o}"],  # no source
    # build: outputs
    [*BUILD, "--out", "{r}/dangling"],
    [*BUILD, "--out", "{r}/file.txt"],
    [*BUILD, "--out", "{r}/folder/../file.txt/sub"],
    [*BUILD, "--out", "/proc/povidgen-out"],
    ["build", "--dataset", "{r}/pairs", "--out", "{r}/pairs", "--overwrite"],
    ["build", "--dataset", "{r}/pairs", "--out", "{r}", "--overwrite"],
    # build: inputs
    ["build", "--dataset", "{r}/bad.jsonl", "--out", "{o}"],
    ["build", "--dataset", "{r}/latin1.jsonl", "--out", "{o}"],
    ["build", "--dataset", "{r}/list.json", "--out", "{o}"],
    ["build", "--dataset", "{r}/empty.jsonl", "--out", "{o}"],
    ["build", "--dataset", "{r}/pipe.jsonl", "--out", "{o}"],
    ["build", "--dataset", "/dev/zero", "--out", "{o}"],
    ["build", "--dataset", "{r}/missing.jsonl", "--out", "{o}"],
    ["build", "--dataset", "{r}/pairs", "--out", "{o}", "--image-column", "nope"],
    ["build", "--dataset", "{r}/pairs", "--out", "{o}", "--split", "test"],
    # preview
    ["preview", "{r}/folder", "--out", "{o}.png"],
    ["preview", "{r}/pairs", "--out", "{r}/folder"],
    ["preview", "{r}/pairs", "--out", "{o}.png", "-n", "0"],
    ["preview", "/dev/null", "--out", "{o}.png"],
    # distort
    ["distort", "{r}/in.png", "--distorter", "smudge", "--out", "{o}.png"],
    ["distort", "{r}/in.png", "--distorter", "diffusion", "--severity", "9", "--out", "{o}.png"],
    ["distort", "{r}/in.png", "--distorter", "diffusion", "--out", "{r}/folder"],
    ["distort", "{r}/missing.png", "--distorter", "diffusion", "--out", "{o}.png"],
    ["distort", "/dev/zero", "--distorter", "diffusion", "--out", "{o}.png"],
    ["distort", "{r}/bad.jsonl", "--distorter", "diffusion", "--out", "{o}.png"],
    ["distort", "{r}/in.png", "--distorter", "diffusion", "--seed", "x", "--out", "{o}.png"],
    # no command, unknown command
    [],
    ["shred"],
]


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c)[:60] for c in CASES])
def test_bad_arguments_are_one_line_with_exit_2(
    files: Path, tmp_path: Path, case: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(r=files, o=tmp_path / "out") for a in case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("povidgen: error: ")
    assert not (tmp_path / "out").exists()  # nothing written
