"""A dead or misconfigured endpoint is noticed at once: the circuit breaker stops the run."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from povidgen import PairBuilder
from povidgen.errors import ProviderFatalError
from povidgen.hallucinate.openai_api import OpenAIHallucinator
from tests.fakes.llm_server import FakeLLMServer
from tests.hallucinate.test_providers import SECRET, make, rows


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_dead_endpoint_stops_a_2000_row_run_quickly(tmp_path: Path) -> None:
    url = dead_url()
    hallucinator = OpenAIHallucinator(base_url=url, api_key=SECRET, cache_dir=tmp_path, timeout=5.0)
    builder = PairBuilder.from_dataset(rows(2000), hallucinator=hallucinator, id_column="id")
    started = time.perf_counter()
    pairs = builder.build()
    elapsed = time.perf_counter() - started
    assert elapsed < 60, elapsed  # not ~a minute of retries per row
    assert len(pairs) == 0
    assert isinstance(hallucinator.stopped, ProviderFatalError)
    assert url.rstrip("/") in str(hallucinator.stopped)
    assert builder.report.stopped is not None
    assert len(builder.errors) == 2000  # every row has its record
    not_attempted = [e for e in builder.errors if e.reason.startswith("not attempted")]
    assert len(not_attempted) > 1900
    assert hallucinator.calls <= 3 * hallucinator.max_connection_failures


def test_the_cli_exits_3_naming_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from povidgen.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    url = dead_url()
    command = ["build", "--demo", "--demo-size", "40", "--provider", "openai"]
    command += ["--base-url", url, "--out", str(tmp_path / "out")]
    assert main(command) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err
    assert url.rstrip("/") in err
    assert "Traceback" not in err


def test_answers_reset_the_count(server: FakeLLMServer, tmp_path: Path) -> None:
    """Dropped connections between answered requests never trip it."""
    server.faults = ["drop", None] * 12
    hallucinator = make("openai", server, max_connection_failures=2, cache_dir=tmp_path)
    options: dict[str, Any] = {"concurrency": 1}
    builder = PairBuilder.from_dataset(
        rows(8), hallucinator=hallucinator, id_column="id", **options
    )
    pairs = builder.build()
    assert hallucinator.stopped is None
    assert len(pairs) == 8


def test_an_endpoint_that_answered_before_gets_eight_times_the_rope(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    server.faults = [None, None] + ["drop"] * 40  # answers twice, then dies
    hallucinator = make(
        "openai", server, max_connection_failures=2, max_retries=0, cache_dir=tmp_path
    )
    builder = PairBuilder.from_dataset(
        rows(30), hallucinator=hallucinator, id_column="id", concurrency=1
    )
    pairs = builder.build()
    assert len(pairs) == 2
    assert isinstance(hallucinator.stopped, ProviderFatalError)
    assert hallucinator.calls == 2 + 2 * 8  # not 2 + 2: it had answered before
