"""Policies: what wraps a :class:`~povidgen.hallucinate.backend.Backend` around its calls.

Each policy is itself a backend that holds an ``inner`` one, so they compose like httpx
transports, in any order and around any backend. :class:`~povidgen.LLMHallucinator` stacks
them, outermost first::

    ReplyCaching   a request answered before is answered from the cache, nothing is sent
    Budget         reserve the call's estimated cost; BudgetExceededError stops the run
    Retry          transient faults retried with full jitter; a 429 pauses the whole client
    RateLimit      requests and tokens per minute, evenly spaced
    CircuitBreaker an endpoint that never answers stops the run
    backend        the transport (OpenAI, Anthropic, a local model, a script)

Transient faults (429 rate limits, 5xx, 529 overloaded, timeouts, dropped connections) are
retried with full-jitter exponential backoff (a random wait up to 1, 2, 4 ... 60 s) on top of
what ``retry-after`` says, so a retry is never sent before the server asked and retries from
many tasks spread out instead of arriving together. After a 429 the whole client pauses: no
task sends until the ``retry-after`` has passed (each then waits its own random share more).
Every retry is logged at INFO with its reason. Fatal faults (401/403, a 429 for an exhausted
quota, 402 billing) raise :class:`~povidgen.ProviderFatalError`; once a fatal error or the
budget stops the run (a shared :class:`StopSwitch`), every later call raises at once, so a run
keeps what it has and records the rest as not attempted. Other client errors (400, 404, 413,
422) fail the row only.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from povidgen.errors import (
    BudgetExceededError,
    HallucinationError,
    ProviderError,
    ProviderFatalError,
    RunStoppedError,
)
from povidgen.hallucinate.backend import Backend, ChatReply, ChatRequest, Policy
from povidgen.hallucinate.cache import ReplyCache
from povidgen.hallucinate.pricing import CostTracker, Usage
from povidgen.redact import scrub

__all__ = [
    "Budget",
    "CircuitBreaker",
    "Pause",
    "RateLimit",
    "ReplyCaching",
    "Retry",
    "StopSwitch",
    "describe_error",
    "is_connection_failure",
    "is_fatal",
    "is_transient",
    "retry_after",
    "status_of",
]

logger = logging.getLogger("povidgen")

_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
_FATAL_STATUS = {401, 402, 403}
_QUOTA_MARKERS = ("insufficient_quota", "quota", "billing", "credit balance", "spend limit")


# -- reading faults -------------------------------------------------------------------------


def status_of(error: BaseException) -> int | None:
    """The HTTP status of an SDK error (``status_code`` on openai/anthropic errors)."""
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def retry_after(error: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry_after`` on the error, or the response's
    ``retry-after-ms`` / ``retry-after`` header), if any."""
    given = getattr(error, "retry_after", None)
    if isinstance(given, int | float) and not isinstance(given, bool):
        return max(0.0, float(given))
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def is_connection_failure(error: BaseException) -> bool:
    """No HTTP response at all: refused, reset, unresolvable, or timed out."""
    if isinstance(error, asyncio.TimeoutError | ConnectionError):
        return True
    return type(error).__name__ in ("APITimeoutError", "APIConnectionError")


def is_fatal(error: BaseException) -> bool:
    """Stops the run: bad credentials, no permission, exhausted quota or billing."""
    status = status_of(error)
    if status in _FATAL_STATUS:
        return True
    if status == 429:
        text = f"{getattr(error, 'code', '')} {getattr(error, 'type', '')} {error}".lower()
        return any(marker in text for marker in _QUOTA_MARKERS)
    return False


def is_transient(error: BaseException) -> bool:
    """Worth retrying: timeouts, dropped connections, rate limits, server errors."""
    if is_connection_failure(error):
        return True
    return status_of(error) in _TRANSIENT_STATUS and not is_fatal(error)


def describe_error(provider: str, error: BaseException) -> str:
    """A message for an SDK error without request details (which could carry secrets)."""
    status = status_of(error)
    detail = getattr(error, "message", None) or str(error) or type(error).__name__
    prefix = f"{provider} {type(error).__name__}"
    return f"{prefix} (HTTP {status}): {detail}" if status else f"{prefix}: {detail}"


# -- the stop switch ----------------------------------------------------------------------


class StopSwitch:
    """Why calls stopped (the first cause is kept): shared by the policies of one client, so
    that a fatal error or a spent budget seen by one call stops every other."""

    def __init__(self, owner: str = "povidgen") -> None:
        self.owner = owner
        self.reason: RunStoppedError | None = None

    def stop(self, reason: RunStoppedError) -> RunStoppedError:
        """Record ``reason`` (unless a cause is already known, which is kept); return the
        cause to raise."""
        if self.reason is None:
            logger.error("%s: %s", self.owner, reason)
            self.reason = reason
        return self.reason

    def check(self, prefix: str = "not attempted") -> None:
        """Raise ``<cause type>("<prefix>: <cause>")`` once stopped."""
        if self.reason is not None:
            raise type(self.reason)(f"{prefix}: {self.reason}")


# -- retries --------------------------------------------------------------------------------

_rng = random.Random()
"""The jitter's random numbers (tests replace it with a seeded one)."""


class Pause:
    """A client-wide pause after a 429: no request is sent before :attr:`until`.

    Shared by :class:`Retry`, which starts it, and :class:`RateLimit`, which holds back the
    requests already waiting for a send slot when it starts: those took their slot before
    the 429 arrived and would otherwise land on a server whose window is known to be full,
    each earning a 429 of its own and lengthening the pause.
    """

    def __init__(self) -> None:
        self.until = 0.0
        """No request is sent before this ``time.monotonic()``."""

    def extend(self, seconds: float) -> None:
        """Pause sends for ``seconds`` from now (a pause already longer is kept)."""
        self.until = max(self.until, time.monotonic() + seconds)

    @property
    def active(self) -> bool:
        """Whether sends are paused now."""
        return self.until > time.monotonic()

    async def wait(self, spread: float = 0.0) -> None:
        """Wait until the pause is over, plus a random share of ``spread`` seconds (full
        jitter, so that tasks without a pacer do not all send at once when it ends)."""
        while (left := self.until - time.monotonic()) > 0:
            await asyncio.sleep(left + (_rng.uniform(0.0, spread) if spread > 0 else 0.0))


class _Backoff:
    """tenacity wait: full jitter over an exponential window (1, 2, 4 ... max 60 s) on top of
    the ``retry-after`` floor: ``retry_after + uniform(0, window)``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum

    def window(self, attempt: int) -> float:
        """The exponential window of the ``attempt``-th retry's jitter."""
        return float(min(self.maximum, self.initial * 2 ** (attempt - 1)))

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        floor = (retry_after(error) if error is not None else None) or 0.0
        return floor + _rng.uniform(0.0, self.window(retry_state.attempt_number))


class Retry(Policy):
    """Retries transient faults (see the module docstring), up to ``max_retries`` times per
    request, each after ``retry-after`` plus a random share of an exponential window
    (``initial_backoff``, doubling, at most 60 s). After a 429 the whole client pauses until
    its ``retry-after`` has passed (``pause``, which a :class:`RateLimit` inside may share).
    When the pause ends, each waiting task waits a random share of the backoff window more,
    unless ``spread_after_pause`` is off: a request pacer inside already spaces them, and
    jitter on top would only leave its slots unused. This is the only retry layer: SDK
    clients are made with their own retries off.

    A fatal fault stops the run (``stop``); any other error that is left becomes a
    :class:`~povidgen.ProviderError` describing it (never the request, which may hold secrets).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        max_retries: int = 6,
        initial_backoff: float = 1.0,
        stop: StopSwitch | None = None,
        name: str | None = None,
        pause: Pause | None = None,
        spread_after_pause: bool = True,
    ) -> None:
        super().__init__(inner)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.stop = stop or StopSwitch()
        self.name = name or type(self).__name__
        self.pause = pause or Pause()
        self.spread_after_pause = spread_after_pause
        self._pause_window = 0.0  # each paused task waits a random share of this more

    async def send(self, request: ChatRequest) -> ChatReply:
        backoff = _Backoff(self.initial_backoff, 60.0)

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            if error is not None and status_of(error) == 429:
                # the whole client pauses, not only this task: no one sends before retry-after
                floor = retry_after(error)
                pause = floor if floor is not None else backoff.window(state.attempt_number)
                self.pause.extend(pause)
                self._pause_window = backoff.window(state.attempt_number)
            logger.info(
                "%s: retrying a request in %.2fs (retry %d of %d): %s",
                self.name,
                wait,
                state.attempt_number,
                self.max_retries,
                scrub(describe_error(self.provider, error)) if error is not None else "no reason",
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=backoff,
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    self.stop.check("stopped")  # tripped while this row waited to retry
                    await self._wait_for_pause()
                    return await self.inner.send(request)
        except Exception as error:
            if isinstance(error, HallucinationError | RunStoppedError):
                raise
            if is_fatal(error):
                raise self.stop.stop(
                    ProviderFatalError(describe_error(self.provider, error))
                ) from error
            if isinstance(error, ProviderError) and status_of(error) is None:
                raise  # already a povidgen error with its reason (e.g. from a policy inside)
            raise ProviderError(describe_error(self.provider, error)) from error
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _wait_for_pause(self) -> None:
        """After a 429, wait until the client-wide pause is over, plus (``spread_after_pause``)
        a random share of the pause's backoff window, so paused tasks do not all send at once."""
        await self.pause.wait(self._pause_window if self.spread_after_pause else 0.0)


class CircuitBreaker(Policy):
    """Stops the run when an endpoint does not answer: after ``max_failures`` requests in a
    row got no response at all (refused, reset, timed out) from an endpoint that has never
    answered, it is taken for dead (:class:`~povidgen.ProviderFatalError` naming its URL)
    instead of retrying every row for a minute. An endpoint that has answered before is taken
    for flaky and stops the run only after eight times as many in a row. Also counts the
    requests sent (:attr:`calls`, retries included)."""

    def __init__(
        self, inner: Backend, *, max_failures: int = 8, stop: StopSwitch | None = None
    ) -> None:
        super().__init__(inner)
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
            raise ValueError(
                f"max_connection_failures must be a positive int, got {max_failures!r}"
            )
        self.max_failures = max_failures
        self.stop = stop or StopSwitch()
        self.calls = 0
        """Requests sent, retries included."""
        self.failures = 0
        """Requests in a row that got no response."""
        self.answered_once = False

    async def send(self, request: ChatRequest) -> ChatReply:
        self.calls += 1
        try:
            reply = await self.inner.send(request)
        except Exception as error:
            if not is_connection_failure(error):
                self.failures = 0
                self.answered_once = True  # an HTTP error is an answer: the server is there
                raise
            self.failures += 1
            # an endpoint that has answered before is flaky rather than dead: it gets more rope
            limit = self.max_failures * (8 if self.answered_once else 1)
            if self.failures >= limit:
                raise self.stop.stop(
                    ProviderFatalError(
                        f"{self.endpoint} is unreachable: {self.failures} requests in a row got "
                        f"no response ({describe_error(self.provider, error)}); check the URL "
                        "and the network"
                    )
                ) from error
            raise
        self.failures = 0
        self.answered_once = True
        return reply


# -- rate limits ----------------------------------------------------------------------------


class _Pacer:
    """Evenly spaced requests: each acquire takes the next slot ``interval`` after the last,
    and no ``window`` (one second) ever holds more sends than the rate allows in it.

    A token bucket would let a run open with a burst that a server's sliding window counts on
    top of the steady rate (429s); timers that re-arm after each wake-up drift below the rate.
    Slots are computed from a fixed schedule instead, so neither happens. But when the event
    loop stalls (another thread holds the interpreter, the machine is busy), every task whose
    slot passed during the stall wakes at once, and that burst lands on top of the sends the
    server already counted: the window check holds such tasks back. Providers enforce
    per-minute limits per second or finer (OpenAI: "60,000 requests/minute may be enforced as
    1,000 requests/second"), so the window is one second.

    The rate adapts to 429s (:meth:`slow_down`): requests spaced evenly when they leave the
    pacer can still reach the server bunched (a busy event loop delays some sends more than
    others), so a rate just under the server's limit can overrun its window now and then. Each
    429 lowers the rate to :data:`SLOWDOWN` of what it was (one step per ``window``, however
    many 429s land in it; never below half the rate asked for), and every
    :data:`RECOVERY_PERIOD` seconds without one gives back :data:`RECOVERY_STEP` of the rate
    asked for, until it is reached again. After a stall, sends whose slots passed go out no
    closer than :data:`CATCH_UP_GAP` intervals apart, so the schedule is made up without a
    burst.
    """

    SLOWDOWN = 0.95
    RECOVERY_STEP = 0.01
    RECOVERY_PERIOD = 5.0
    CATCH_UP_GAP = 0.8
    """Sends are never closer than this share of the interval (catch-up at 1.25x the rate)."""

    def __init__(self, interval: float, window: float = 1.0) -> None:
        self.base_interval = interval
        """The spacing asked for (``60 / requests_per_minute``)."""
        self.interval = interval
        """The spacing in force (longer than :attr:`base_interval` after 429s)."""
        self.window = window
        self._next = 0.0
        self._sent: deque[float] = deque()
        self._slowed_at: float | None = None  # the last slow-down, or the last recovery step

    @property
    def capacity(self) -> int:
        """The most sends any ``window`` may hold at the rate in force."""
        return max(1, int(self.window / self.interval + 1e-9))

    @property
    def rate(self) -> float:
        """Requests per second in force."""
        return 1.0 / self.interval

    def slow_down(self) -> None:
        """A 429 came back: lower the rate (once per window; see the class docstring)."""
        now = time.monotonic()
        if self._slowed_at is not None and now - self._slowed_at < self.window:
            return  # the other replies of the same burst carry no news
        self.interval = min(self.interval / self.SLOWDOWN, 2 * self.base_interval)
        self._slowed_at = now
        logger.info("rate limited: sending at %.1f requests/s from now", self.rate)

    def _recover(self, now: float) -> None:
        if self._slowed_at is None:
            return
        steps = int((now - self._slowed_at) / self.RECOVERY_PERIOD)
        if steps == 0:
            return
        rate = 1.0 / self.interval + steps * self.RECOVERY_STEP / self.base_interval
        if rate >= 1.0 / self.base_interval:
            self.interval, self._slowed_at = self.base_interval, None
        else:
            self.interval = 1.0 / rate
            self._slowed_at += steps * self.RECOVERY_PERIOD

    async def acquire(self) -> None:
        now = time.monotonic()
        self._recover(now)
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
        while True:
            now = time.monotonic()
            # catching up after a stall goes at most 1/CATCH_UP_GAP times the rate: a burst
            # of late sends would fill the window early, and the window check would then
            # release the next second's sends in the same burst, echoing it second by second
            gap = self._sent[-1] + self.CATCH_UP_GAP * self.interval - now if self._sent else 0
            if gap > 0:
                await asyncio.sleep(gap)
                continue
            while self._sent and self._sent[0] <= now - self.window:
                self._sent.popleft()
            if len(self._sent) < self.capacity:
                self._sent.append(now)
                return
            await asyncio.sleep(self._sent[0] + self.window - now)


class RateLimit(Policy):
    """Client-side limits: ``requests_per_minute`` (evenly spaced sends, never more in any
    second than the rate allows) and ``tokens_per_minute`` (a minute's bucket of the
    request's estimated tokens, ``tokens(request)``; needs ``aiolimiter``).

    With ``pause`` (the :class:`Pause` a :class:`Retry` outside starts on a 429), a request
    whose send slot comes up while the client is paused waits for the pause to end and takes
    a new slot: slots handed out before the 429 are not spent on a server known to be full.
    A 429 (not one for an exhausted quota) also slows the request rate a little, and it
    recovers while none come back (see :attr:`requests_rate`).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        tokens: Callable[[ChatRequest], int] | None = None,
        pause: Pause | None = None,
    ) -> None:
        super().__init__(inner)
        self.pause = pause
        for label, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{label} must be positive, got {value!r}")
        self._requests = _Pacer(60.0 / requests_per_minute) if requests_per_minute else None
        self._tokens: Any = None
        self._count = tokens or _estimated_tokens
        if tokens_per_minute is not None:
            try:
                from aiolimiter import AsyncLimiter
            except ImportError as error:  # an optional dependency of the provider extras
                raise ImportError(
                    "tokens_per_minute needs aiolimiter: pip install aiolimiter"
                ) from error
            # providers count tokens per minute, so the bucket holds a minute's worth
            self._tokens = AsyncLimiter(tokens_per_minute, 60.0)

    @property
    def requests_rate(self) -> float | None:
        """Requests per second in force (``None`` without ``requests_per_minute``): the rate
        asked for, or up to 5% a step lower for a while after 429s."""
        return self._requests.rate if self._requests is not None else None

    async def send(self, request: ChatRequest) -> ChatReply:
        if self._requests is not None:
            await self._requests.acquire()
            while self.pause is not None and self.pause.active:
                await self.pause.wait()
                await self._requests.acquire()
        if self._tokens is not None:
            await self._tokens.acquire(min(self._count(request), self._tokens.max_rate))
        try:
            return await self.inner.send(request)
        except Exception as error:
            if self._requests is not None and status_of(error) == 429 and not is_fatal(error):
                self._requests.slow_down()
            raise


def _estimated_tokens(request: ChatRequest) -> int:
    from povidgen.hallucinate.pricing import estimate_tokens

    return estimate_tokens(request.system + request.user) + request.max_tokens


# -- budget ---------------------------------------------------------------------------------


class Budget(Policy):
    """Counts what calls cost and stops before a cap would be passed.

    Before a call its cost is reserved on ``tracker`` from ``estimate(request)`` (input tokens
    estimated, output at the token limit); a reservation that would pass the tracker's cap
    stops the run (:class:`~povidgen.BudgetExceededError`). After the call the reservation is
    released and the real cost (``cost_of(reply.usage)``) recorded; :attr:`usage` sums the
    tokens.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        tracker: CostTracker,
        estimate: Callable[[ChatRequest], Usage],
        cost_of: Callable[[Usage], float],
        stop: StopSwitch | None = None,
    ) -> None:
        super().__init__(inner)
        self.tracker = tracker
        self.estimate = estimate
        self.cost_of = cost_of
        self.stop = stop or StopSwitch()
        self.usage = Usage(input_tokens=0, output_tokens=0)
        """Tokens used so far."""

    async def send(self, request: ChatRequest) -> ChatReply:
        reserved = self.cost_of(self.estimate(request))
        if not self.tracker.reserve(reserved):
            raise self.stop.stop(
                BudgetExceededError(
                    f"max_cost_usd={self.tracker.max_cost_usd} reached (spent "
                    f"${self.tracker.spent:.4f}); no further requests are sent"
                )
            )
        try:
            reply = await self.inner.send(request)
        except BaseException:
            self.tracker.release(reserved)
            raise
        self.tracker.release(reserved, actual=self.cost_of(reply.usage))
        self.usage = self.usage + reply.usage
        return reply


# -- the reply cache ------------------------------------------------------------------------

_ENVELOPE = "\x00povidgen-reply\x00"  # marks a cached reply that did not finish normally


class ReplyCaching(Policy):
    """Answers a request seen before from the reply cache (nothing is sent, nothing paid) and
    keeps every new reply there, so a rerun pays for nothing twice.

    ``key(request)`` names a request (see :meth:`~povidgen.hallucinate.cache.ReplyCache.key`);
    ``cache()`` opens the cache, or returns ``None`` to send without it. A reply that was cut
    off, refused or filtered is kept with its outcome, so a rerun re-asks for the same reason.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        cache: Callable[[], ReplyCache | None],
        key: Callable[[ChatRequest], str],
    ) -> None:
        super().__init__(inner)
        self.cache = cache
        self.key = key

    async def send(self, request: ChatRequest) -> ChatReply:
        cache = self.cache()
        if cache is None:
            return await self.inner.send(request)
        key = self.key(request)
        if (hit := cache.get(key)) is not None:
            return _unpacked(*hit, request.schema)  # paid for by an earlier run: nothing is sent
        reply = await self.inner.send(request)
        # the commit waits for the disk (fsync): off the event loop, which would otherwise
        # hold every other call in flight for those milliseconds
        await asyncio.to_thread(cache.put, key, _packed(reply), reply.usage)
        return reply


def _packed(reply: ChatReply) -> str:
    """A reply as the cache keeps it: its text, or an envelope with its outcome."""
    if reply.finish_reason == "stop" and reply.refusal is None:
        return reply.text
    detail = {"finish_reason": reply.finish_reason, "refusal": reply.refusal, "text": reply.text}
    return _ENVELOPE + json.dumps(detail)


def _unpacked(text: str, usage: Usage, schema: type[BaseModel]) -> ChatReply:
    """A cached reply as it was: its text parsed as ``schema``, or its outcome restored."""
    if not text.startswith(_ENVELOPE):
        return ChatReply.from_text(text, schema, usage=usage)
    detail = json.loads(text[len(_ENVELOPE) :])
    return ChatReply(
        str(detail["text"]),
        usage=usage,
        finish_reason=detail["finish_reason"],
        refusal=detail["refusal"],
    )
