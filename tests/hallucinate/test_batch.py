"""Batch mode: submitted once, resumed after the process dies, results joined and verified."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from povidgen import PairBuilder
from povidgen.errors import HallucinationError, ProviderError
from povidgen.hallucinate import batch as batch_module
from povidgen.hallucinate.anthropic_api import AnthropicHallucinator
from povidgen.hallucinate.batch import (
    BatchBackend,
    BatchItem,
    BatchProgress,
    BatchResult,
    custom_id_for,
    run_batches,
    split_chunks,
)
from povidgen.hallucinate.llm import LLMHallucinator, _data_url
from povidgen.hallucinate.openai_api import OpenAIHallucinator
from povidgen.hallucinate.pricing import CostTracker, Usage, cost_usd, estimate_tokens
from povidgen.hallucinate.prompts import build_messages
from povidgen.schema import Example
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


# -- provider-sized chunks, state per chunk, retries, progress, cost estimate -------------------


def rejected_by_id(builder: PairBuilder) -> dict[str, str]:
    return {pair["id"]: pair["rejected"] for pair in builder.pairs}  # type: ignore[attr-defined]


def batch_sizes(server: FakeLLMServer, provider: str) -> list[int]:
    """The number of requests in each batch submitted so far, in order."""
    if provider == "openai":
        return [len(f.content.splitlines()) for f in server.files.values() if f.purpose == "batch"]
    return [
        len(r.body["requests"])
        for r in server.requests
        if r.method == "POST" and r.path.rstrip("/").endswith("/messages/batches")
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_chunks_split_at_the_request_limit_and_match_an_unchunked_run(
    server: FakeLLMServer,
    tmp_path: Path,
    provider: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    whole = make(provider, server, tmp_path / "whole")
    whole.use_cache = False
    expected = rejected_by_id(build(whole))
    assert server.batches_created[provider] == 1

    monkeypatch.setattr(BatchBackend, "max_requests", 3)
    chunked = make(provider, server, tmp_path / "chunked")
    chunked.use_cache = False
    with caplog.at_level(logging.INFO, logger="povidgen"):
        builder = build(chunked)
    assert server.batches_created[provider] == 1 + 3
    assert batch_sizes(server, provider) == [8, 3, 3, 2]
    assert builder.errors == []
    assert rejected_by_id(builder) == expected
    assert chunked.cost.spent == pytest.approx(whole.cost.spent)
    assert list((tmp_path / "chunked").iterdir()) == []  # every chunk's state removed once joined
    messages = [record.getMessage() for record in caplog.records]
    assert any("3 of 3 chunks, 8 of 8 requests done" in message for message in messages)


class _Offline(BatchBackend):
    """A backend that only sizes requests (no provider behind it)."""

    def __init__(self, provider: str = "openai") -> None:
        self.provider = provider

    async def submit(self, items: Sequence[BatchItem]) -> str:
        raise AssertionError

    async def poll(self, batch_id: str) -> BatchProgress:
        raise AssertionError

    async def results(self, batch_id: str) -> dict[str, BatchResult]:
        raise AssertionError


_EXAMPLE = Example(id="x", image=Image.new("RGB", (4, 4)), prompt="q?", answer="a.")


def submitted_batches(server: FakeLLMServer, provider: str) -> list[tuple[int, list[int]]]:
    """Each batch submitted so far: the bytes the provider received for it and the
    :meth:`BatchBackend.request_bytes` of each of its requests, in order."""
    backend = _Offline(provider)
    if provider == "openai":
        return [
            (
                len(upload.content),
                [
                    backend.request_bytes(BatchItem(line["custom_id"], _EXAMPLE, line["body"]))
                    for line in map(json.loads, upload.content.splitlines())
                ],
            )
            for upload in server.files.values()
            if upload.purpose == "batch"
        ]
    return [
        (
            len(json.dumps(r.body, separators=(",", ":")).encode("utf-8")),
            [
                backend.request_bytes(BatchItem(item["custom_id"], _EXAMPLE, item["params"]))
                for item in r.body["requests"]
            ],
        )
        for r in server.requests
        if r.method == "POST" and r.path.rstrip("/").endswith("/messages/batches")
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_chunks_split_at_the_byte_limit(
    server: FakeLLMServer, tmp_path: Path, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = make(provider, server, tmp_path / "whole")
    whole.use_cache = False
    expected = rejected_by_id(build(whole))
    ((_, sizes),) = submitted_batches(server, provider)
    limit = max(sizes) * 3  # about three requests a batch
    monkeypatch.setattr(BatchBackend, "max_bytes", limit)

    chunked = make(provider, server, tmp_path / "chunked")
    chunked.use_cache = False
    builder = build(chunked)
    assert builder.errors == []
    assert rejected_by_id(builder) == expected
    chunks = submitted_batches(server, provider)[1:]
    assert len(chunks) == server.batches_created[provider] - 1 >= 3
    assert [size for _, sizes in chunks for size in sizes] == sizes  # in order, all of them
    for sent, chunk_sizes in chunks:
        assert sent <= sum(chunk_sizes) <= limit  # what the provider got is within the limit
    for (_, chunk_sizes), (_, following) in itertools.pairwise(chunks):
        assert sum(chunk_sizes) + following[0] > limit  # each chunk closed at the limit
    assert list((tmp_path / "chunked").iterdir()) == []


def test_split_chunks_closes_a_chunk_exactly_at_each_limit() -> None:
    backend = _Offline()
    items = [BatchItem(f"r{n}", _EXAMPLE, {"text": "x" * 50}) for n in range(7)]
    size = backend.request_bytes(items[0])
    assert {backend.request_bytes(item) for item in items} == {size}

    def split(max_requests: int | None, max_bytes: int | None) -> list[int]:
        backend.max_requests, backend.max_bytes = max_requests, max_bytes
        chunks, oversized = split_chunks(items, backend)
        assert oversized == {}
        assert [item for chunk in chunks for item in chunk] == items
        return [len(chunk) for chunk in chunks]

    assert split(None, None) == [7]  # the provider's limits: far away
    assert split(3, None) == [3, 3, 1]
    assert split(1, None) == [1] * 7
    assert split(None, 2 * size) == [2, 2, 2, 1]  # two fill a chunk to the byte
    assert split(None, 2 * size + 1) == [2, 2, 2, 1]
    assert split(None, 2 * size - 1) == [1] * 7
    assert split(2, 3 * size) == [2, 2, 2, 1]  # whichever limit comes first
    assert split(3, 2 * size) == [2, 2, 2, 1]
    for limits in ((0, None), (None, 0)):
        with pytest.raises(ValueError, match="positive"):
            split(*limits)


def test_split_chunks_keeps_input_order_and_sets_oversized_requests_aside() -> None:
    example = _EXAMPLE
    backend = _Offline()
    backend.max_requests = 3
    overhead = backend.request_bytes(BatchItem("r0", example, {"text": ""}))
    backend.max_bytes = 3 * overhead + 100
    items = [
        BatchItem(f"r{n}", example, {"text": "x" * size})
        for n, size in enumerate([10, 10, 10, 90, 20, 3 * overhead + 200, 10])
    ]
    chunks, oversized = split_chunks(items, backend)
    assert [[item.custom_id for item in chunk] for chunk in chunks] == [
        ["r0", "r1", "r2"],  # closed by the request limit
        ["r3", "r4"],  # closed by the byte limit: r6 would pass it
        ["r6"],
    ]
    assert set(oversized) == {"r5"}  # larger than a whole batch: not submitted at all
    assert "bytes" in str(oversized["r5"])
    again, _ = split_chunks(items, backend)  # a resumed run maps to the same chunks
    assert [[i.custom_id for i in c] for c in again] == [[i.custom_id for i in c] for c in chunks]


def test_an_oversized_request_is_a_row_error_not_a_crash(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BatchBackend, "max_bytes", 100)  # smaller than any request
    builder = build(make("anthropic", server, tmp_path))
    assert server.batches_created["anthropic"] == 0
    assert len(builder.errors) == 8
    assert {e.error_type for e in builder.errors} == {"ProviderError"}
    assert all("bytes" in e.reason for e in builder.errors)


class _FaultsOnce(dict[str, Any]):
    """Batch item faults that hit only the first batch an item is in."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.pop(key, default)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expired_and_transiently_failed_items_are_submitted_again(
    server: FakeLLMServer, tmp_path: Path, provider: str
) -> None:
    server.batch_item_faults = _FaultsOnce(
        {
            custom_id_for("demo-0001"): "drop",  # expired
            custom_id_for("demo-0003"): "529",  # overloaded
            custom_id_for("demo-0005"): "429",  # rate limited
        }
    )
    builder = build(make(provider, server, tmp_path))
    assert builder.errors == []
    assert len(builder.pairs) == 8  # type: ignore[attr-defined]
    assert batch_sizes(server, provider) == [8, 3]
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(("retries", "batches"), [(2, 3), (0, 1)])
def test_resubmission_is_bounded_by_batch_retries(
    server: FakeLLMServer, tmp_path: Path, provider: str, retries: int, batches: int
) -> None:
    server.batch_item_faults = {
        custom_id_for("demo-0001"): "500",  # transient, but it never goes away
        custom_id_for("demo-0002"): "quota",  # permanent: never submitted again
    }
    hallucinator = make(provider, server, tmp_path)
    hallucinator.batch_retries = retries
    builder = build(hallucinator)
    assert server.batches_created[provider] == batches
    assert batch_sizes(server, provider) == [8] + [1] * (batches - 1)
    assert list(tmp_path.glob("*.json")) == []  # every round's state removed once joined
    assert {e.id: e.error_type for e in builder.errors} == {
        "demo-0001": "ProviderError",
        "demo-0002": "ProviderError",
    }
    assert len(builder.pairs) == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_killed_between_chunks_the_next_run_resumes_them_and_submits_the_rest(
    server: FakeLLMServer, tmp_path: Path, provider: str
) -> None:
    server.batch_polls_until_done = 10**6
    module, cls, backend = (
        ("openai_api", "OpenAIHallucinator", "_OpenAIBatches")
        if provider == "openai"
        else ("anthropic_api", "AnthropicHallucinator", "_AnthropicBatches")
    )
    url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    script = textwrap.dedent(
        f"""
        import asyncio
        from povidgen import PairBuilder
        from povidgen.hallucinate.batch import BatchBackend
        from povidgen.hallucinate.{module} import {cls} as Provider, {backend} as Backend
        from povidgen.sources.demo import demo_dataset

        BatchBackend.max_requests = 3
        submit = Backend.submit
        submitted = 0

        async def submit_then_hang(self, items):
            global submitted
            submitted += 1
            if submitted > 1:
                await asyncio.sleep(3600)  # the process dies while submitting the second chunk
            return await submit(self, items)

        Backend.submit = submit_then_hang
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
            assert time.monotonic() < deadline, "the first run never submitted its first chunk"
            time.sleep(0.05)
        time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert server.batches_created[provider] == 1
    assert len(list(tmp_path.glob(f"{provider}-*.json"))) == 1

    server.batch_polls_until_done = 1
    limited = pytest.MonkeyPatch()
    limited.setattr(BatchBackend, "max_requests", 3)
    try:
        builder = build(make(provider, server, tmp_path))
    finally:
        limited.undo()
    assert server.batches_created[provider] == 3  # the first chunk resumed, two submitted
    assert batch_sizes(server, provider) == [3, 3, 2]
    assert builder.errors == []
    assert len(builder.pairs) == 8  # type: ignore[attr-defined]
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.parametrize(
    ("provider", "image_tokens"),
    [("openai", 2833 + 4 * 5667), ("anthropic", 1399)],  # gpt-4o-mini, 4 tiles; 1024**2 / 750
)
def test_the_batch_cost_estimate_counts_an_image_as_the_providers_image_tokens(
    server: FakeLLMServer, tmp_path: Path, provider: str, image_tokens: int
) -> None:
    hallucinator = make(provider, server, tmp_path)
    noise = Image.effect_noise((1024, 1024), 64).convert("RGB")  # a JPEG of hundreds of KB
    image_url = _data_url(noise, 1024)
    assert hallucinator.image_tokens_for(1024, 1024) == image_tokens
    assert estimate_tokens(image_url) > 10 * image_tokens
    with_image = hallucinator._batch_request("system text", "user text", image_url)
    without = hallucinator._batch_request("system text", "user text", None)
    estimate = hallucinator._batch_input_tokens(with_image)
    text_only = hallucinator._batch_input_tokens(without)
    assert text_only == estimate_tokens(json.dumps(without))
    # the text tokens plus the image's tokens for its size, give or take the part's JSON keys
    assert text_only + image_tokens <= estimate <= text_only + image_tokens + 30
    small = _data_url(noise, 200)  # the size is read from the image sent, not assumed
    estimate = hallucinator._batch_input_tokens(
        hallucinator._batch_request("system text", "user text", small)
    )
    assert estimate - text_only == pytest.approx(hallucinator.image_tokens_for(200, 200), abs=30)


@pytest.mark.parametrize(
    ("provider", "sent"), [("openai", (1024, 512)), ("anthropic", (1568, 784))]
)
def test_a_live_reservation_counts_an_image_as_the_providers_image_tokens(
    server: FakeLLMServer,
    tmp_path: Path,
    provider: str,
    sent: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hallucinator = make(provider, server, tmp_path)
    hallucinator.mode = "live"
    hallucinator.use_cache = False
    hallucinator.max_attempts = 1
    reserved: list[float] = []
    reserve = CostTracker.reserve

    def record(tracker: CostTracker, estimate: float) -> bool:
        reserved.append(estimate)
        return reserve(tracker, estimate)

    monkeypatch.setattr(CostTracker, "reserve", record)
    picture = Image.effect_noise((2000, 1000), 64).convert("RGB")  # scaled down to be sent
    example = Example(
        id="live",
        image=picture,
        prompt="Describe the image.",
        answer="There are two red apples on the left of a blue cup.",
    )

    async def call() -> None:
        with contextlib.suppress(HallucinationError):
            await hallucinator.ahallucinate(example)
        await hallucinator.aclose()

    asyncio.run(call())
    system, user = build_messages(example, hallucinator.prompt)
    image_tokens = hallucinator.image_tokens_for(*sent)
    expected = Usage(
        input_tokens=estimate_tokens(system + user) + image_tokens,
        output_tokens=hallucinator.max_output_tokens,
    )
    assert reserved == [pytest.approx(cost_usd(hallucinator.model, expected))]
    # what counting its base64 text would have reserved instead: several times as much
    assert estimate_tokens(_data_url(picture, hallucinator.image_max_side)) > 5 * image_tokens


# -- progress while polling, per-chunk state, polls that fail --------------------------------


@pytest.mark.parametrize(("provider", "done"), [("openai", "completed"), ("anthropic", "ended")])
def test_each_chunk_has_its_own_state_and_its_progress_is_reported_while_polling(
    server: FakeLLMServer,
    tmp_path: Path,
    provider: str,
    done: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.batch_polls_until_done = 3
    server.batch_item_faults = {custom_id_for("demo-0004"): "quota"}  # fails for good
    monkeypatch.setattr(BatchBackend, "max_requests", 3)
    hallucinator = make(provider, server, tmp_path)
    polls: list[tuple[list[BatchProgress], dict[str, int]]] = []

    def seen(progress: Sequence[BatchProgress]) -> None:
        states = [json.loads(path.read_text()) for path in tmp_path.glob(f"{provider}-*.json")]
        polls.append((list(progress), {state["batch_id"]: state["requests"] for state in states}))

    hallucinator.on_batch_progress = seen
    with caplog.at_level(logging.INFO, logger="povidgen"):
        builder = build(hallucinator)
    assert [e.id for e in builder.errors] == ["demo-0004"]

    assert len(polls) == 3  # the callback sees every round of polls
    first, states = polls[0]
    assert [p.total for p in first] == [3, 3, 2]
    assert not any(p.finished for p in first)
    assert states == {p.batch_id: p.total for p in first}  # one state file per chunk
    last, states = polls[-1]
    assert [p.batch_id for p in last] == [p.batch_id for p in first]
    assert all(p.finished and p.status == done for p in last)
    assert [(p.completed, p.failed) for p in last] == [(3, 0), (2, 1), (2, 0)]
    assert states == {}  # every chunk's state removed once joined

    messages = [record.getMessage() for record in caplog.records]
    for number, (start, end) in enumerate(zip(first, last, strict=True), start=1):
        prefix = f"{provider} batch {start.batch_id} (chunk {number} of 3): "
        assert prefix + f"in_progress, 0 of {start.total} requests completed, 0 failed" in messages
        assert prefix + end.describe() in messages
    # a poll that changes nothing is not logged again (the second poll of each chunk)
    assert sum("(chunk 1 of 3): in_progress" in message for message in messages) == 1


class _Scripted(BatchBackend):
    """One batch whose first ``poll_faults`` polls raise, as a dropped connection does."""

    provider = "openai"

    def __init__(self, poll_faults: int) -> None:
        self.poll_faults = poll_faults
        self.polls = 0
        self.items: list[BatchItem] = []

    async def submit(self, items: Sequence[BatchItem]) -> str:
        self.items = list(items)
        return "batch_scripted"

    async def poll(self, batch_id: str) -> BatchProgress:
        self.polls += 1
        if self.polls <= self.poll_faults:
            raise ConnectionError("connection reset by peer")
        return BatchProgress(batch_id, "completed", True, len(self.items), len(self.items), 0)

    async def results(self, batch_id: str) -> dict[str, BatchResult]:
        return {
            item.custom_id: ("reply", Usage(input_tokens=1, output_tokens=1)) for item in self.items
        }


def run_scripted(backend: _Scripted, state_dir: Path) -> dict[str, BatchResult]:
    items = [BatchItem(f"r{n}", _EXAMPLE, {"text": str(n)}) for n in range(3)]
    return asyncio.run(
        run_batches(backend, items, state_dir=state_dir, key=lambda _: "key", poll_interval=0)
    )


def test_a_poll_that_raises_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    faults = batch_module._POLL_FAILURES - 1
    backend = _Scripted(poll_faults=faults)
    with caplog.at_level(logging.WARNING, logger="povidgen"):
        results = run_scripted(backend, tmp_path)
    assert backend.polls == faults + 1
    assert all(not isinstance(result, ProviderError) for result in results.values())
    assert len(results) == 3
    assert list(tmp_path.iterdir()) == []
    assert sum("trying again" in record.getMessage() for record in caplog.records) == faults


def test_a_batch_that_cannot_be_polled_fails_its_rows_and_keeps_its_state(tmp_path: Path) -> None:
    backend = _Scripted(poll_faults=10**6)
    results = run_scripted(backend, tmp_path)
    assert backend.polls == batch_module._POLL_FAILURES  # bounded
    assert all(isinstance(result, ProviderError) for result in results.values())
    assert "connection reset" in str(results["r0"])
    (state,) = tmp_path.iterdir()  # kept, so that a rerun resumes polling the batch
    assert json.loads(state.read_text())["batch_id"] == "batch_scripted"
