"""The examples in examples/ run as documented."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from povidgen import load_pairs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_custom_hallucinator_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "custom"
    monkeypatch.setattr(sys, "argv", ["custom_hallucinator.py", str(out)])
    runpy.run_path(str(EXAMPLES / "custom_hallucinator.py"), run_name="__main__")
    assert "pairs written to" in capsys.readouterr().out
    pairs = load_pairs(out)
    assert len(pairs) >= 8
    for row in pairs:
        provenance = row["provenance"]
        assert provenance["hallucinator"] == "antonym"
        assert {e["kind"] for e in provenance["edits"]} <= {"spatial", "reasoning"}


def test_distortion_gallery_draws_every_distorter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from povidgen import available_distorters

    out = tmp_path / "gallery.png"
    monkeypatch.setattr(sys, "argv", ["distortion_gallery.py", "--out", str(out), "--size", "32"])
    runpy.run_path(str(EXAMPLES / "distortion_gallery.py"), run_name="__main__")
    from PIL import Image

    with Image.open(out) as sheet:
        assert sheet.size == (170 + 6 * 32, 28 + len(available_distorters()) * 32)


def test_povid_two_stage_recipe_runs_both_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("peft")
    import json

    out = tmp_path / "recipe"
    monkeypatch.setattr(sys, "argv", ["povid_two_stage.py", str(out), "--steps", "2"])
    runpy.run_path(str(EXAMPLES / "povid_two_stage.py"), run_name="__main__")
    assert "stage 2: 2 steps" in capsys.readouterr().out
    lines = (out / "stage2" / "metrics.jsonl").read_text().splitlines()
    stage2 = [json.loads(line) for line in lines]
    assert "logps/noisy" in stage2[0]  # POVID stage 2 really ran its noisy-image stream
    assert (out / "final" / "config.json").is_file()  # the merged model
