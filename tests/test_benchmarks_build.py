"""Smoke test of benchmarks/build_memory.py and benchmarks/build_throughput.py at tiny sizes:
both run to the end and print every line the results files are read for. Timings and memory
are not checked (they depend on the machine and its load), only that they parse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"(\d+(?:\.\d+)?)"


def start(script: str, *args: str) -> subprocess.Popen[str]:
    # the two scripts run side by side: each spends most of its time starting CLI children
    return subprocess.Popen(
        [sys.executable, str(BENCHMARKS / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def finish(process: subprocess.Popen[str]) -> str:
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, f"{stdout}\n{stderr}"
    return stdout


def one(pattern: str, output: str) -> re.Match[str]:
    matches = list(re.finditer(pattern, output, re.MULTILINE))
    assert len(matches) == 1, f"{pattern!r} in:\n{output}"
    return matches[0]


def test_build_benchmarks_run_at_tiny_sizes() -> None:
    memory = start("build_memory.py", "--rows-small", "20", "--rows-large", "40", "--size", "64")
    throughput = start("build_throughput.py", "--rows", "30", "--size", "64")
    memory_out, throughput_out = finish(memory), finish(throughput)

    # build_memory: the table (start-up, small, large), the RSS trails and the ratio
    one(r"^input: 40 64x64 photo jpeg images", memory_out)
    # (the table's pairs column equals its rows column: every row became a pair)
    one(rf"^start-up\s+0\s+{NUMBER}\s+-\s+0\s+-\s+{NUMBER}\s+{NUMBER}\s+(\d+|-)$", memory_out)
    peaks = {}
    for name, rows in (("small", 20), ("large", 40)):
        row = one(
            rf"^{name}\s+{rows}\s+{NUMBER}\s+(-?\d+)\s+{rows}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}"
            r"\s+(\d+|-)$",
            memory_out,
        )
        peaks[name] = float(row.group(1))
        assert peaks[name] > 0
        trail = rf"^{name} RSS MiB at 1/4, 1/2, 3/4 and the end of the run:( (\d+|-)){{4}}$"
        one(trail, memory_out)
    ratio = one(rf"^peak RSS large/small: {NUMBER}x \(40 vs 20 rows; target <= 1.20: ", memory_out)
    # the printed peaks are rounded to MiB; the ratio is of the exact peaks
    assert abs(float(ratio.group(1)) - peaks["large"] / peaks["small"]) < 0.05

    # build_throughput: the three contenders, the same work, the two ratios
    one(r"^input: 30 64x64 photo jpeg images", throughput_out)
    floor = one(
        rf"^floor \(decode \+ noise \+ PNG encode, in-process, 1 core\):\s+{NUMBER} rows/s  "
        rf"\({NUMBER} ms/row: decode {NUMBER}, noise {NUMBER}, encode {NUMBER}"
        rf"(; others used \d+% of its core)?\)$",
        throughput_out,
    )
    assert float(floor.group(1)) > 0
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    if two_cpus:
        ceiling = one(
            rf"^floor on 2 cores \(2 processes, half the rows each\):\s+{NUMBER} rows/s  \(the "
            rf"machine's own 2-core scaling: {NUMBER}x the 1-core floor\)$",
            throughput_out,
        )
        assert float(ceiling.group(2)) > 0
    for cores in ("1 core (--workers 1)", "2 cores (--workers 2)")[: 2 if two_cpus else 1]:
        one(
            rf"^povidgen build, {re.escape(cores)}:\s+{NUMBER} rows/s  \({NUMBER} s; wall "
            rf"{NUMBER} s with start-up(; others used \d+% of its cores?)?\)$",
            throughput_out,
        )
    one(r"^pairs built by each build: 30 of 30 rows$", throughput_out)  # every row a pair
    one(r"^row 0's distorted PNG: the floor's == the build's$", throughput_out)
    one(rf"^build on 1 core / floor: {NUMBER}x the floor's time \(target <= 1.30: ", throughput_out)
    if two_cpus:
        one(rf"^2 cores / 1 core: {NUMBER}x faster \(target >= 1.70: ", throughput_out)
    else:
        one(r"^2 cores / 1 core: skipped", throughput_out)
