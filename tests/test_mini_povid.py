"""examples/mini_povid/run.py --quick: the miniature's plumbing, end to end, in seconds.

The quick run trains for a step or two on a handful of scenes, so its figures mean nothing;
this checks that every stage runs, that the povidgen commands it calls succeed, and that the
report holds what the docs say it holds. The measured run is in docs/mini_povid.md.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "examples" / "mini_povid" / "run.py"


def test_quick_run_measures_every_stage_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("peft")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run.py", "--quick", "--out", str(out), "--seeds", "3"])
    runpy.run_path(str(RUN), run_name="__main__")
    printed = capsys.readouterr().out

    report = json.loads((out / "results.json").read_text())
    assert report["quick"] is True
    assert list(report["seeds"]) == ["3"]  # --quick runs the first seed only
    seed = report["seeds"]["3"]
    for stage in ("sft", "stage1", "stage2", "stage1_long"):  # QUICK runs the long stage 1 too
        for metric, keys in (
            ("chair", ("chair_s", "chair_i", "recall")),
            ("pope", ("accuracy", "precision", "recall", "f1", "yes_ratio")),
        ):
            for key in keys:
                value = seed[stage][metric][key]
                low, high = seed[stage][f"{metric}_intervals"][key]
                assert 0.0 <= low <= value <= high <= 1.0, (stage, key)
    # the curves are the losses the runs logged: one per step of each povidgen train run
    assert len(seed["curves"]["stage1"]) == report["settings"]["stage1_steps"]
    assert len(seed["curves"]["stage2"]) == report["settings"]["stage2_steps"]
    assert len(seed["curves"]["sft"]) == report["settings"]["sft_steps"]
    assert set(report["verdict"]) >= {
        "chair_s_significant_on_2_of_3",
        "recall_within_5_points",
        "stage2_lower_chair_s_than_stage1_as_long",
    }
    assert len(seed["curves"]["stage1_long"]) == (
        report["settings"]["stage1_steps"] + report["settings"]["stage2_steps"]
    )

    # what povidgen build and train wrote, where run.py says
    folder = out / "seed-3"
    summary = json.loads((folder / "pairs" / "summary.json").read_text())
    params = summary["configuration"]["hallucinator"]["params"]
    assert params["omissions"] == report["settings"]["omissions"] > 0  # the build got it
    lines = (folder / "stage2" / "metrics.jsonl").read_text().splitlines()
    stage2 = [json.loads(line) for line in lines]
    assert "logps/noisy" in stage2[0]  # stage 2 really ran POVID's noisy-image stream
    assert (folder / "stage2" / "final" / "config.json").is_file()
    for plot in ("metrics.png", "curves.png"):
        assert (out / plot).stat().st_size > 1000
    assert "$ povidgen train" in printed
    assert "CHAIR_S" in printed
