"""pyproject.toml's dependency bounds and tools/min_constraints.py, which `make test-min` uses
to install every dependency at its lower bound."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "min_constraints", ROOT / "tools" / "min_constraints.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_user_facing_requirement_is_pinned_at_its_lower_bound() -> None:
    tool = _tool()
    bounds = tool.lower_bounds(PYPROJECT)
    project = PYPROJECT["project"]
    user_facing = list(project["dependencies"]) + list(PYPROJECT["build-system"]["requires"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra not in tool.TOOL_EXTRAS:
            user_facing += [r for r in requirements if not r.startswith("povidgen")]
    for requirement in user_facing:
        name, lower = tool._parse(requirement)
        assert lower is not None, f"{requirement}: give it a lower bound that make test-min tests"
        assert bounds[tool._normalise(name)] == lower, requirement


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_floors_the_code_needs() -> None:
    bounds = _tool().lower_bounds(PYPROJECT)
    assert _version(bounds["datasets"]) >= (4, 0)  # datasets.List
    assert _version(bounds["pillow"]) >= (10, 1)
    assert _version(bounds["setuptools"]) >= (77, 0)  # the SPDX license string
    assert _version(bounds["transformers"]) >= (5, 20, 1)  # PIL processors (see pyproject)


def test_peft_only_in_the_extras_that_import_it() -> None:
    project = PYPROJECT["project"]
    assert not any(r.startswith("peft") for r in project["dependencies"])
    with_peft = {
        extra
        for extra, requirements in project["optional-dependencies"].items()
        if any(r.startswith("peft") for r in requirements)
    }
    assert with_peft == {"train", "eval", "dev"}  # train/trainer.py, eval/generate.py; tests


def test_a_package_with_two_lower_bounds_is_refused() -> None:
    tool = _tool()
    pyproject = {
        "project": {
            "dependencies": ["numpy>=2.0"],
            "optional-dependencies": {"fast": ["numpy>=2.1", "povidgen[fast]"]},
        },
        "build-system": {"requires": ["setuptools>=77.0.1"]},
    }
    with pytest.raises(ValueError, match=r"numpy has the lower bound 2\.0 in dependencies"):
        tool.lower_bounds(pyproject)


def test_tool_extras_are_checked_but_not_pinned() -> None:
    tool = _tool()
    pyproject = {
        "project": {
            "dependencies": ["PyYAML>=6.0", "torch>=2.4"],
            "optional-dependencies": {"dev": ["pytest>=8", "pyyaml>=6.0", "types-PyYAML"]},
        },
    }
    assert tool.lower_bounds(pyproject) == {"pyyaml": "6.0", "torch": "2.4"}
    pyproject["project"]["optional-dependencies"]["dev"].append("torch>=2.5")  # type: ignore[index]
    with pytest.raises(ValueError, match="torch"):
        tool.lower_bounds(pyproject)


def test_the_command_line_writes_a_constraints_file() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "min_constraints.py"), "--skip", "torch"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines == sorted(lines)
    assert "datasets==4.0" in lines
    assert not any(line.startswith(("torch==", "pytest==", "povidgen")) for line in lines)
