"""Peak memory of ``povidgen build`` against the number of rows: a streaming build's peak must
not grow with the dataset.

Run:  python benchmarks/build_memory.py [--rows-small 2000] [--rows-large 20000] [--size 336]
                                        [--kind photo|random] [--format jpeg|png] [--keep]

The input is made once, in a temporary folder, for ``--rows-large`` rows: a ``rows.jsonl`` file
(``id``, ``image`` path, ``prompt``, ``answer``) beside one image file per row. Images are
deterministic (row ``i`` is drawn from ``numpy.random.default_rng(i)``):

* ``photo`` (default): smooth colour fields with fine texture, like a photo's statistics;
  JPEG about 18 KiB at 336x336;
* ``random``: uniform random pixels, the worst case for every codec (``--format png`` stores
  them uncompressed-in-zlib, about 330 KiB each, so that 20,000 of them are quick to write).

They are written by a process pool over the available cores (about 3 ms an image each), so
making 20,000 takes well under a minute, a small part of the builds it feeds.

Each measurement is one ``povidgen build`` (the CLI, ``python -m povidgen.cli``) in its own
child process, with the default provider (``rule``) and distorter (``diffusion``, step 500),
into its own output folder (removed afterwards unless ``--keep``); the small run reads the
same file with ``--limit``. Its peak resident set is the kernel's high-water mark for that child
alone (``ru_maxrss`` from ``os.wait4`` on its pid), and a thread samples ``VmRSS`` from
``/proc/PID/status`` every 0.2 s to show how the resident set moves during the run (at a
quarter, half, three quarters of the run and at its end). A third child runs the same command
with ``--limit 0`` first: the start-up baseline (interpreter, torch, datasets, pyarrow), so
the growth of each build over it is printed too.

rows/s is the build's own figure (``time taken`` in the CLI's report: reading, decoding,
hallucinating, distorting, encoding and writing, not the interpreter's start-up). The target
(issue 9): the larger run's peak within 1.2x of the smaller's.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "purple")
_OBJECTS = ("apples", "cups", "dogs", "cats", "books", "chairs", "bottles", "bananas")
_PLACES = ("on the left of", "on the right of", "in front of", "behind", "next to")


# -- the input ---------------------------------------------------------------------------------


def make_image(index: int, size: int, kind: str) -> Image.Image:
    """Row ``index``'s image, the same on every run."""
    rng = np.random.default_rng(index)
    if kind == "random":
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    detail = rng.integers(0, 256, (max(size // 8, 1), max(size // 8, 1), 3), dtype=np.uint8)
    field_ = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    texture = Image.fromarray(detail).resize((size, size), Image.Resampling.BILINEAR)
    return Image.blend(field_, texture, 0.25)


def encode_image(image: Image.Image, fmt: str, kind: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=90)
    else:  # random pixels do not compress: storing them is as good and much quicker
        image.save(buffer, format="PNG", compress_level=0 if kind == "random" else 6)
    return buffer.getvalue()


def answer_text(index: int) -> str:
    """A short answer with words the rule hallucinator can falsify (counts, colours, places)."""
    count = index % 7 + 2
    colour = _COLOURS[index % len(_COLOURS)]
    other = _COLOURS[(index // 3 + 1) % len(_COLOURS)]
    thing = _OBJECTS[index % len(_OBJECTS)]
    place = _PLACES[index % len(_PLACES)]
    return f"There are {count} {colour} {thing} {place} a {other} table in picture {index}."


def _write_images(folder: str, start: int, end: int, size: int, kind: str, fmt: str) -> int:
    """Write rows ``[start, end)``'s image files; their total bytes."""
    total = 0
    suffix = "jpg" if fmt == "jpeg" else "png"
    for index in range(start, end):
        data = encode_image(make_image(index, size, kind), fmt, kind)
        (Path(folder) / "images" / f"{index:06d}.{suffix}").write_bytes(data)
        total += len(data)
    return total


@dataclass
class Input:
    """A dataset made by :func:`make_dataset`."""

    path: Path
    rows: int
    seconds: float
    image_bytes: int


def make_dataset(folder: Path, rows: int, *, size: int, kind: str, fmt: str) -> Input:
    """``folder/rows.jsonl`` and ``folder/images/*``: ``rows`` rows, deterministic."""
    start = time.perf_counter()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    suffix = "jpg" if fmt == "jpeg" else "png"
    with (folder / "rows.jsonl").open("w", encoding="utf-8") as handle:
        for index in range(rows):
            row = {
                "id": f"r{index:06d}",
                "image": f"images/{index:06d}.{suffix}",
                "prompt": "<image>\nDescribe the image.",
                "answer": answer_text(index),
            }
            handle.write(json.dumps(row) + "\n")
    workers = max(1, len(os.sched_getaffinity(0)))
    chunk = max(1, min(500, -(-rows // workers)))
    ranges = [(s, min(s + chunk, rows)) for s in range(0, rows, chunk)]
    if workers == 1 or len(ranges) == 1:
        total = sum(_write_images(str(folder), s, e, size, kind, fmt) for s, e in ranges)
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [
                pool.submit(_write_images, str(folder), s, e, size, kind, fmt) for s, e in ranges
            ]
            total = sum(f.result() for f in futures)
    return Input(folder / "rows.jsonl", rows, time.perf_counter() - start, total)


# -- one build in a child process --------------------------------------------------------------


@dataclass
class Run:
    """One ``povidgen build`` child: its exit code, output, peak RSS and samples."""

    code: int
    stdout: str
    stderr: str
    wall: float
    peak_kib: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since start, VmRSS in KiB) every 0.2 s."""

    pairs: int | None = None
    """Pairs the build wrote (every row should become one: a failed row skips work)."""
    others: float | None = None
    """The share of the run's CPUs that other processes used while it ran (see
    :func:`cpu_busy`): how far the machine's load skews its timing."""
    seconds: float | None = None
    """The build's own time (``BuildReport.seconds``: reading, decoding, hallucinating,
    distorting, encoding and writing; not the interpreter's start-up), from the output's
    ``summary.json`` (to the millisecond) or else the CLI's ``time taken`` line."""

    def rss_at(self, fraction: float) -> int | None:
        """VmRSS (KiB) sampled nearest to ``fraction`` of the run's wall time."""
        if not self.samples:
            return None
        moment = fraction * self.wall
        return min(self.samples, key=lambda s: abs(s[0] - moment))[1]


def build_command(
    dataset: Path, out: Path, *, limit: int | None = None, workers: int | None = None
) -> list[str]:
    """``python -m povidgen.cli build`` on ``dataset`` with the rule provider and the default
    diffusion distorter."""
    command = [sys.executable, "-m", "povidgen.cli", "build", "--dataset", str(dataset)]
    command += ["--id-column", "id", "--out", str(out), "--provider", "rule"]
    command += ["--distorter", "diffusion", "--noise-step", "500"]
    if limit is not None:
        command += ["--limit", str(limit)]
    if workers is not None:
        command += ["--workers", str(workers)]
    return command


def run_build(
    dataset: Path,
    out: Path,
    *,
    limit: int | None = None,
    workers: int | None = None,
    cpus: Sequence[int] | None = None,
) -> Run:
    """One ``povidgen build`` of ``dataset`` into ``out`` in a new child process (see
    :func:`run_child`), with the build's own time read from its output."""
    run = run_child(build_command(dataset, out, limit=limit, workers=workers), cpus=cpus)
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        run.pairs = int(summary["pairs"])
        if summary.get("runs") == 1:  # a fresh folder: the total is this run's time
            run.seconds = float(summary["seconds_all_runs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if run.seconds is None:
        match = re.search(r"time taken:\s+([\d.]+)s", run.stdout)
        run.seconds = float(match.group(1)) if match else None
    return run


def _vm_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_busy(cpus: Sequence[int]) -> float | None:
    """Seconds the CPUs ``cpus`` have spent busy (or stolen by the hypervisor) since boot, by
    every process, from ``/proc/stat``; ``None`` where it cannot be read."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                fields = line.split()
                if fields and fields[0] in wanted:
                    # user nice system idle iowait irq softirq steal
                    values = [int(v) for v in fields[1:9]]
                    busy += sum(values) - values[3] - values[4]
    except (OSError, ValueError, IndexError):
        return None
    return busy / os.sysconf("SC_CLK_TCK")


def others_share(
    busy_before: float | None, busy_after: float | None, own: float, wall: float, cpus: int
) -> float | None:
    """The share of ``cpus`` CPUs over ``wall`` seconds that went to anything but ``own``
    CPU seconds (other processes, the hypervisor), from two :func:`cpu_busy` readings."""
    if busy_before is None or busy_after is None or wall <= 0:
        return None
    return max(0.0, (busy_after - busy_before - own) / (wall * cpus))


def run_child(command: Sequence[str], *, cpus: Sequence[int] | None = None) -> Run:
    """Run ``command`` in a new child (pinned to ``cpus`` when given), wait for it with
    ``os.wait4`` and return its own peak RSS: the high-water mark of that child alone, not of
    this process or of earlier children."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(command)
    pin: Callable[[], None] | None = None
    if cpus is not None:
        if shutil.which("taskset"):
            argv = ["taskset", "-c", ",".join(str(c) for c in cpus), *argv]
        else:
            pin = functools.partial(os.sched_setaffinity, 0, set(cpus))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        used = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
        busy_before = cpu_busy(used)
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT, preexec_fn=pin)
        samples: list[tuple[float, int]] = []
        finished = threading.Event()

        def sample() -> None:
            while not finished.wait(0.2):
                rss = _vm_rss(process.pid)
                if rss is not None:
                    samples.append((time.perf_counter() - start, rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            raise
        finally:
            finished.set()
            sampler.join()
        wall = time.perf_counter() - start
        own = usage.ru_utime + usage.ru_stime
        others = others_share(busy_before, cpu_busy(used), own, wall, len(used))
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return Run(
            code=process.returncode,
            stdout=out.read(),
            stderr=err.read(),
            wall=wall,
            peak_kib=usage.ru_maxrss,
            samples=samples,
            others=others,
        )


def checked(run: Run, what: str) -> Run:
    if run.code != 0:
        raise SystemExit(f"{what} failed (exit {run.code}):\n{run.stdout}\n{run.stderr[-4000:]}")
    return run


def machine_note() -> str:
    """The load on the machine when the run started (other processes skew any timing)."""
    try:
        load = os.getloadavg()
    except OSError:
        return "load: unknown"
    cpus = len(os.sched_getaffinity(0))
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {cpus} usable CPUs"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


# -- the benchmark -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows-small", type=int, default=2_000)
    parser.add_argument("--rows-large", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=336, help="image side in pixels")
    parser.add_argument("--kind", choices=["photo", "random"], default="photo")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--workers", type=int, default=None, help="--workers for the build")
    parser.add_argument(
        "--keep", action="store_true", help="keep the input and output folders (path printed)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.rows_small <= args.rows_large:
        parser.error("need 0 < --rows-small <= --rows-large")

    folder = Path(tempfile.mkdtemp(prefix="povidgen-build-memory-"))
    try:
        print(f"machine: {machine_note()}")
        data = make_dataset(
            folder / "input", args.rows_large, size=args.size, kind=args.kind, fmt=args.format
        )
        print(
            f"input: {data.rows} {args.size}x{args.size} {args.kind} {args.format} images "
            f"({data.image_bytes / 2**20:.0f} MiB) made in {data.seconds:.1f} s"
        )
        print(
            "povidgen build: rule hallucinator, diffusion noise (step 500), "
            f"--workers {args.workers or 'default'}; one child process per measurement"
        )
        runs: dict[str, tuple[int, Run]] = {}
        for name, rows in (
            ("start-up", 0),
            ("small", args.rows_small),
            ("large", args.rows_large),
        ):
            out = folder / f"out-{name}"
            run = run_build(data.path, out, limit=rows, workers=args.workers)
            if rows:
                checked(run, f"the {rows}-row build")
            runs[name] = (rows, run)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        base = runs["start-up"][1].peak_kib

        print()
        print(
            f"{'run':9} {'rows':>6} {'peak RSS MiB':>13} {'over start-up':>14} "
            f"{'pairs':>6} {'rows/s':>8} {'build s':>8} {'wall s':>7} {'others %':>9}"
        )
        for name, (rows, run) in runs.items():
            seconds = run.seconds
            rate = f"{rows / seconds:8.1f}" if rows and seconds else f"{'-':>8}"
            growth = f"{(run.peak_kib - base) / 1024:14.0f}" if rows else f"{'-':>14}"
            build_s = f"{seconds:8.2f}" if seconds is not None else f"{'-':>8}"
            print(
                f"{name:9} {rows:6d} {run.peak_kib / 1024:13.0f} {growth} "
                f"{'-' if run.pairs is None else run.pairs:>6} {rate} {build_s} "
                f"{run.wall:7.1f} {_percent(run.others):>9}"
            )
        print(
            "others %: the share of the CPUs that other processes used during the run "
            "(0 on a quiet machine; the rows/s of a loaded one are low)"
        )
        for name in ("small", "large"):
            run = runs[name][1]
            trail = " ".join(_mib(run.rss_at(f)) for f in (0.25, 0.5, 0.75, 1.0))
            print(f"{name} RSS MiB at 1/4, 1/2, 3/4 and the end of the run: {trail}")
        small, large = runs["small"][1].peak_kib, runs["large"][1].peak_kib
        ratio = large / small
        verdict = "met" if ratio <= 1.2 else "NOT met"
        print(
            f"peak RSS large/small: {ratio:.2f}x ({args.rows_large} vs {args.rows_small} rows; "
            f"target <= 1.20: {verdict})"
        )
        if args.keep:
            print(f"kept: {folder}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
