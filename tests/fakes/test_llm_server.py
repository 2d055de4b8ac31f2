"""Tests of the fake LLM server itself, driven through the real ``openai`` and ``anthropic``
SDKs."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from tests.fakes.llm_server import (
    FAULT_KINDS,
    REFUSAL_TEXT,
    FakeLLMServer,
    FaultKind,
    count_tokens,
    extract_answer,
    fake_llm_server,  # noqa: F401 - registers the fixture
    prompt_tokens,
)

ANSWER = "A man holds two red apples on the left side of the table."
PROMPT = f"Rewrite the answer with errors.\n<answer>\n{ANSWER}\n</answer>"


class FakeEdit(pydantic.BaseModel):
    """One edit as the fake returns it."""

    kind: str
    original: str
    injected: str


class FakeRejected(pydantic.BaseModel):
    """The structured output the fake answers."""

    rejected: str
    edits: list[FakeEdit]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    """A running fake server (the same as the shared ``fake_llm_server`` fixture)."""
    with FakeLLMServer() as running:
        yield running


def _messages(text: str = PROMPT) -> Any:
    return [{"role": "user", "content": text}]


def _openai(server: FakeLLMServer, **kwargs: Any) -> openai.AsyncOpenAI:
    options: dict[str, Any] = {"api_key": "sk-openai-test", "max_retries": 0, **kwargs}
    return openai.AsyncOpenAI(base_url=server.openai_base_url, **options)


def _anthropic(server: FakeLLMServer, **kwargs: Any) -> anthropic.AsyncAnthropic:
    options: dict[str, Any] = {"api_key": "sk-ant-test", "max_retries": 0, **kwargs}
    return anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, **options)


async def _openai_parse(client: openai.AsyncOpenAI, text: str = PROMPT) -> FakeRejected | None:
    completion = await client.chat.completions.parse(
        model="gpt-test", messages=_messages(text), response_format=FakeRejected
    )
    return completion.choices[0].message.parsed


async def _anthropic_parse(
    client: anthropic.AsyncAnthropic, text: str = PROMPT
) -> FakeRejected | None:
    message = await client.messages.parse(
        model="claude-test", max_tokens=256, messages=_messages(text), output_format=FakeRejected
    )
    return message.parsed_output


def _run_openai(server: FakeLLMServer, call: Callable[[openai.AsyncOpenAI], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = _openai(server)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())


def _run_anthropic(
    server: FakeLLMServer, call: Callable[[anthropic.AsyncAnthropic], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        client = _anthropic(server)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())


# ---- normal replies ---------------------------------------------------------------------------


def test_openai_parse_returns_a_corrupted_answer_with_word_count_usage(
    server: FakeLLMServer,
) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.parse(
            model="gpt-test", messages=_messages(), response_format=FakeRejected
        )

    completion = _run_openai(server, call)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, FakeRejected)
    assert parsed.rejected != ANSWER
    assert parsed.edits
    assert all(edit.injected in parsed.rejected for edit in parsed.edits)
    assert completion.model == "gpt-test"
    content = completion.choices[0].message.content
    assert completion.usage.prompt_tokens == count_tokens(PROMPT)
    assert completion.usage.completion_tokens == count_tokens(content)
    assert completion.usage.total_tokens == count_tokens(PROMPT) + count_tokens(content)
    body = server.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "FakeRejected"


def test_anthropic_parse_returns_a_corrupted_answer_with_word_count_usage(
    server: FakeLLMServer,
) -> None:
    async def call(client: anthropic.AsyncAnthropic) -> Any:
        return await client.messages.parse(
            model="claude-test", max_tokens=256, messages=_messages(), output_format=FakeRejected
        )

    message = _run_anthropic(server, call)
    parsed = message.parsed_output
    assert isinstance(parsed, FakeRejected)
    assert parsed.rejected != ANSWER
    assert parsed.edits
    assert message.content[0].type == "text"
    assert message.usage.input_tokens == count_tokens(PROMPT)
    assert message.usage.output_tokens == count_tokens(message.content[0].text)
    assert server.requests[0].body["output_config"]["format"]["type"] == "json_schema"


def test_the_same_answer_always_gets_the_same_corruption(server: FakeLLMServer) -> None:
    first = _run_openai(server, _openai_parse)
    second = _run_anthropic(server, _anthropic_parse)
    assert first == second


def test_a_request_without_an_answer_block_is_a_bad_request(server: FakeLLMServer) -> None:
    with pytest.raises(openai.BadRequestError, match="answer"):
        _run_openai(server, lambda client: _openai_parse(client, "No markers here."))
    with pytest.raises(anthropic.BadRequestError, match="answer"):
        _run_anthropic(server, lambda client: _anthropic_parse(client, "No markers here."))


def test_extract_answer_reads_block_and_inline_forms() -> None:
    assert extract_answer({"messages": _messages()}) == ANSWER
    parts = [{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": PROMPT}]
    assert extract_answer({"messages": [{"role": "user", "content": parts}]}) == ANSWER
    assert extract_answer({"messages": _messages("x <answer>Two cats.</answer> y")}) == "Two cats."
    assert extract_answer({"messages": _messages("nothing")}) is None
    assert prompt_tokens({"system": "Be terse.", "messages": [{"role": "user", "content": parts}]})


def test_custom_responder_may_return_a_dict_or_raw_text(server: FakeLLMServer) -> None:
    seen: list[tuple[str, str]] = []

    def responder(provider: str, body: dict[str, Any]) -> dict[str, Any] | str:
        seen.append((provider, body["model"]))
        if provider == "openai":
            return {"rejected": "Something else entirely.", "edits": []}
        return "plain text"

    server.responder = responder
    parsed = _run_openai(server, _openai_parse)
    assert parsed == FakeRejected(rejected="Something else entirely.", edits=[])

    async def create(client: anthropic.AsyncAnthropic) -> Any:
        return await client.messages.create(
            model="claude-test", max_tokens=16, messages=_messages()
        )

    message = _run_anthropic(server, create)
    assert message.content[0].text == "plain text"
    assert seen == [("openai", "gpt-test"), ("anthropic", "claude-test")]


# ---- faults -----------------------------------------------------------------------------------


OPENAI_ERRORS: dict[FaultKind, tuple[type[Exception], int]] = {
    "429": (openai.RateLimitError, 429),
    "quota": (openai.RateLimitError, 429),
    "401": (openai.AuthenticationError, 401),
    "500": (openai.InternalServerError, 500),
    "529": (openai.InternalServerError, 503),
}
ANTHROPIC_ERRORS: dict[FaultKind, tuple[type[Exception], int]] = {
    "429": (anthropic.RateLimitError, 429),
    # PaymentRequiredError is newer than anthropic 2.0 (the lowest povidgen allows); povidgen
    # reads the 402 status, whichever class the SDK raises for it
    "quota": (getattr(anthropic, "PaymentRequiredError", anthropic.APIStatusError), 402),
    "401": (anthropic.AuthenticationError, 401),
    "500": (anthropic.InternalServerError, 500),
    "529": (anthropic.OverloadedError, 529),
}


@pytest.mark.parametrize("kind", sorted(OPENAI_ERRORS))
def test_openai_http_error_faults(server: FakeLLMServer, kind: FaultKind) -> None:
    server.faults = [kind]
    expected, status = OPENAI_ERRORS[kind]
    with pytest.raises(expected) as caught:
        _run_openai(server, _openai_parse)
    error = caught.value
    assert isinstance(error, openai.APIStatusError)
    assert error.status_code == status
    assert error.request_id is not None
    if kind == "429":
        assert error.response.headers["retry-after"] == "1"
        assert error.code == "rate_limit_exceeded"
    if kind == "quota":
        assert error.code == "insufficient_quota"
        assert error.type == "insufficient_quota"
        assert "retry-after" not in error.response.headers
    assert server.requests[-1].fault == kind
    assert server.requests[-1].status == status
    assert _run_openai(server, _openai_parse) is not None  # the list is used up: normal again


@pytest.mark.parametrize("kind", sorted(ANTHROPIC_ERRORS))
def test_anthropic_http_error_faults(server: FakeLLMServer, kind: FaultKind) -> None:
    server.faults = [kind]
    server.retry_after = 3
    expected, status = ANTHROPIC_ERRORS[kind]
    with pytest.raises(expected) as caught:
        _run_anthropic(server, _anthropic_parse)
    error = caught.value
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == status
    assert error.request_id is not None
    expected_type = {
        "429": "rate_limit_error",
        "quota": "billing_error",
        "401": "authentication_error",
        "500": "api_error",
        "529": "overloaded_error",
    }[kind]
    assert error.type == expected_type
    if kind == "429":
        assert error.response.headers["retry-after"] == "3"
    if kind == "529":  # a server error (OverloadedError subclasses InternalServerError only
        assert error.status_code >= 500  # in later SDKs; povidgen retries by the status)


def test_slow_fault_times_out_both_clients(server: FakeLLMServer) -> None:
    server.slow_seconds = 3.0
    server.faults = ["slow", "slow"]

    async def main() -> None:
        openai_client = _openai(server, timeout=0.2)
        anthropic_client = _anthropic(server, timeout=0.2)
        try:
            with pytest.raises(openai.APITimeoutError):
                await _openai_parse(openai_client)
            with pytest.raises(anthropic.APITimeoutError):
                await _anthropic_parse(anthropic_client)
        finally:
            await openai_client.close()
            await anthropic_client.close()

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 2.0
    assert [r.fault for r in server.requests] == ["slow", "slow"]


def test_slow_fault_answers_a_patient_client(server: FakeLLMServer) -> None:
    server.slow_seconds = 0.3
    server.faults = ["slow"]
    started = time.monotonic()
    assert _run_openai(server, _openai_parse) is not None
    assert time.monotonic() - started >= 0.3


def test_drop_fault_is_a_connection_error_not_a_timeout(server: FakeLLMServer) -> None:
    server.faults = ["drop", "drop"]
    with pytest.raises(openai.APIConnectionError) as openai_error:
        _run_openai(server, _openai_parse)
    assert not isinstance(openai_error.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError) as anthropic_error:
        _run_anthropic(server, _anthropic_parse)
    assert not isinstance(anthropic_error.value, anthropic.APITimeoutError)
    assert [r.status for r in server.requests] == [None, None]


def test_malformed_fault_fails_parsing_in_both_sdks(server: FakeLLMServer) -> None:
    server.faults = ["malformed", "malformed"]
    with pytest.raises(pydantic.ValidationError, match="json_invalid"):
        _run_openai(server, _openai_parse)
    with pytest.raises(pydantic.ValidationError, match="json_invalid"):
        _run_anthropic(server, _anthropic_parse)


@pytest.mark.parametrize("kind", ["refusal", "identical"])
def test_text_faults_parse_but_carry_no_edits(server: FakeLLMServer, kind: FaultKind) -> None:
    server.faults = [kind, kind]
    expected = REFUSAL_TEXT if kind == "refusal" else ANSWER
    assert _run_openai(server, _openai_parse) == FakeRejected(rejected=expected, edits=[])
    assert _run_anthropic(server, _anthropic_parse) == FakeRejected(rejected=expected, edits=[])


def test_fault_callable_sees_provider_index_and_body(server: FakeLLMServer) -> None:
    calls: list[tuple[str, int, str]] = []

    def plan(provider: str, index: int, body: dict[str, Any]) -> Any:
        calls.append((provider, index, body["model"]))
        return "500" if index == 1 else None

    server.faults = plan
    assert _run_openai(server, _openai_parse) is not None
    with pytest.raises(anthropic.InternalServerError):
        _run_anthropic(server, _anthropic_parse)
    assert calls == [("openai", 0, "gpt-test"), ("anthropic", 1, "claude-test")]


def test_unknown_fault_kinds_are_refused(server: FakeLLMServer) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.faults = ["418"]  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.fail_randomly(0.5, kinds=["teapot"])  # type: ignore[list-item]


def test_fail_randomly_is_deterministic_per_seed_and_index(server: FakeLLMServer) -> None:
    server.fail_randomly(0.5, seed=7, kinds=["500", "429"])
    plan = server.faults
    assert callable(plan)
    first = [plan("openai", index, {}) for index in range(200)]
    server.fail_randomly(0.5, seed=7, kinds=["500", "429"])
    second = server.faults
    assert callable(second)
    assert [second("anthropic", index, {}) for index in range(200)] == first
    assert set(first) == {None, "500", "429"}
    assert 60 < first.count(None) < 140
    server.fail_randomly(0.5, seed=8)
    other = server.faults
    assert callable(other)
    assert [other("openai", index, {}) for index in range(200)] != first
    server.fail_randomly(1.0, seed=1, kinds=["500"])

    async def four(client: openai.AsyncOpenAI) -> list[str]:
        outcomes = []
        for _ in range(4):
            try:
                await _openai_parse(client)
                outcomes.append("ok")
            except openai.InternalServerError:
                outcomes.append("500")
        return outcomes

    assert _run_openai(server, four) == ["500"] * 4
    assert set(FAULT_KINDS) >= {"429", "quota", "401", "500", "529", "slow", "drop"}


def test_sdk_retries_honour_retry_after(server: FakeLLMServer) -> None:
    server.faults = ["429", "429"]
    server.retry_after = 0.2

    async def call(client: openai.AsyncOpenAI) -> FakeRejected | None:
        return await _openai_parse(client.with_options(max_retries=2))

    assert _run_openai(server, call) is not None
    times = [r.timestamp for r in server.requests]
    assert [r.status for r in server.requests] == [429, 429, 200]
    assert times[1] - times[0] >= 0.2
    assert times[2] - times[1] >= 0.2
    assert server.requests[1].headers["x-stainless-retry-count"] == "1"


def test_concurrent_requests_recover_from_random_429s_through_sdk_retries(
    server: FakeLLMServer,
) -> None:
    server.fail_randomly(0.3, seed=3, kinds=["429"])
    server.retry_after = 0.05

    async def main() -> list[FakeRejected | None]:
        client = _openai(server, max_retries=6)
        try:
            return await asyncio.gather(*(_openai_parse(client) for _ in range(16)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert all(result is not None for result in results)
    statuses = [r.status for r in server.requests]
    assert statuses.count(200) == 16
    assert statuses.count(429) == len(statuses) - 16 > 0


def test_latency_is_added_to_every_generation_reply(server: FakeLLMServer) -> None:
    server.latency = 0.25
    started = time.monotonic()
    _run_anthropic(server, _anthropic_parse)
    assert time.monotonic() - started >= 0.25


def test_rate_limit_rpm_uses_a_sliding_window(server: FakeLLMServer) -> None:
    server.rate_limit_rpm = 2
    server.rate_limit_window = 0.5

    async def main() -> list[int]:
        client = _openai(server)
        try:
            await _openai_parse(client)
            await _openai_parse(client)
            with pytest.raises(openai.RateLimitError) as caught:
                await _openai_parse(client)
            retry_after = int(caught.value.response.headers["retry-after"])
            assert 1 <= retry_after <= 60
            assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
            await asyncio.sleep(0.55)
            await _openai_parse(client)
            return [r.status or 0 for r in server.requests]
        finally:
            await client.close()

    assert asyncio.run(main()) == [200, 200, 429, 200]
    assert server.requests[2].fault == "rpm"
    # each provider has its own budget
    assert _run_anthropic(server, _anthropic_parse) is not None


def test_rate_limit_retry_after_counts_down_to_the_oldest_request(server: FakeLLMServer) -> None:
    server.rate_limit_rpm = 1
    with pytest.raises(anthropic.RateLimitError) as caught:
        _run_anthropic(server, lambda client: _two(client))
    assert caught.value.response.headers["retry-after"] in {"59", "60"}


async def _two(client: anthropic.AsyncAnthropic) -> None:
    await _anthropic_parse(client)
    await _anthropic_parse(client)


# ---- batches ----------------------------------------------------------------------------------


def _batch_line(custom_id: str, answer: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-test", "messages": _messages(f"<answer>\n{answer}\n</answer>")},
    }


def test_openai_batch_round_trip(server: FakeLLMServer) -> None:
    answers = {
        "row-1": "Two dogs sit on the left.",
        "row-2": "A red bus is above the road.",
        "row-3": "Three cats.",
    }
    jsonl = "".join(json.dumps(_batch_line(cid, a)) + "\n" for cid, a in answers.items())
    server.batch_item_faults = {"row-3": "500"}
    server.batch_polls_until_done = 3

    async def main(client: openai.AsyncOpenAI) -> tuple[list[str], Any, bytes, bytes]:
        uploaded = await client.files.create(file=("batch.jsonl", jsonl.encode()), purpose="batch")
        assert uploaded.purpose == "batch"
        assert uploaded.bytes == len(jsonl.encode())
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        statuses: list[str] = [batch.status]
        while batch.status not in ("completed", "failed", "cancelled"):
            batch = await client.batches.retrieve(batch.id)
            statuses.append(batch.status)
        assert batch.output_file_id is not None
        assert batch.error_file_id is not None
        output = await client.files.content(batch.output_file_id)
        errors = await client.files.content(batch.error_file_id)
        return statuses, batch, output.read(), errors.read()

    statuses, batch, output, errors = _run_openai(server, main)
    assert statuses == ["validating", "in_progress", "in_progress", "completed"]
    assert batch.request_counts.total == 3
    assert batch.request_counts.completed == 2
    assert batch.request_counts.failed == 1
    rows = [json.loads(line) for line in output.decode().splitlines()]
    assert [row["custom_id"] for row in rows] == ["row-1", "row-2"]
    for row in rows:
        assert row["error"] is None
        assert row["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(row["response"]["body"])
        parsed = FakeRejected.model_validate_json(completion.choices[0].message.content or "")
        assert parsed.rejected != answers[row["custom_id"]]
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == count_tokens(answers[row["custom_id"]]) + 2
    failed = [json.loads(line) for line in errors.decode().splitlines()]
    assert failed[0]["custom_id"] == "row-3"
    assert failed[0]["response"]["status_code"] == 500
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(count_tokens(answers[c]) + 2 for c in ("row-1", "row-2"))
    assert server.batches_created == {"openai": 1, "anthropic": 0}
    upload = next(r for r in server.requests if r.path == "/v1/files")
    assert upload.body == {"purpose": "batch", "filename": "batch.jsonl", "bytes": len(jsonl)}


def test_openai_batch_cancel(server: FakeLLMServer) -> None:
    line = json.dumps(_batch_line("only", "Two dogs.")) + "\n"

    async def main(client: openai.AsyncOpenAI) -> list[str]:
        uploaded = await client.files.create(file=("b.jsonl", line.encode()), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        cancelled = await client.batches.cancel(batch.id)
        final = await client.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_missing")
        return [batch.status, cancelled.status, final.status]

    assert _run_openai(server, main) == ["validating", "cancelling", "cancelled"]


def test_anthropic_message_batch_round_trip(server: FakeLLMServer) -> None:
    server.batch_item_faults = {"b": "529", "c": "drop"}

    def params(answer: str) -> Any:
        return {
            "model": "claude-test",
            "max_tokens": 64,
            "messages": _messages(f"<answer>\n{answer}\n</answer>"),
        }

    async def main(client: anthropic.AsyncAnthropic) -> tuple[list[str], Any, list[Any]]:
        batch = await client.messages.batches.create(
            requests=[
                {"custom_id": "a", "params": params("Two dogs on the left.")},
                {"custom_id": "b", "params": params("A red car.")},
                {"custom_id": "c", "params": params("A red car.")},
            ]
        )
        statuses: list[str] = [batch.processing_status]
        while batch.processing_status != "ended":
            batch = await client.messages.batches.retrieve(batch.id)
            statuses.append(batch.processing_status)
        results = [item async for item in await client.messages.batches.results(batch.id)]
        return statuses, batch, results

    statuses, batch, results = _run_anthropic(server, main)
    assert statuses == ["in_progress", "in_progress", "ended"]
    assert batch.results_url.startswith(server.base_url)
    counts = batch.request_counts
    assert (counts.succeeded, counts.errored, counts.expired, counts.processing) == (1, 1, 1, 0)
    by_id = {item.custom_id: item.result for item in results}
    assert by_id["a"].type == "succeeded"
    text = by_id["a"].message.content[0].text
    assert FakeRejected.model_validate_json(text).rejected != "Two dogs on the left."
    assert by_id["a"].message.usage.input_tokens == count_tokens("Two dogs on the left.") + 2
    assert by_id["b"].type == "errored"
    assert by_id["b"].error.error.type == "overloaded_error"
    assert by_id["c"].type == "expired"
    assert server.batches_created == {"openai": 0, "anthropic": 1}


def test_anthropic_message_batch_cancel(server: FakeLLMServer) -> None:
    async def main(client: anthropic.AsyncAnthropic) -> tuple[list[str], list[str]]:
        request: Any = {
            "custom_id": "x",
            "params": {"model": "claude-test", "max_tokens": 8, "messages": _messages()},
        }
        batch = await client.messages.batches.create(requests=[request])
        canceling = await client.messages.batches.cancel(batch.id)
        ended = await client.messages.batches.retrieve(batch.id)
        results = [item async for item in await client.messages.batches.results(batch.id)]
        statuses: list[str] = [
            batch.processing_status,
            canceling.processing_status,
            ended.processing_status,
        ]
        return statuses, [item.result.type for item in results]

    assert _run_anthropic(server, main) == (["in_progress", "canceling", "ended"], ["canceled"])


# ---- recording and lifecycle ------------------------------------------------------------------


def test_requests_are_recorded_with_keys_redacted(server: FakeLLMServer) -> None:
    _run_openai(server, _openai_parse)
    _run_anthropic(server, _anthropic_parse)
    first, second = server.requests
    assert (first.provider, first.method, first.path) == ("openai", "POST", "/v1/chat/completions")
    assert (second.provider, second.path) == ("anthropic", "/v1/messages")
    assert first.body["messages"] == _messages()
    assert first.headers["authorization"] == "<redacted>"
    assert second.headers["authorization"] == "<redacted>"  # anthropic 2.x sends a bearer key
    assert "sk-openai-test" not in json.dumps([first.headers, second.headers])
    assert server.seen_api_keys == {"sk-openai-test", "sk-ant-test"}
    assert first.timestamp <= second.timestamp
    assert [r.index for r in server.generation_requests()] == [0, 1]
    assert server.generation_requests("anthropic") == [second]


def test_x_api_key_headers_are_redacted_too(server: FakeLLMServer) -> None:
    async def call(client: anthropic.AsyncAnthropic) -> Any:
        return await client.messages.create(
            model="claude-test",
            max_tokens=8,
            messages=_messages(),
            extra_headers={"X-Api-Key": "sk-header-key"},
        )

    _run_anthropic(server, call)
    assert server.requests[0].headers["x-api-key"] == "<redacted>"
    assert "sk-header-key" in server.seen_api_keys


def test_unknown_paths_get_a_provider_shaped_404(server: FakeLLMServer) -> None:
    with pytest.raises(openai.NotFoundError):
        _run_openai(server, lambda client: client.models.list())
    assert server.requests[0].status == 404


def test_server_listens_on_loopback_only_and_stops_on_exit() -> None:
    with FakeLLMServer() as running:
        assert running.base_url.startswith("http://127.0.0.1:")
        assert running.openai_base_url == f"{running.base_url}/v1"
        assert running.anthropic_base_url == running.base_url
        port = running.port
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = running.base_url


def test_the_shared_fixture_yields_a_running_server(
    fake_llm_server: FakeLLMServer,  # noqa: F811 - the imported fixture
) -> None:
    assert _run_openai(fake_llm_server, _openai_parse) is not None
