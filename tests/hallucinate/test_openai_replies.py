"""The OpenAI backend's request and its reading of each kind of reply (a typed outcome), through
the real SDK over ``httpx2.MockTransport`` (no sockets)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import openai
import pytest
from PIL import Image

from povidgen import Example
from povidgen.hallucinate.backend import ChatRequest, ReplyOutcome
from povidgen.hallucinate.openai_api import OpenAIHallucinator, _messages
from povidgen.hallucinate.prompts import RewriteReply

GOOD = {"rejected": "There are 3 blue apples.", "edits": []}


def completion(content: str | None, finish: str = "stop", refusal: str | None = None) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def client(reply: dict[str, Any], bodies: list[dict[str, Any]]) -> openai.AsyncOpenAI:
    def handle(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return httpx2.Response(200, json=reply)

    transport = httpx2.MockTransport(handle)
    return openai.AsyncOpenAI(
        api_key="sk-mock", http_client=httpx2.AsyncClient(transport=transport), max_retries=0
    )


def complete(reply: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    hallucinator = OpenAIHallucinator(client=client(reply, bodies), cache=False)
    request = ChatRequest("system text", "user text", schema=RewriteReply, max_tokens=1024)
    answer = asyncio.run(hallucinator.backend.send(request))
    return answer, bodies[0]


def test_the_request_is_the_one_chat_completions_parse_sends() -> None:
    _, ours = complete(completion(json.dumps(GOOD)))
    sdk_bodies: list[dict[str, Any]] = []
    sdk = client(completion(json.dumps(GOOD)), sdk_bodies)
    asyncio.run(
        sdk.chat.completions.parse(
            model="gpt-4o-mini",
            messages=_messages("system text", "user text", None),  # type: ignore[arg-type]
            response_format=RewriteReply,
            max_completion_tokens=ours["max_completion_tokens"],
        )
    )
    assert ours == sdk_bodies[0]


@pytest.mark.parametrize(
    ("reply", "outcome", "text"),
    [
        (completion(json.dumps(GOOD)), ReplyOutcome.OK, json.dumps(GOOD)),
        (completion('{"rejected": "half', finish="length"), ReplyOutcome.TRUNCATED, "half"),
        (completion(None, refusal="I can't help with that."), ReplyOutcome.REFUSED, ""),
        (completion(None, finish="content_filter"), ReplyOutcome.FILTERED, ""),
        (completion("not json at all"), ReplyOutcome.MALFORMED, "not json at all"),
        ({**completion(None), "choices": []}, ReplyOutcome.MALFORMED, ""),
    ],
    ids=["valid", "cut-off", "refusal", "content-filter", "malformed", "no-choices"],
)
def test_each_kind_of_reply_is_a_typed_outcome(
    reply: dict[str, Any], outcome: ReplyOutcome, text: str
) -> None:
    answer, _ = complete(reply)
    assert answer.outcome is outcome
    assert text in answer.text
    if outcome is ReplyOutcome.OK:
        assert answer.parsed == RewriteReply.model_validate(GOOD)
    if outcome is ReplyOutcome.REFUSED:
        assert answer.refusal == "I can't help with that."
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (11, 7)


def test_a_malformed_reply_is_a_verification_failure_with_its_reason() -> None:
    bodies: list[dict[str, Any]] = []
    hallucinator = OpenAIHallucinator(
        client=client(completion("not json at all"), bodies), cache=False, max_attempts=1
    )
    example = Example(
        id="a", image=Image.new("RGB", (8, 8)), prompt="Describe.", answer="Two red apples."
    )
    [result] = hallucinator.hallucinate_many([example])
    assert isinstance(result, Exception)
    assert "JSON" in str(result)
