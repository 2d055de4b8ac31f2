"""The fake LLM server the provider tests share: one per test module, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.llm_server import FakeLLMServer


@pytest.fixture(scope="module")
def running() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(retry_after=0.3, slow_seconds=1.5) as server:
        yield server


@pytest.fixture
def server(running: FakeLLMServer) -> FakeLLMServer:
    """The module's server with no faults, no latency, no rate limit and no recorded requests."""
    running.faults = None
    running.latency = 0.0
    running.rate_limit_rpm = None
    running.requests.clear()
    return running
