"""Smoke test of benchmarks/dpo_step.py: one step of every contender on the tiny shape."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dpo_step.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_dpo_step", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def table_rows(output: str) -> dict[str, list[str]]:
    """The Markdown table's rows by contender name (the header and rule skipped)."""
    rows = {}
    for line in output.splitlines():
        if not line.startswith("| ") or line.startswith("| contender"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def test_tiny_shape_runs_and_step0_losses_agree(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    has_trl = importlib.util.find_spec("trl") is not None

    # every code path but trl-no-ckpt (TRL's defaults with one flag flipped), to stay quick
    only = ["povidgen", "povidgen+ckpt", "povidgen-plain", "trl", "six-forward"]
    code = script.main(
        [
            *("--shape", "tiny", "--mode", "text", "povid", "--device", "cpu"),
            *("--steps", "1", "--warmup", "0", "--only", *only),
        ]
    )
    output = capsys.readouterr().out

    assert code == 0, output
    assert "DISAGREE" not in output
    assert len(re.findall(r"step-0 losses agree", output)) == 2
    assert len(re.findall(r"step-0 chosen log-probs agree", output)) == 2
    # one table per mode; the rows of both end up here, keyed by name (povid's overwrite text's)
    tables = output.split("## tiny, --mode ")[1:]
    assert [t.split(":")[0] for t in tables] == ["text", "povid"]
    expected = {
        "text": {"povidgen", "povidgen+ckpt", "povidgen-plain"} | ({"trl"} if has_trl else set()),
        "povid": {"povidgen", "povidgen+ckpt", "povidgen-plain", "six-forward"},
    }
    for table in tables:
        mode = table.split(":")[0]
        rows = table_rows(table)
        assert set(rows) == expected[mode], table
        losses = [float(cells[1]) for cells in rows.values()]
        # povid: a near-tied noisy argmax may flip between layouts (see check_losses)
        assert max(losses) - min(losses) < (1e-4 if mode == "text" else 1e-2), table
        # not the trivial log 2 of a policy equal to its reference
        assert all(abs(loss - 0.693147) > 1e-3 for loss in losses), table
        for cells in rows.values():
            assert float(cells[3]) > 0  # ms/step
            assert float(cells[4]) > 0  # pairs/s
    if has_trl:
        assert "- >= 2x TRL's defaults in pairs/s at no more memory: povidgen" in output
    else:
        assert "trl is not installed" in output
    assert "- >= 3x the official six-forward layout in pairs/s: povidgen" in output
