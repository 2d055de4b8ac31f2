"""The documentation site builds with ``mkdocs build --strict`` (any warning fails it): broken
links between pages, pages missing from the nav, and docstrings griffe cannot parse for the API
reference. ``make test`` installs the ``docs`` extra so this runs in CI; without it, it skips."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(module) is None
        for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    ),
    reason="the docs extra is not installed (pip install -e '.[docs]')",
)


def test_site_builds_strict_with_no_warnings(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    # every page of the nav is there, the pictures too, and the API reference has the public API
    for page in ("index.html", "api/index.html", "distortions/index.html", "train/index.html"):
        assert (site / page).is_file(), page
    assert (site / "demo_preview.png").is_file()
    assert (site / "distortions.png").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("povidgen.PairBuilder", "povidgen.train.DPOTrainer", "povidgen.convert.export"):
        assert f'id="{name}"' in api, name
