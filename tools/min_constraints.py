"""Pin every dependency that pyproject.toml declares at its declared lower bound.

``make test-min`` installs povidgen with the output of this script as a pip constraints file
(``pip install -c``) and runs the fast tests, so a lower bound that no longer works (an API we
use that the old version lacks) fails there instead of on a user's machine.

    python tools/min_constraints.py [--skip NAME ...] > minimum.txt

Pinned: the core dependencies, every extra a user installs and ``[build-system] requires``
(a requirement without a ``>=`` bound is skipped: nothing to pin). The tool extras (``dev``,
``docs``: test runners, linters, TRL as the reference the parity tests compare with) are not
pinned: nobody runs povidgen with them, so the resolver picks what fits the pinned versions. A
package declared in several places, tool extras included, must have the same lower bound in
each: two different bounds would mean one of them is untested. Only the standard library is
used, so the script runs with any Python 3.11+, before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# name, optional [extras], then the specifiers up to an optional "; marker"
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)(?:;.*)?$"
)
_LOWER = re.compile(r">=\s*(?P<version>[^,\s]+)")
# extras of tools for developing povidgen, not of povidgen's users
TOOL_EXTRAS = frozenset({"dev", "docs"})


def _normalise(name: str) -> str:
    """PEP 503's normalised project name, so ``PyYAML`` and ``pyyaml`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements(pyproject: dict[str, object]) -> list[tuple[str, str]]:
    """Every (where, requirement) pair of the file: core, each extra and the build system.

    Requirements on povidgen itself (``all = ["povidgen[...]"]``) are left out.
    """
    project = pyproject["project"]
    assert isinstance(project, dict)
    found: list[tuple[str, str]] = [("dependencies", r) for r in project["dependencies"]]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        found += [(f"extra {extra}", r) for r in requirements]
    build = pyproject.get("build-system", {})
    assert isinstance(build, dict)
    found += [("build-system", r) for r in build.get("requires", [])]
    return [(where, r) for where, r in found if _normalise(_parse(r)[0]) != "povidgen"]


def _parse(requirement: str) -> tuple[str, str | None]:
    """The requirement's name and its ``>=`` lower bound (``None`` when it has none)."""
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise ValueError(f"cannot read the requirement {requirement!r}")
    lower = _LOWER.search(match["spec"])
    return match["name"], (lower["version"] if lower else None)


def lower_bounds(pyproject: dict[str, object]) -> dict[str, str]:
    """Each declared package's lower bound, by normalised name (tool-only packages left out).

    Raises:
        ValueError: a package declared with two different lower bounds.
    """
    bounds: dict[str, str] = {}
    where_from: dict[str, str] = {}
    # the users' declarations first, so a tool extra's is checked against them
    declared = sorted(
        declared_requirements(pyproject),
        key=lambda item: item[0].removeprefix("extra ") in TOOL_EXTRAS,
    )
    for where, requirement in declared:
        name, lower = _parse(requirement)
        if lower is None:
            continue
        key = _normalise(name)
        if where.removeprefix("extra ") in TOOL_EXTRAS and key not in bounds:
            continue  # a tool only: not pinned
        if key in bounds and bounds[key] != lower:
            raise ValueError(
                f"{name} has the lower bound {bounds[key]} in {where_from[key]} "
                f"but {lower} in {where}: declare one"
            )
        bounds[key] = lower
        where_from[key] = where
    return bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pyproject", type=Path, default=Path(__file__).resolve().parents[1] / "pyproject.toml"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="NAME",
        help="leave this package out (e.g. torch, installed separately)",
    )
    args = parser.parse_args(argv)
    pyproject = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))
    skipped = {_normalise(name) for name in args.skip}
    for name, version in sorted(lower_bounds(pyproject).items()):
        if name not in skipped:
            sys.stdout.write(f"{name}=={version}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
