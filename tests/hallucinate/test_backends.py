"""Issue 13 part 1: backends and policies. A scripted backend drives LLMHallucinator through
retries, the client-wide pause, the budget, the reply cache and verify-and-re-ask with exact
replies (no network); typed outcomes name themselves in the re-ask; a backend of one's own
works; and a hallucinator that returns None, the wrong type or raises costs one row each."""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from povidgen import (
    BudgetExceededError,
    Example,
    Hallucination,
    HallucinationError,
    Hallucinator,
    LLMHallucinator,
    ModelPrice,
    PairBuilder,
    ProviderError,
    ProviderFatalError,
    RuleHallucinator,
    VerificationError,
)
from povidgen.hallucinate import policies
from povidgen.hallucinate.anthropic_api import _reply as anthropic_reply
from povidgen.hallucinate.backend import (
    Backend,
    ChatReply,
    ChatRequest,
    ReplyOutcome,
)
from povidgen.hallucinate.policies import Budget, Retry, StopSwitch
from povidgen.hallucinate.pricing import CostTracker, Usage
from povidgen.hallucinate.prompts import RewriteReply
from povidgen.hallucinate.scripted import ScriptedBackend

ANSWER = "There are 2 red apples on the left of a blue cup."
GOOD = {
    "rejected": "There are 3 red apples on the left of a blue cup.",
    "edits": [{"kind": "count", "original": "2", "injected": "3"}],
}


def example(index: int = 0, answer: str = ANSWER) -> Example:
    return Example(
        id=f"r{index:03d}",
        image=Image.new("RGB", (16, 12), (200, 40, 40)),
        prompt="Describe the image.",
        answer=answer,
        seed=index,
    )


def numbered(count: int) -> list[Example]:
    return [
        example(i, f"There are {i + 2} red apples on the left of cup {i}.") for i in range(count)
    ]


def rewrite(request: ChatRequest) -> dict[str, Any]:
    """A reply that passes verification for a :func:`numbered` row: its count goes up by one."""
    assert request.example is not None
    answer = request.example.answer
    count = re.search(r"\d+", answer)
    assert count is not None
    injected = str(int(count.group()) + 1)
    return {
        "rejected": answer[: count.start()] + injected + answer[count.end() :],
        "edits": [{"kind": "count", "original": count.group(), "injected": injected}],
    }


def hallucinator(backend: Backend, **options: Any) -> LLMHallucinator:
    options.setdefault("cache", False)
    options.setdefault("initial_backoff", 0.01)
    return LLMHallucinator("scripted-model", backend=backend, **options)


# -- the protocol ---------------------------------------------------------------------------


def test_a_scripted_reply_is_parsed_and_verified_and_its_request_recorded() -> None:
    backend = ScriptedBackend([GOOD])
    made = hallucinator(backend, send_image=True, image_max_side=8, max_output_tokens=99)
    result = made.hallucinate(example())
    assert result.rejected == GOOD["rejected"]
    assert [(e.original, e.injected, e.start, e.end) for e in result.edits] == [("2", "3", 10, 11)]
    (request,) = backend.requests
    assert request.max_tokens == 99
    assert request.schema is RewriteReply
    assert request.image_size == (8, 6)  # 16 x 12 scaled to a longer side of 8
    assert request.image_url is not None
    assert request.image_url.startswith("data:image/jpeg;base64,")
    assert ANSWER in request.user
    assert made.calls == 1
    assert made.cost_usd == 0.0  # a scripted backend is free
    assert made.usage.output_tokens > 0
    assert made.provider == "scripted"
    assert made.stopped is None


def test_chat_reply_outcomes() -> None:
    parsed = ChatReply.from_text(json.dumps(GOOD), RewriteReply)
    assert parsed.outcome is ReplyOutcome.OK
    assert parsed.parsed == RewriteReply.model_validate(GOOD)
    assert ChatReply.from_text("{", RewriteReply).outcome is ReplyOutcome.MALFORMED
    cut = ChatReply.from_text(json.dumps(GOOD), RewriteReply, finish_reason="length")
    assert (cut.outcome, cut.parsed) == (ReplyOutcome.TRUNCATED, None)
    assert ChatReply("", refusal="no").outcome is ReplyOutcome.REFUSED
    assert ChatReply("", finish_reason="content_filter").outcome is ReplyOutcome.FILTERED


@pytest.mark.parametrize(
    ("first", "outcome", "said"),
    [
        (ChatReply('{"rejected": "There are 3', finish_reason="length"), "truncated", "truncated"),
        (ChatReply("", refusal="I can't help with that."), "refused", "refusal"),
        (ChatReply("", finish_reason="content_filter"), "filtered", "content filter"),
        ("Sure! Here it is.", "malformed", "malformed"),
    ],
    ids=["truncated", "refused", "filtered", "malformed"],
)
def test_the_re_ask_says_which_outcome_happened(
    first: ChatReply | str, outcome: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = ScriptedBackend([first, GOOD])
    with caplog.at_level("INFO", logger="povidgen"):
        result = hallucinator(backend, max_output_tokens=50).hallucinate(example())
    assert result.rejected == GOOD["rejected"]
    retry = backend.requests[1].user
    reason = retry[retry.index("Reason:") :]
    assert said in reason.lower()
    if outcome == "truncated":
        assert "50-token limit" in reason
    if outcome == "refused":
        assert "I can't help with that." in retry  # the refusal is quoted back
    assert any(f", {outcome}): " in record.getMessage() for record in caplog.records)


def test_the_last_outcome_is_the_rows_error() -> None:
    cut = ChatReply("{", finish_reason="length")
    made = hallucinator(ScriptedBackend([cut], cycle=True), max_attempts=3)
    [result] = made.hallucinate_many([example()])
    assert isinstance(result, VerificationError)
    assert "in 3 attempts" in str(result)
    assert "truncated" in str(result)


def test_a_backend_of_ones_own() -> None:
    class Echo(Backend):
        """Answers every request with the same reply, and counts them."""

        provider = "echo"

        def __init__(self) -> None:
            self.sent = 0

        async def send(self, request: ChatRequest) -> ChatReply:
            self.sent += 1
            text = json.dumps(GOOD)
            return ChatReply.from_text(
                text, request.schema, usage=Usage(input_tokens=100, output_tokens=10)
            )

    backend = Echo()
    made = LLMHallucinator(
        "echo-1",
        backend=backend,
        cache=False,
        prices={"echo-1": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)},
    )
    results = made.hallucinate_many([example(i) for i in range(3)])
    assert all(isinstance(r, Hallucination) for r in results)
    assert backend.sent == 3
    assert made.params()["provider"] == "echo"
    assert made.usage == Usage(input_tokens=300, output_tokens=30)
    assert made.cost_usd == pytest.approx((300 * 1.0 + 30 * 2.0) / 1e6)


def test_llm_hallucinator_without_a_backend_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="needs a backend"):
        LLMHallucinator("some-model")


def test_anthropic_stop_reasons_are_typed() -> None:
    def message(stop_reason: str, text: str) -> SimpleNamespace:
        usage = SimpleNamespace(
            input_tokens=5,
            output_tokens=7,
            cache_read_input_tokens=0,
            cache_creation_input_tokens=0,
        )
        block = SimpleNamespace(type="text", text=text)
        return SimpleNamespace(content=[block], usage=usage, stop_reason=stop_reason)

    assert (
        anthropic_reply(message("max_tokens", '{"rejected": "Th')).outcome is ReplyOutcome.TRUNCATED
    )
    refused = anthropic_reply(message("refusal", "No."))
    assert (refused.outcome, refused.refusal) == (ReplyOutcome.REFUSED, "No.")
    reply = anthropic_reply(message("end_turn", json.dumps(GOOD)))
    assert reply.outcome is ReplyOutcome.OK
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (5, 7)


# -- policies around a scripted backend -----------------------------------------------------


def test_transient_faults_are_retried_and_fatal_ones_stop_every_later_call() -> None:
    backend = ScriptedBackend(
        [
            ScriptedBackend.fault(503),
            ScriptedBackend.fault(429, retry_after=0.01),
            GOOD,
            ScriptedBackend.fault(401, "bad key"),
        ]
    )
    made = hallucinator(backend)
    results = made.hallucinate_many([example(0), example(1), example(2)], concurrency=1)
    assert isinstance(results[0], Hallucination)
    assert isinstance(results[1], ProviderFatalError)
    assert "HTTP 401" in str(results[1])
    assert isinstance(results[2], ProviderFatalError)
    assert str(results[2]).startswith("not attempted")
    assert isinstance(made.stopped, ProviderFatalError)
    assert len(backend.requests) == 4  # nothing is sent once stopped
    assert made.calls == 4


def test_a_client_error_fails_its_row_only() -> None:
    backend = ScriptedBackend([ScriptedBackend.fault(400, "bad request"), GOOD])
    made = hallucinator(backend)
    first, second = made.hallucinate_many([example(0), example(1)], concurrency=1)
    assert isinstance(first, ProviderError)
    assert "HTTP 400" in str(first)
    assert isinstance(second, Hallucination)
    assert made.stopped is None


def test_a_script_that_runs_out_fails_the_row() -> None:
    made = hallucinator(ScriptedBackend([GOOD]))
    first, second = made.hallucinate_many([example(0), example(1)], concurrency=1)
    assert isinstance(first, Hallucination)
    assert isinstance(second, ProviderError)
    assert "ran out of replies" in str(second)


def test_the_budget_stops_before_a_call_would_pass_the_cap() -> None:
    backend = ScriptedBackend(rewrite)
    price = {"scripted-model": ModelPrice(input_per_mtok=0.0, output_per_mtok=1000.0)}
    # each call reserves its 1000-token limit at $0.001 a token: $1.00 fits under $1.01 once;
    # after it the real cost (a few output tokens) plus the next $1.00 does not
    made = hallucinator(backend, prices=price, max_cost_usd=1.01, max_output_tokens=1000)
    results = made.hallucinate_many(numbered(4), concurrency=1)
    assert isinstance(results[0], Hallucination)
    assert all(isinstance(r, BudgetExceededError) for r in results[1:])
    assert isinstance(made.stopped, BudgetExceededError)
    assert len(backend.requests) == 1
    assert made.cost_usd == pytest.approx(made.usage.output_tokens / 1000)


def test_policies_compose_by_hand_around_any_backend() -> None:
    """Retry around Budget around a script: the budget sees each attempt, retries included."""
    script = ScriptedBackend([ScriptedBackend.fault(500), GOOD])
    tracker = CostTracker()
    switch = StopSwitch("test")
    stack = Retry(
        Budget(
            script,
            tracker=tracker,
            estimate=lambda r: Usage(input_tokens=1, output_tokens=1),
            cost_of=lambda u: 1.0,
            stop=switch,
        ),
        max_retries=2,
        initial_backoff=0.0,
        stop=switch,
    )
    request = ChatRequest("system", "user", schema=RewriteReply, max_tokens=10)
    reply = asyncio.run(stack.send(request))
    assert reply.outcome is ReplyOutcome.OK
    assert tracker.spent == 1.0  # the failed attempt was released, the good one paid
    assert stack.provider == "scripted"


def test_the_reply_cache_answers_a_rerun_with_the_same_outcome(tmp_path: Path) -> None:
    cut = ChatReply("{", finish_reason="length", usage=Usage(input_tokens=3, output_tokens=50))
    first = ScriptedBackend([cut, GOOD])
    made = hallucinator(first, cache=True, cache_dir=tmp_path, max_output_tokens=50)
    assert made.hallucinate(example()).rejected == GOOD["rejected"]
    again = ScriptedBackend([ScriptedBackend.fault(400)])  # would fail if anything were sent
    rerun = hallucinator(again, cache=True, cache_dir=tmp_path, max_output_tokens=50)
    assert rerun.hallucinate(example()).rejected == GOOD["rejected"]
    assert again.requests == []
    assert rerun.usage == Usage(input_tokens=0, output_tokens=0)  # paid by the first run


def test_after_a_429_the_whole_client_pauses_and_resumes_spread_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """64 tasks in flight, 128 rows; the first 32 requests get a 429 asking for 0.5 s. The
    client learns of the first 429 at T0 (when the call raises); no request at all is sent
    between T0 and T0 + 0.5 s, neither the rows' retries nor the first requests of the rows
    that took the finished rows' places, and those that follow are spread by jitter. Send
    times are taken in the client, so a loaded machine can only delay them."""
    pause = 0.5
    monkeypatch.setattr(policies, "_rng", random.Random(5))
    sent: list[tuple[float, str]] = []
    raised: list[tuple[float, str]] = []

    async def answer(request: ChatRequest) -> Any:
        assert request.example is not None
        row = request.example.id
        sent.append((time.monotonic(), row))
        await asyncio.sleep(0.05)  # in flight
        if len(raised) < 32 and row not in {r for _, r in raised}:
            raised.append((time.monotonic(), row))
            return ScriptedBackend.fault(429, retry_after=pause)
        return rewrite(request)

    made = hallucinator(ScriptedBackend(answer), initial_backoff=0.4)
    results = made.hallucinate_many(numbered(128), concurrency=64)
    assert all(isinstance(r, Hallucination) for r in results), results
    assert len(raised) == 32
    first_429 = min(t for t, _ in raised)
    during = [t for t, _ in sent if first_429 < t < first_429 + pause]
    assert during == []
    for when, row in raised:  # each retry after its own 429's retry-after
        retry = min(t for t, r in sent if r == row and t > when)
        assert retry >= when + pause
    resumed = sorted(t for t, _ in sent if t >= first_429 + pause)[:64]
    assert len(resumed) == 64
    assert resumed[-1] - resumed[0] > 0.15
    assert statistics.pstdev(resumed) > 0.05


# -- results kept by position: a bad hallucinator costs one row each ------------------------


class _Bad(Hallucinator):
    """The rule hallucinator, except on one row id: there it returns ``what`` (or raises it)."""

    name = "bad"

    def __init__(self, bad_id: str, what: object) -> None:
        self.bad_id = bad_id
        self.what = what
        self.rule = RuleHallucinator()

    async def ahallucinate(self, example: Example) -> Hallucination:
        if example.id == self.bad_id:
            if isinstance(self.what, Exception):
                raise self.what
            return self.what  # type: ignore[return-value]
        return await self.rule.ahallucinate(example)


BAD = [
    (None, "_Bad.ahallucinate returned None, not a Hallucination"),
    ("a string", "_Bad.ahallucinate returned a str ('a string'), not a Hallucination"),
    (RuntimeError("boom"), "boom"),
]


@pytest.mark.parametrize(("what", "reason"), BAD, ids=["none", "wrong-type", "raises"])
def test_hallucinate_many_keeps_positions_and_fails_the_bad_row_only(
    what: object, reason: str
) -> None:
    rows = numbered(6)
    results = _Bad("r002", what).hallucinate_many(rows, concurrency=3)
    assert len(results) == 6
    assert [isinstance(r, Hallucination) for r in results] == [True, True, False, True, True, True]
    assert str(results[2]) == reason
    if what is None or isinstance(what, str):
        assert isinstance(results[2], HallucinationError)
    good = RuleHallucinator().hallucinate_many(rows)
    assert [r.rejected for r in results if isinstance(r, Hallucination)] == [
        r.rejected for i, r in enumerate(good) if i != 2 and isinstance(r, Hallucination)
    ]


def test_a_sync_call_returning_none_raises_a_clear_error() -> None:
    with pytest.raises(HallucinationError, match="returned None, not a Hallucination"):
        _Bad("r000", None).hallucinate(example())


@pytest.mark.parametrize(("what", "reason"), BAD, ids=["none", "wrong-type", "raises"])
@pytest.mark.parametrize("streams", [True, False], ids=["stream", "batches"])
def test_a_build_completes_with_one_row_error_for_the_bad_row(
    what: object, reason: str, streams: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = _Bad("r003", what)
    if not streams:  # the builder hands batches to ahallucinate_many
        monkeypatch.setattr(_Bad, "streams", property(lambda self: False))
    rows = [
        {"id": e.id, "image": e.image, "prompt": e.prompt, "answer": e.answer} for e in numbered(8)
    ]
    builder = PairBuilder.from_dataset(rows, hallucinator=bad, id_column="id", batch_size=4)
    pairs = builder.build()
    assert sorted(pairs["id"]) == [f"r{i:03d}" for i in range(8) if i != 3]
    (error,) = builder.errors
    assert (error.id, error.index, error.stage) == ("r003", 3, "hallucinate")
    assert "_Bad" in error.reason or reason in error.reason
    assert builder.report.complete
    assert builder.report.cost_usd is None  # the base declares no cost


def test_the_base_declares_what_a_build_reads() -> None:
    rule = RuleHallucinator()
    assert (rule.cost_usd, rule.usage, rule.stopped) == (None, None, None)
