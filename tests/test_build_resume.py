"""Resume, as issue 9 asks it to be shown: ``povidgen build`` against the fake OpenAI API is
killed (SIGKILL) at several points, or stopped with Ctrl-C, and run again with the same command.

What each test checks, counted at the fake server:

* no request whose reply had arrived before the kill is sent again (a reply "had arrived" when
  the server produced it at least :data:`GRACE` seconds before the kill; a request in flight at
  the kill, or answered a moment before it, may be sent again);
* the rerun sends exactly the requests the reply cache did not hold when the process died, each
  once;
* the finished folder equals an uninterrupted run's: the same parquet shards and
  ``errors.jsonl`` byte for byte, the same manifest (less its timings), nothing else left over.

The input is 40 demo scenes saved as a JSON Lines file with PNG images, with two rows that fail
before any call (a missing image, an empty answer) and three whose replies never pass
verification (the fake answers the answer itself), so ``errors.jsonl`` has rows of three stages
and some rows take several calls. The stopped runs are subprocesses (``python -m povidgen.cli``);
the reruns and the reference run go through :func:`povidgen.cli.main` in this process with the
same arguments and cache folder, to keep the module's time down (each process start imports
torch). The reference run has a cache of its own, so its replies all come from the fake, whose
replies depend only on the request: a resumed run, part cache and part fake, must match it.

Kill points: *early* (three replies in; later replies are then held, so the kill comes while
every call waits), *mid-shard* (a shard finished and rows of the next one made), *last rows*
(all requests but three sent), and two moments inside a shard's commit, reached exactly by a
hook in the killed process that SIGKILLs itself there: the partial file closed but not renamed,
and the shard renamed with its errors appended but no manifest line. Ctrl-C (SIGINT) is sent
mid-shard, and once more while every call waits for its reply (no call is left pending).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from povidgen.cli import main
from povidgen.sources.demo import demo_dataset
from tests.fakes.llm_server import FakeLLMServer, default_responder, extract_answer

pytestmark = pytest.mark.slow

ROWS = 40
MISSING_IMAGE_ROW = 5  # stage "image"
EMPTY_ANSWER_ROW = 21  # stage "input"
IDENTICAL_ROWS = (10, 26, 37)  # stage "hallucinate": every reply is the answer itself
LATENCY = 0.1
"""Seconds the fake waits before each reply (keeps the run long enough to kill it)."""
GRACE = 0.3
"""A reply produced this long before the kill had reached the client and its cache."""
KEY = "sk-test-resume-0000"
ROOT = Path(__file__).resolve().parents[1]

_HOOKED_CLI = r"""
import os, signal, sys, time
from pathlib import Path

import povidgen.pairs.shards as shards

point, nth = os.environ["POVIDGEN_TEST_KILL_AT"].split(":")
stamp = Path(os.environ["POVIDGEN_TEST_KILL_STAMP"])
seen = [0]


def count_and_maybe_die() -> None:
    seen[0] += 1
    if seen[0] == int(nth):
        stamp.write_text(repr(time.monotonic()))
        os.kill(os.getpid(), signal.SIGKILL)


if point == "partial-closed":  # closed and flushed to disk, not yet renamed
    fsync = shards._fsync_file

    def hooked_fsync(path):
        fsync(path)
        if path.name.endswith(".parquet.partial"):
            count_and_maybe_die()

    shards._fsync_file = hooked_fsync
elif point == "renamed":  # renamed, its errors appended, no manifest line yet
    sha256 = shards._sha256

    def hooked_sha256(path):
        count_and_maybe_die()
        return sha256(path)

    shards._sha256 = hooked_sha256
else:
    raise SystemExit(f"unknown kill point {point}")

from povidgen.cli import main

sys.exit(main(sys.argv[1:]))
"""


# -- the input and the fake API -----------------------------------------------------------------


@dataclass
class Dataset:
    path: Path
    identical_answers: frozenset[str]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    folder = tmp_path_factory.mktemp("input")
    demo = demo_dataset(n=ROWS, seed=0)
    records = []
    for index, row in enumerate(demo):
        name = f"{row['id']}.png"
        row["image"].save(folder / name)
        records.append(
            {
                "id": row["id"],
                "image": "missing.png" if index == MISSING_IMAGE_ROW else name,
                "prompt": row["question"],
                "answer": "" if index == EMPTY_ANSWER_ROW else row["answer"],
            }
        )
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert len({r["answer"] for r in records}) == ROWS  # no two rows make the same request
    return Dataset(path, frozenset(records[i]["answer"] for i in IDENTICAL_ROWS))


def request_key(body: Any) -> str:
    """What tells one request from another: its messages (text and image)."""
    messages = body.get("messages") if isinstance(body, dict) else body
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Replies:
    """The fake's responder: its default corruption (deterministic per request), or the
    answer itself for the rows meant to fail verification; it notes when each reply was made."""

    identical: frozenset[str]
    made: list[tuple[str, float]] = field(default_factory=list)

    async def __call__(self, provider: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = extract_answer(body)
        if answer in self.identical:
            reply: dict[str, Any] = {"rejected": answer, "edits": []}
        else:
            reply = await default_responder(provider, body)
        self.made.append((request_key(body), time.monotonic()))
        return reply

    def before(self, moment: float) -> set[str]:
        """The requests answered before ``moment`` (``time.monotonic``, any process)."""
        return {key for key, made in list(self.made) if made < moment}


@dataclass
class Api:
    server: FakeLLMServer
    replies: Replies

    def count(self) -> int:
        """Generation requests received so far (cheap enough to poll)."""
        return sum(1 for r in list(self.server.requests) if r.index is not None)

    def asked(self, start: int = 0) -> list[str]:
        """The generation requests received from the ``start``-th request on."""
        return [request_key(r.body) for r in self.server.requests[start:] if r.index is not None]


@pytest.fixture(scope="module")
def running_api(dataset: Dataset) -> Iterator[Api]:
    replies = Replies(dataset.identical_answers)
    with FakeLLMServer(responder=replies, latency=LATENCY) as server:
        yield Api(server, replies)


@pytest.fixture
def api(running_api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    """The module's fake API, reset; and its key in this process's environment (for the
    in-process runs)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    running_api.server.latency = LATENCY
    running_api.server.requests.clear()
    running_api.replies.made.clear()
    return running_api


def command(dataset: Dataset, api: Api, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "build",
        "--dataset",
        str(dataset.path),
        "--provider",
        "openai",
        "--base-url",
        api.server.openai_base_url,
        "--model",
        "gpt-4o-mini",
        "--cache-dir",
        str(cache),
        "--shard-rows",
        "8",
        "--concurrency",
        "4",
        "--workers",
        "2",
        "--out",
        str(out),
        *extra,
    ]


# -- the reference: one uninterrupted run -------------------------------------------------------


@dataclass
class Reference:
    out: Path
    cache: Path
    snapshot: dict[str, Any]
    requests: int


def snapshot(out: Path) -> dict[str, Any]:
    """What must equal an uninterrupted run's: shard and error bytes, the manifest less its
    timings, and nothing left over (no partial, sidecar or temporary file)."""
    data = sorted(p.name for p in (out / "data").iterdir())
    assert all(name.startswith("train-") for name in data), data  # no partial or sidecar
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [], hidden
    assert not list(out.parent.glob(f".{out.name}.*")), "a lock or staging folder is left"
    manifest = []
    for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        entry.pop("seconds", None)
        entry.pop("cost_usd", None)
        manifest.append(entry)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {
        "data": {name: (out / "data" / name).read_bytes() for name in data},
        "errors.jsonl": (out / "errors.jsonl").read_bytes(),
        "manifest": manifest,
        "summary": {k: summary[k] for k in ("complete", "rows", "pairs", "failed", "shards")},
    }


@pytest.fixture(scope="module")
def reference(
    dataset: Dataset, running_api: Api, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    folder = tmp_path_factory.mktemp("reference")
    out, cache = folder / "out", folder / "cache"
    start = len(running_api.server.requests)
    running_api.server.latency = LATENCY
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", KEY)
        assert main(command(dataset, running_api, out, cache)) == 0
    asked = running_api.asked(start)
    assert len(asked) == len(set(asked))  # every request differs from the others
    taken = snapshot(out)
    summary = taken["summary"]
    assert summary["complete"] is True
    assert (summary["rows"], summary["shards"]) == (ROWS, ROWS // 8)
    assert summary["pairs"] + summary["failed"] == ROWS
    assert summary["pairs"] > 0
    # which other rows fail verification is the verifier's business; these always do
    errors = [json.loads(line) for line in taken["errors.jsonl"].decode().splitlines()]
    stages = {e["index"]: e["stage"] for e in errors}
    assert [e["index"] for e in errors] == sorted(stages)  # in input order, each once
    assert stages[MISSING_IMAGE_ROW] == "image"
    assert stages[EMPTY_ANSWER_ROW] == "input"
    assert all(stages[i] == "hallucinate" for i in IDENTICAL_ROWS)
    assert len(asked) > ROWS - 2  # the failing rows are asked again with feedback
    return Reference(out, cache, taken, len(asked))


# -- running, killing, checking -----------------------------------------------------------------


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OPENAI_API_KEY=KEY, **extra)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def manifest_lines(out: Path) -> int:
    path = out / "manifest.jsonl"
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def rows_written(logs: Path) -> int:
    """Rows handed to the shard writer so far, as the child's progress bar last showed."""
    path = logs / "stderr"
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    shown = re.findall(rf"(\d+)/{ROWS} \[", text)
    return int(shown[-1]) if shown else 0


def cached_replies(cache: Path) -> int:
    """Replies committed to the cache (read after the writer died or stopped)."""
    path = cache / "replies.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])
    except sqlite3.OperationalError:  # killed before the table was made
        return 0
    finally:
        db.close()


@dataclass
class Stopped:
    """A build stopped part-way: when, how it ended, what it printed."""

    moment: float
    returncode: int
    stdout: str
    stderr: str


def run_until(
    argv: list[str],
    env: dict[str, str],
    logs: Path,
    when: Callable[[], bool] | None,
    sig: signal.Signals = signal.SIGKILL,
    *,
    before_signal: Callable[[], None] | None = None,
) -> Stopped:
    """Start ``argv``; send ``sig`` once ``when()`` holds (``None``: the process stops
    itself, recording the moment in ``$POVIDGEN_TEST_KILL_STAMP``); wait for the end."""
    logs.mkdir(exist_ok=True)
    with (logs / "stdout").open("w") as stdout, (logs / "stderr").open("w") as stderr:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            moment = float("nan")
            while when is not None:
                if process.poll() is not None:
                    pytest.fail(f"the build ended (code {process.returncode}) before the stop")
                if time.monotonic() > deadline:
                    pytest.fail("the stop condition never held")
                if when():
                    if before_signal is not None:
                        before_signal()
                    moment = time.monotonic()
                    process.send_signal(sig)
                    break
                time.sleep(0.003)
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if when is None:
        moment = float(Path(env["POVIDGEN_TEST_KILL_STAMP"]).read_text())
    return Stopped(
        moment,
        returncode,
        (logs / "stdout").read_text(encoding="utf-8"),
        (logs / "stderr").read_text(encoding="utf-8"),
    )


def rerun_and_check(
    argv: list[str],
    api: Api,
    reference: Reference,
    stopped: Stopped,
    cache: Path,
    out: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    some_answered: bool = True,
) -> str:
    """Run ``argv`` again to the end in this process and check it against the reference;
    returns what it printed. ``some_answered``: the stop came after a reply had arrived."""
    api.server.latency = LATENCY
    answered = api.replies.before(stopped.moment - GRACE)
    if some_answered:
        assert answered, "no reply had arrived long enough before the stop: the check is empty"
    cached = cached_replies(cache)
    start = len(api.server.requests)
    capsys.readouterr()
    code = main(argv)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    asked = api.asked(start)
    repeated = answered & set(asked)
    assert not repeated, (
        f"{len(repeated)} requests answered before the stop were sent again "
        f"({len(answered)} answered, {cached} in the cache at the stop)"
    )
    assert len(asked) == len(set(asked)), "the rerun sent a request twice"
    assert len(asked) == reference.requests - cached, (
        f"the rerun sent {len(asked)} requests; the cache held {cached} of "
        f"{reference.requests} at the stop"
    )
    assert snapshot(out) == reference.snapshot
    return printed.out


# -- the stop points ---------------------------------------------------------------------------


def early(api: Api, out: Path, logs: Path) -> Callable[[], bool]:
    """Three replies in (then every later reply is held: see :func:`freeze`)."""
    return lambda: len(api.replies.made) >= 3


def mid_shard(api: Api, out: Path, logs: Path) -> Callable[[], bool]:
    """A shard finished and a few rows of the next one made (held in memory); early enough in
    that shard that the stop lands before it closes, though the bar lags the rows a little."""

    def when() -> bool:
        written = rows_written(logs)  # first: rows only grow, and the manifest after them
        finished = manifest_lines(out)
        # and a reply old enough for the rerun's check: on a fast machine every reply so
        # far could have landed within GRACE of the stop, leaving that check empty
        settled = bool(api.replies.before(time.monotonic() - GRACE))
        return finished >= 1 and 8 * finished + 2 <= written <= 8 * finished + 4 and settled

    return when


def last_rows(total: int) -> Callable[[Api, Path, Path], Callable[[], bool]]:
    """All requests but the last three sent."""
    return lambda api, out, logs: lambda: api.count() >= total - 3


def freeze(api: Api) -> None:
    """Hold every later reply and let those on their way land: the stop then comes while
    every call waits, and the replies that arrived are exactly those made."""
    api.server.latency = 60.0
    time.sleep(LATENCY + GRACE + 0.05)


# -- SIGKILL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["early", "mid-shard", "last-rows"])
def test_sigkill_then_rerun_sends_no_answered_request_and_equals_one_run(
    point: str,
    dataset: Dataset,
    api: Api,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, cache, logs = tmp_path / "out", tmp_path / "cache", tmp_path / "logs"
    argv = command(dataset, api, out, cache)
    condition = {"early": early, "mid-shard": mid_shard, "last-rows": last_rows(reference.requests)}
    stopped = run_until(
        [sys.executable, "-m", "povidgen.cli", *argv],
        environment(),
        logs,
        condition[point](api, out, logs),
        before_signal=(lambda: freeze(api)) if point == "early" else None,
    )
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr
    assert not (out / "summary.json").exists()  # it died before the end
    finished = manifest_lines(out)
    if point == "mid-shard":
        assert rows_written(logs) > 8 * finished  # rows of the open shard were made
    printed = rerun_and_check(argv, api, reference, stopped, cache, out, capsys)
    if finished:
        assert f"resumed:      {8 * finished} rows were already done" in printed


@pytest.mark.parametrize(
    # late enough that some replies are older than GRACE: each commit needs a latency or more
    ("point", "commit"),
    [("partial-closed", 3), ("renamed", 4)],
)
def test_sigkill_while_a_shard_is_written_then_rerun_equals_one_run(
    point: str,
    commit: int,
    dataset: Dataset,
    api: Api,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = command(dataset, api, out, cache)
    env = environment(
        POVIDGEN_TEST_KILL_AT=f"{point}:{commit}",
        POVIDGEN_TEST_KILL_STAMP=str(tmp_path / "killed-at"),
    )
    stopped = run_until([sys.executable, "-c", _HOOKED_CLI, *argv], env, tmp_path / "logs", None)
    assert stopped.returncode == -signal.SIGKILL, f"the hook did not fire:\n{stopped.stderr}"
    assert manifest_lines(out) == commit - 1
    shard = out / "data" / f"train-{commit - 1:05d}.parquet"
    partial = out / "data" / f".train-{commit - 1:05d}.parquet.partial"
    if point == "renamed":  # the shard is there, its errors appended, the manifest not told
        assert shard.is_file()
        assert not partial.exists()
    else:  # a complete, readable parquet file, but no sidecar: not taken back
        assert pq.ParquetFile(partial).metadata.num_rows > 0
        assert not partial.with_name(partial.name + ".json").exists()
        assert not shard.exists()
    printed = rerun_and_check(argv, api, reference, stopped, cache, out, capsys)
    assert f"resumed:      {8 * (commit - 1)} rows were already done" in printed


# -- Ctrl-C -------------------------------------------------------------------------------------


def check_interrupted(out: Path, stopped: Stopped) -> int:
    """The checks of a run stopped with Ctrl-C; returns the rows it wrote (finished shards
    and the open one, kept as a partial file beside a sidecar naming its rows)."""
    if stopped.returncode == 0 and "written to:" in stopped.stdout:
        # a busy machine let the build finish before the signal reached it: nothing stopped
        pytest.skip("the build finished before the signal (a busy machine)")
    assert stopped.returncode == 130, stopped.stderr
    assert "Run the same command again to resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["complete"] is False
    assert summary["stopped"] == "interrupted"
    finished = manifest_lines(out)
    partial = out / "data" / f".train-{finished:05d}.parquet.partial"
    sidecar = partial.with_name(partial.name + ".json")
    assert partial.exists() == sidecar.exists()
    kept = 0
    if sidecar.exists():
        side = json.loads(sidecar.read_text(encoding="utf-8"))
        kept = len(side["pairs"]) + len(side["errors"])
        assert pq.ParquetFile(partial).metadata.num_rows == len(side["pairs"])
    return 8 * finished + kept


def test_ctrl_c_exits_130_says_how_to_resume_and_the_rerun_equals_one_run(
    dataset: Dataset,
    api: Api,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, cache, logs = tmp_path / "out", tmp_path / "cache", tmp_path / "logs"
    argv = command(dataset, api, out, cache)
    # slower replies widen the moment mid-shard, so a busy machine does not miss it
    api.server.latency = 4 * LATENCY
    stopped = run_until(
        [sys.executable, "-m", "povidgen.cli", *argv],
        environment(),
        logs,
        mid_shard(api, out, logs),
        signal.SIGINT,
    )
    written = check_interrupted(out, stopped)
    assert written % 8 >= 1  # the open shard's rows were kept, to be taken back

    before = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    capsys.readouterr()
    assert main([*argv, "--seed", "1"]) == 2  # another configuration: refused, untouched
    assert "seed: 0 there, 1 now" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == before

    printed = rerun_and_check(argv, api, reference, stopped, cache, out, capsys)
    assert f"resumed:      {written} rows were already done" in printed


def test_ctrl_c_while_every_call_waits_leaves_no_call_behind(
    dataset: Dataset,
    api: Api,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, cache, logs = tmp_path / "out", tmp_path / "cache", tmp_path / "logs"
    argv = command(dataset, api, out, cache)
    stopped = run_until(
        [sys.executable, "-m", "povidgen.cli", *argv],
        environment(),
        logs,
        lambda: api.count() >= 6,
        signal.SIGINT,
        before_signal=lambda: freeze(api),
    )
    written = check_interrupted(out, stopped)
    printed = rerun_and_check(argv, api, reference, stopped, cache, out, capsys)
    if written:
        assert f"resumed:      {written} rows were already done" in printed
    # every call in flight was cancelled before the event loop closed
    assert "Task was destroyed but it is pending" not in stopped.stderr


# -- a finished folder --------------------------------------------------------------------------


def test_a_finished_folder_is_left_alone_refused_for_another_configuration_or_rebuilt(
    dataset: Dataset,
    api: Api,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    shutil.copytree(reference.out, out)
    shutil.copytree(reference.cache, cache)
    argv = command(dataset, api, out, cache)

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    before = files()
    capsys.readouterr()
    assert main(argv) == 0
    assert "already holds this build" in capsys.readouterr().out
    assert files() == before

    for extra, difference in (
        (["--seed", "1"], "seed: 0 there, 1 now"),
        (["--shard-rows", "16"], "shards.max_rows: 8 there, 16 now"),
    ):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "another configuration" in err
        assert difference in err
        assert files() == before
    assert api.asked() == []

    inode = (out / "summary.json").stat().st_ino
    assert main([*argv, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "already holds" not in printed
    assert f"pairs built:  {reference.snapshot['summary']['pairs']}" in printed
    assert (out / "summary.json").stat().st_ino != inode  # a new folder was swapped in
    assert snapshot(out) == reference.snapshot
    assert api.asked() == []  # every reply came from the cache
