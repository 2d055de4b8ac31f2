"""The povidgen command line, run in-process through main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from povidgen import load_pairs
from povidgen.cli import main


def test_build_demo_then_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pairs"
    assert main(["build", "--demo", "--demo-size", "6", "--out", str(out), "--seed", "3"]) == 0
    summary = capsys.readouterr().out
    assert "pairs built:  6" in summary
    assert "rows failed:  0" in summary
    pairs = load_pairs(out)
    assert len(pairs) == 6
    assert json.loads(pairs[0]["provenance"]["hallucinator_params"])["min_edits"] == 2
    assert pairs[0]["provenance"]["seed"] == 3
    assert (out / "errors.jsonl").read_text() == ""

    sheet = out / "preview.png"
    assert main(["preview", str(out), "--out", str(sheet), "-n", "2"]) == 0
    with Image.open(sheet) as image:
        assert image.width > 200
    assert load_pairs(out).num_rows == 6  # the sheet beside it is harmless


def test_existing_output_needs_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pairs"
    args = ["build", "--demo", "--demo-size", "2", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0  # the same build, finished: reported and left alone
    assert "already holds this build" in capsys.readouterr().out
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err
    assert "seed: 0 there, 1 now" in err
    assert "pass --overwrite" in err
    assert main([*args, "--overwrite", "--distorter", "none"]) == 0
    assert "rejected_images" not in load_pairs(out).column_names

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    assert main(["build", "--demo", "--out", str(precious), "--overwrite"]) == 2
    assert "not a povidgen output folder" in capsys.readouterr().err
    assert (precious / "thesis.tex").exists()


def test_llava_json_with_an_image_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "coco"
    images.mkdir()
    Image.new("RGB", (32, 32), (0, 200, 0)).save(images / "a.jpg")
    records = [
        {
            "id": "a",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is there?"},
                {"from": "gpt", "value": "There are two green kites on the left."},
            ],
        },
        {
            "id": "b",
            "image": "missing.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is there?"},
                {"from": "gpt", "value": "A red cup."},
            ],
        },
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "out"
    code = main(["build", "--dataset", str(path), "--image-folder", str(images), "--out", str(out)])
    assert code == 0
    assert "image: 1 (image file not found" in capsys.readouterr().out
    pairs = load_pairs(out)
    assert pairs["id"] == ["a"]
    assert pairs[0]["prompt"][0]["content"][1]["text"] == "What is there?"
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["stage"]) for e in errors] == [("b", "image")]


def test_missing_column_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"img": "a.png", "question": "Q", "answer": "A"}) + "\n")
    code = main(
        [
            "build",
            "--dataset",
            str(path),
            "--prompt-column",
            "question",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "image column 'image' is not in the dataset" in error
    assert "'answer', 'img', 'question'" in error


def test_no_pairs_is_exit_code_one(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"image": "nope.png", "prompt": "Q", "answer": "A"}) + "\n")
    assert main(["build", "--dataset", str(path), "--out", str(tmp_path / "o")]) == 1
    assert (tmp_path / "o" / "errors.jsonl").read_text().count("\n") == 1


def test_preview_of_a_folder_that_is_not_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preview", str(tmp_path), "--out", str(tmp_path / "p.png")]) == 2
    assert "is not a pairs folder" in capsys.readouterr().err


def test_distort_one_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (120, 60, 200)).save(source)
    out = tmp_path / "out" / "noisy.png"
    args = [
        "distort",
        str(source),
        "--distorter",
        "diffusion",
        "--severity",
        "5",
        "--out",
        str(out),
    ]
    assert main([*args, "--seed", "3"]) == 0
    assert "DiffusionNoise(step=900" in capsys.readouterr().out
    with Image.open(out) as first:
        assert first.size == (40, 30)
        pixels = first.tobytes()
    assert main([*args, "--seed", "3"]) == 0
    with Image.open(out) as again:
        assert again.tobytes() == pixels


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--distorter", "smudge"], "no distorter named 'smudge'"),
        (["--severity", "9"], "severity must be an int from 1 to 5"),
    ],
)
def test_distort_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    source = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(source)
    assert main(["distort", str(source), "--out", str(tmp_path / "o.png"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_distort_a_file_that_is_not_an_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.png"
    source.write_text("not an image")
    assert main(["distort", str(source), "--out", str(tmp_path / "o.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_a_build_runs_with_the_heap_frozen_and_unfreezes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The collector's full passes skip what was alive before the run (they stalled every
    thread for ~0.25 s every few seconds); the heap is unfrozen after, so nothing leaks."""
    import gc

    from povidgen.pairs.builder import PairBuilder

    frozen: list[int] = []
    run = PairBuilder.run

    def recording(self: PairBuilder, *args: object, **kwargs: object) -> object:
        frozen.append(gc.get_freeze_count())
        return run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PairBuilder, "run", recording)
    before = gc.get_freeze_count()
    assert main(["build", "--demo", "--demo-size", "2", "--out", str(tmp_path / "pairs")]) == 0
    assert frozen[0] > before
    assert gc.get_freeze_count() == before


@pytest.mark.parametrize(
    ("cpus", "workers", "provider", "during"),
    [
        (4, 2, "rule", 2),  # each of 2 workers gets its share of 4 CPUs
        (4, 4, "rule", 1),
        (2, 3, "rule", 1),  # more workers than CPUs: still one thread, never zero
        (8, 2, "rule", 3),  # never more threads than torch had
        (4, 1, "rule", 3),  # one worker: left alone
        (4, 4, "transformers", 3),  # the local model runs on that pool: left alone
    ],
)
def test_a_build_shares_torchs_threads_between_its_workers(
    monkeypatch: pytest.MonkeyPatch,
    cpus: int,
    workers: int,
    provider: str,
    during: int,
) -> None:
    """Each image worker gets ``CPUs // workers`` torch intra-op threads while a build runs
    (its noise ops otherwise oversubscribed the cores), and torch gets its own back after."""
    import os

    import torch

    from povidgen.cli import _torch_threads_shared

    saved = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cpus)), raising=False)
    try:
        torch.set_num_threads(3)
        with _torch_threads_shared(workers, provider):
            assert torch.get_num_threads() == during
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError), _torch_threads_shared(workers, provider):
            raise RuntimeError("the build failed")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(saved)


def test_a_build_runs_with_torchs_threads_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's build runs inside the thread share (two workers on four CPUs: two each)."""
    import os

    import torch

    from povidgen.pairs.builder import PairBuilder

    seen: list[int] = []
    run = PairBuilder.run

    def recording(self: PairBuilder, *args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return run(self, *args, **kwargs)  # type: ignore[arg-type]

    saved = torch.get_num_threads()
    monkeypatch.setattr(PairBuilder, "run", recording)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    try:
        torch.set_num_threads(4)
        out = str(tmp_path / "pairs")
        assert main(["build", "--demo", "--demo-size", "2", "--workers", "2", "--out", out]) == 0
        assert seen == [2]
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(saved)
