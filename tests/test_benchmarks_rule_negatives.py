"""benchmarks/rule_negatives.py: its judge reads rejected answers the way the issue's examples
require, and a small run of the current RuleHallucinator meets both targets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from povidgen.sources.demo import Scene, SceneObject

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rule_negatives.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_rule_negatives", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


SCENE = Scene(
    objects=[
        SceneObject(name="kite", color="brown", count=1, position="right"),
        SceneObject(name="cup", color="white", count=3, position="bottom"),
        SceneObject(name="apple", color="white", count=2, position="top"),
    ]
)


@pytest.mark.parametrize(
    ("kind", "question", "rejected", "good"),
    [
        # The bad examples, and good rewrites of the same rows.
        ("count", "how many kites are there?", "There is one pink frisbee.", False),
        ("count", "how many kites are there?", "There are three brown kites.", True),
        ("count", "how many kites are there?", "There is three brown kite.", False),
        ("color", "what color are the apples?", "The dining tables are turquoise.", False),
        ("color", "what color are the apples?", "The apples are turquoise.", True),
        ("position", "where is the kite?", "The dogs are on the left of the image.", False),
        ("position", "where is the kite?", "The kite is on the left of the image.", True),
        ("presence", "is there a cup in the image?", "No, there are three brown cups at the top.",
         False),
        ("presence", "is there a cup in the image?", "No, there is no cup in the image.", True),
        ("absence", "is there a book in the image?",
         "No, there is one book in the image; there are three cups.", False),
        ("absence", "is there a book in the image?",
         "Yes, there is a book at the top of the image; there are three cups.", True),
    ],
)  # fmt: skip
def test_the_judge(script: ModuleType, kind: str, question: str, rejected: str, good: bool) -> None:
    scene = SCENE
    if kind == "absence":
        scene = Scene(objects=[SceneObject(name="cup", color="white", count=3, position="left")])
    assert script.judge(scene, kind, question, rejected).good is good


def test_a_small_run_meets_both_targets(script: ModuleType) -> None:
    tally = script.run([0], 24, 0)
    assert tally.question_rows == 12
    assert tally.caption_rows == 12
    assert tally.question_good >= 0.9 * tally.question_rows
    assert tally.caption_good == tally.caption_rows
