"""Batch mode: submitted once, resumed after the process dies, results joined and verified."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from povidgen import PairBuilder
from povidgen.hallucinate.anthropic_api import AnthropicHallucinator
from povidgen.hallucinate.llm import LLMHallucinator
from povidgen.hallucinate.openai_api import OpenAIHallucinator
from povidgen.sources.demo import demo_dataset
from tests.fakes.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(batch_polls_until_done=2) as running:
        yield running


def make(provider: str, server: FakeLLMServer, batch_dir: Path) -> LLMHallucinator:
    options = {
        "api_key": "sk-batch",
        "mode": "batch",
        "batch_dir": batch_dir,
        "poll_interval": 0.02,
    }
    if provider == "openai":
        return OpenAIHallucinator(base_url=server.openai_base_url, **options)  # type: ignore[arg-type]
    return AnthropicHallucinator(base_url=server.anthropic_base_url, **options)  # type: ignore[arg-type]


def build(hallucinator: LLMHallucinator) -> PairBuilder:
    builder = PairBuilder.from_dataset(
        demo_dataset(n=8),
        prompt_column="question",
        id_column="id",
        hallucinator=hallucinator,
        batch_size=100,
    )
    builder.pairs = builder.build()  # type: ignore[attr-defined]
    return builder


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_run_verifies_and_costs_half(
    server: FakeLLMServer, tmp_path: Path, provider: str
) -> None:
    hallucinator = make(provider, server, tmp_path)
    builder = build(hallucinator)
    assert builder.errors == []
    assert len(builder.pairs) == 8  # type: ignore[attr-defined]
    assert server.batches_created[provider] == 1
    assert [r for r in server.requests if r.index is not None and "batch" not in r.path] == []
    live = make(provider, server, tmp_path)
    live.mode = "live"
    live.use_cache = False  # else the batch's replies answer it from the reply cache, for free
    build(live)
    assert hallucinator.cost.spent == pytest.approx(live.cost.spent / 2, rel=0.05)


def test_failed_items_become_row_errors(server: FakeLLMServer, tmp_path: Path) -> None:
    from povidgen.hallucinate.batch import custom_id_for

    server.batch_item_faults = {
        custom_id_for("demo-0001"): "500",
        custom_id_for("demo-0002"): "identical",
    }
    builder = build(make("openai", server, tmp_path))
    errors = {e.id: e for e in builder.errors}
    assert set(errors) == {"demo-0001", "demo-0002"}
    assert errors["demo-0001"].error_type == "ProviderError"
    assert errors["demo-0002"].error_type == "VerificationError"
    assert len(builder.pairs) == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_killed_after_submission_the_next_run_resumes_instead_of_resubmitting(
    server: FakeLLMServer, tmp_path: Path, provider: str
) -> None:
    server.batch_polls_until_done = 10**6  # the batch stays in progress while the first run waits
    module, cls = (
        ("openai_api", "OpenAIHallucinator")
        if provider == "openai"
        else ("anthropic_api", "AnthropicHallucinator")
    )
    url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    script = textwrap.dedent(
        f"""
        from povidgen import PairBuilder
        from povidgen.hallucinate.{module} import {cls} as Provider
        from povidgen.sources.demo import demo_dataset

        hallucinator = Provider(
            base_url={url!r},
            api_key="sk-batch", mode="batch", batch_dir={str(tmp_path)!r}, poll_interval=0.02,
        )
        PairBuilder.from_dataset(
            demo_dataset(n=8), prompt_column="question", id_column="id",
            hallucinator=hallucinator, batch_size=100,
        ).build()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(f"{provider}-*.json")):
            assert process.poll() is None, "the first run ended before submitting"
            assert time.monotonic() < deadline, "the first run never submitted its batch"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # the process dies while polling
    finally:
        process.wait(timeout=30)
    assert server.batches_created[provider] == 1

    server.batch_polls_until_done = 1
    builder = build(make(provider, server, tmp_path))
    assert server.batches_created[provider] == 1  # resumed, not submitted again
    assert builder.errors == []
    assert len(builder.pairs) == 8  # type: ignore[attr-defined]


def test_a_rerun_in_batch_mode_submits_only_uncached_requests(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = make("openai", server, tmp_path / "first")
    first.cache_dir = cache
    build(first)
    assert server.batches_created["openai"] == 1
    again = make("openai", server, tmp_path / "again")  # a new batch folder: nothing to resume
    again.cache_dir = cache
    builder = build(again)
    assert server.batches_created["openai"] == 1  # every reply came from the cache
    assert builder.errors == []
    assert again.cost.spent == 0
