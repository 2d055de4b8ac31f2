"""The files ``povidgen eval`` writes: a JSON report and a bar chart of its figures."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from povidgen.eval.bootstrap import Interval

__all__ = ["plot_figures", "write_report"]


def write_report(path: Path, report: Mapping[str, Any]) -> Path:
    """Write ``report`` as indented JSON to ``path`` (atomically: a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def plot_figures(
    path: Path,
    figures: Mapping[str, float],
    intervals: Mapping[str, Interval],
    *,
    title: str,
    confidence: float,
) -> Path:
    """A bar per figure (in percent) with its confidence interval as an error bar, as PNG.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'povidgen[eval]'``).
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    names = list(figures)
    values = [100.0 * figures[name] for name in names]
    low = [value - 100.0 * intervals[name].low for name, value in zip(names, values, strict=True)]
    high = [100.0 * intervals[name].high - value for name, value in zip(names, values, strict=True)]
    figure = Figure(figsize=(1.2 + 1.1 * len(names), 3.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    bars = axes.bar(names, values, color="#4C72B0", yerr=[low, high], capsize=4)
    axes.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=2, fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel(f"% ({confidence:.0%} bootstrap CI)")
    axes.set_title(title, fontsize=9)
    axes.spines[["top", "right"]].set_visible(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
