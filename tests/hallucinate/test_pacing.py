"""The request pacer under 429s: the client-wide pause holds requests already waiting for a
send slot, a paced client resumes at the pacer's rate without extra jitter, the rate steps
down on a 429 and recovers, and the image is encoded off the event loop.

Send times are taken in the client (``time.monotonic``), so a loaded machine can only delay
a send, never move it earlier: the "nothing before" checks cannot fail from load."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from povidgen.hallucinate import backend as backend_module
from povidgen.hallucinate import llm as llm_module
from povidgen.hallucinate import policies
from povidgen.hallucinate.backend import ChatRequest
from povidgen.hallucinate.policies import Pause, RateLimit, Retry, _Pacer
from povidgen.hallucinate.prompts import RewriteReply
from povidgen.hallucinate.scripted import ScriptedBackend
from tests.hallucinate.test_backends import GOOD, example, hallucinator, numbered, rewrite


class _Clock:
    """A stand-in for ``time.monotonic`` in :mod:`povidgen.hallucinate.policies`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_429_slows_the_pacer_once_a_window_and_the_rate_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(policies, "time", clock)
    pacer = _Pacer(0.01)  # 100 requests/s asked for
    assert pacer.rate == pytest.approx(100.0)
    assert pacer.capacity == 100

    pacer.slow_down()
    assert pacer.rate == pytest.approx(95.0)
    assert pacer.capacity == 95
    clock.now += 0.5  # more 429s of the same burst: no further step
    pacer.slow_down()
    assert pacer.rate == pytest.approx(95.0)
    clock.now += 0.6  # a 429 a window later is news: 95 * 0.95
    pacer.slow_down()
    assert pacer.rate == pytest.approx(90.25)

    # recovery: 1% of the asked rate per 5 s without a 429, never past the asked rate
    clock.now += 4.9
    pacer._recover(clock.now)
    assert pacer.rate == pytest.approx(90.25)
    clock.now += 0.2  # 5.1 s after the last step
    pacer._recover(clock.now)
    assert pacer.rate == pytest.approx(91.25)
    clock.now += 20.0  # four more steps
    pacer._recover(clock.now)
    assert pacer.rate == pytest.approx(95.25)
    clock.now += 60.0
    pacer._recover(clock.now)
    assert pacer.rate == pytest.approx(100.0)
    assert pacer.interval == pacer.base_interval


def test_the_pacer_never_slows_below_half_the_asked_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(policies, "time", clock)
    pacer = _Pacer(0.01)
    for _ in range(100):
        clock.now += 1.5
        pacer.slow_down()
    assert pacer.rate == pytest.approx(50.0)


def test_a_429_through_rate_limit_slows_its_pacer_and_a_500_does_not() -> None:
    script = [ScriptedBackend.fault(500), ScriptedBackend.fault(429), GOOD]
    limited = RateLimit(ScriptedBackend(script), requests_per_minute=6000)
    request = ChatRequest("system", "user", schema=RewriteReply, max_tokens=10)

    async def run() -> None:
        for _ in range(2):
            with pytest.raises(Exception, match="scripted HTTP"):
                await limited.send(request)
        await limited.send(request)

    assert limited.requests_rate == pytest.approx(100.0)
    asyncio.run(run())
    assert limited.requests_rate == pytest.approx(95.0)  # one step: the 429 only
    assert RateLimit(ScriptedBackend([GOOD])).requests_rate is None


def test_requests_holding_a_send_slot_wait_out_a_pause_that_starts_meanwhile() -> None:
    """Slots are handed out ahead of time; a pause that starts before a slot comes up holds
    that request until the pause is over (it then takes a fresh slot)."""
    sent: list[float] = []

    async def answer(request: ChatRequest) -> Any:
        sent.append(time.monotonic())
        return GOOD

    pause = Pause()
    limited = RateLimit(ScriptedBackend(answer), requests_per_minute=600, pause=pause)  # 10/s
    request = ChatRequest("system", "user", schema=RewriteReply, max_tokens=10)

    async def run() -> float:
        tasks = [asyncio.ensure_future(limited.send(request)) for _ in range(5)]
        await asyncio.sleep(0.05)  # the first is sent; four wait for slots 0.1 s apart
        pause.extend(0.6)
        started = time.monotonic()
        await asyncio.gather(*tasks)
        return started

    started = asyncio.run(run())
    assert len(sent) == 5
    assert sent[0] < started
    assert all(t >= started + 0.6 for t in sent[1:]), [t - started for t in sent]
    # and the pacer spaces them after the pause as before it
    later = sorted(sent[1:])
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(later))


def test_a_paced_client_resumes_at_the_pacer_rate_without_extra_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With requests_per_minute the pacer spreads the restart after a 429 pause; the pause's
    own jitter (a random share of the backoff window for each task) is left out, so the first
    request after the pause goes at its end, not up to a backoff window later."""
    pause = 0.4
    sent: list[tuple[float, str]] = []
    raised: list[tuple[float, str]] = []

    async def answer(request: ChatRequest) -> Any:
        assert request.example is not None
        sent.append((time.monotonic(), request.example.id))
        if not raised:
            raised.append((time.monotonic(), request.example.id))
            return ScriptedBackend.fault(429, retry_after=pause)
        return rewrite(request)

    made = hallucinator(ScriptedBackend(answer), initial_backoff=5.0, requests_per_minute=3000)
    assert made._retry.spread_after_pause is False
    results = made.hallucinate_many(numbered(40), concurrency=8)
    assert all(not isinstance(r, Exception) for r in results), results
    ((when, limited_row),) = raised
    # the row that got the 429 waits its own full-jitter backoff; the others only the pause
    others = sorted(t for t, row in sent if t > when and row != limited_row)
    assert others[0] >= when + pause
    # 39 rows at 50/s take about 0.8 s; with the pause's jitter they would come back spread
    # over the 5 s backoff window
    assert others[-1] < when + pause + 2.5
    assert hallucinator(ScriptedBackend([GOOD]))._retry.spread_after_pause is True


def test_the_image_is_encoded_once_and_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    encode = backend_module.data_url

    def recording(image: Any, max_side: int) -> str:
        threads.append(threading.current_thread().name)
        return encode(image, max_side)

    monkeypatch.setattr(backend_module, "data_url", recording)
    backend = ScriptedBackend([GOOD])
    made = hallucinator(backend, send_image=True, cache=False)
    loop_threads: list[str] = []

    async def run() -> None:
        loop_threads.append(threading.current_thread().name)
        await made.ahallucinate(example())

    asyncio.run(run())
    assert len(threads) == 1
    assert threads[0] != loop_threads[0]
    (request,) = backend.requests
    assert request.image_url is not None
    assert request.image_url.startswith("data:image/jpeg")
    assert len(threads) == 1  # reading image_url later does not encode again


def test_a_priced_model_is_priced_once_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """genai-prices loads its data on first use; that happens when the hallucinator is made,
    not on the event loop at the first reply."""
    calls: list[str] = []

    def counting(model: str, *args: Any, **kwargs: Any) -> float:
        calls.append(model)
        return 0.0

    monkeypatch.setattr(llm_module, "cost_usd", counting)
    hallucinator(ScriptedBackend([GOOD]))  # scripted backends carry a (zero) price
    assert calls == ["scripted-model"]


def test_retry_without_spread_still_waits_for_the_pause() -> None:
    pause = Pause()
    retry = Retry(ScriptedBackend([GOOD]), pause=pause, spread_after_pause=False)
    request = ChatRequest("system", "user", schema=RewriteReply, max_tokens=10)
    pause.extend(0.3)
    start = time.monotonic()
    asyncio.run(retry.send(request))
    assert time.monotonic() - start >= 0.3
    assert not pause.active


def _sends_around_a_stall(pacer: _Pacer, count: int = 60) -> list[float]:
    """When each of ``count`` tasks got through ``pacer``, the event loop blocked for 0.2 s
    from 0.05 s on (every task whose slot passed then wakes at once)."""
    sent: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        sent.append(time.monotonic())

    async def stall() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # the loop blocked: 20 slots pass at 100/s

    async def run() -> None:
        await asyncio.gather(stall(), *(one() for _ in range(count)))

    asyncio.run(run())
    return sent


def test_the_pacer_never_lets_a_stalled_loop_burst_past_the_rate() -> None:
    """The window check holds back the tasks a stall woke together: no window holds more
    sends than the rate allows."""
    pacer = _Pacer(0.01, window=0.1)  # 100/s: at most 10 sends in any 0.1 s
    sent = _sends_around_a_stall(pacer)
    assert pacer.capacity == 10
    assert len(sent) == 60
    # sends exactly one window apart may both fall in a half-open window by a few
    # microseconds of clock between the pacer and this task: count over 0.099 s
    most = max(sum(1 for t in sent if start <= t < start + 0.099) for start in sent)
    assert most <= 10
    # the schedule is kept: 60 sends at 100/s take about 0.6 s, the stall included
    assert sent[-1] - sent[0] < 1.0


def test_after_a_stall_the_pacer_catches_up_without_a_burst() -> None:
    """Sends whose slots passed while the loop was blocked go out no closer than
    CATCH_UP_GAP intervals apart (a burst would fill the server's window early and echo
    second after second), and the schedule is still caught up."""
    sent = _sends_around_a_stall(_Pacer(0.01))  # 100/s
    gaps = [b - a for a, b in itertools.pairwise(sorted(sent))]
    assert min(gaps) >= _Pacer.CATCH_UP_GAP * 0.01 - 1e-6
    # 60 sends at 100/s: 0.6 s on schedule; the stall is made up at 1.25x the rate
    assert sent[-1] - sent[0] < 1.0
