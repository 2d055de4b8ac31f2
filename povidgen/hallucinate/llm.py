"""What every API-backed hallucinator shares: prompt, verify, retry, rate limits and cost.

:class:`LLMHallucinator` turns one example into a verified :class:`~povidgen.Hallucination`::

    for attempt in 1..max_attempts:                      # verification retries, reason fed back
        reserve the call's estimated cost (max_cost_usd) # BudgetExceededError stops the run
        wait for the requests/tokens-per-minute limiter
        reply = call the provider                        # transient faults retried (tenacity)
        record the real cost
        verify the reply -> Hallucination, or retry with the reason

Transient faults (429 rate limits, 5xx, 529 overloaded, timeouts, dropped connections) are
retried with full-jitter exponential backoff (a random wait up to 1, 2, 4 ... 60 s) on top of
what ``retry-after`` says, so a retry is never sent before the server asked and retries from
many tasks spread out instead of arriving together. After a 429 the whole client pauses: no
task sends until the ``retry-after`` has passed (each then waits its own random share more).
Every retry is logged at INFO with its reason. This is the only retry layer (the SDK clients
are built with ``max_retries=0``). Fatal faults (401/403, a 429 for
an exhausted quota, 402 billing) raise :class:`~povidgen.ProviderFatalError`; once a fatal error
or the budget cap stops the hallucinator, every later call raises at once, so a run keeps what
it has and records the rest as not attempted. Other client errors (400, 404, 413, 422) fail the
row only.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import io
import json
import logging
import os
import random
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from povidgen.errors import (
    BudgetExceededError,
    HallucinationError,
    ProviderError,
    ProviderFatalError,
    RunStoppedError,
)
from povidgen.hallucinate.base import HallucinationResult, Hallucinator
from povidgen.hallucinate.batch import (
    BatchBackend,
    BatchItem,
    BatchProgress,
    BatchResult,
    batch_key,
    custom_id_for,
    run_batches,
)
from povidgen.hallucinate.cache import ReplyCache
from povidgen.hallucinate.pricing import (
    CostTracker,
    ModelPrice,
    Usage,
    cost_usd,
    estimate_tokens,
    has_price,
)
from povidgen.hallucinate.prompts import (
    PROMPT_VERSION,
    PromptConfig,
    build_messages,
    prompt_fingerprint,
)
from povidgen.hallucinate.verify import (
    VerificationError,
    verify_answer_to_question,
    verify_reply,
)
from povidgen.redact import scrub
from povidgen.schema import Example, Hallucination

__all__ = ["LLMHallucinator", "Reply"]

logger = logging.getLogger("povidgen")

_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
_FATAL_STATUS = {401, 402, 403}
_QUOTA_MARKERS = ("insufficient_quota", "quota", "billing", "credit balance", "spend limit")


class Reply:
    """One provider response: the raw text the model returned and the tokens it cost."""

    __slots__ = ("text", "usage")

    def __init__(self, text: str, usage: Usage) -> None:
        self.text = text
        self.usage = usage


def status_of(error: BaseException) -> int | None:
    """The HTTP status of an SDK error (``status_code`` on openai/anthropic errors)."""
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def retry_after(error: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` / ``retry-after``), if any."""
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


def is_transient(error: BaseException) -> bool:
    """Worth retrying: timeouts, dropped connections, rate limits, server errors."""
    if isinstance(error, asyncio.TimeoutError | ConnectionError):
        return True
    name = type(error).__name__
    if name in ("APITimeoutError", "APIConnectionError"):
        return True
    status = status_of(error)
    return status in _TRANSIENT_STATUS and not is_fatal(error)


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


_rng = random.Random()
"""The jitter's random numbers (tests replace it with a seeded one)."""


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


class LLMHallucinator(Hallucinator):
    """Base class of the API-backed hallucinators (OpenAI, Anthropic, OpenAI-compatible).

    Subclasses implement :meth:`_complete` (one request, raising the SDK's exceptions) and set
    :attr:`name` and :attr:`provider`.

    Args:
        model: the provider's model name; it picks the price from the price table.
        prompt: what to ask for (:class:`~povidgen.hallucinate.prompts.PromptConfig`).
        send_image: send the image with the prompt (``False`` for text-only models).
        image_max_side: the client-side resize before upload, in pixels.
        max_attempts: replies tried per example before a failed verification becomes a row error.
        max_retries: transient-fault retries per request.
        timeout: seconds per request.
        requests_per_minute: client-side rate limit on requests (``None``: none).
        tokens_per_minute: client-side rate limit on tokens (``None``: none).
        max_cost_usd: stop submitting before the run's cost would pass this.
        prices: model -> :class:`~povidgen.hallucinate.pricing.ModelPrice`, over the table.
        max_output_tokens: the reply's token limit.
        mode: ``"live"`` (one request per example) or ``"batch"`` (the provider's batch API at
            half price; see :mod:`povidgen.hallucinate.batch`).
        batch_dir: where batch state is kept (default ``$XDG_CACHE_HOME/povidgen/batches``).
        poll_interval: seconds between polls of a running batch.
        cache: keep every reply in the reply cache and answer repeated requests from it
            (:mod:`povidgen.hallucinate.cache`), so a rerun pays for nothing twice.
        cache_dir: the cache's folder (default ``$POVIDGEN_CACHE_DIR`` or the user cache).
        max_connection_failures: the circuit breaker: after this many requests in a row got
            no response at all (refused, reset, timed out) from an endpoint that has never
            answered, it is taken for dead and the run stops (``ProviderFatalError`` naming
            the URL; the CLI exits 3) instead of retrying every row for a minute. An endpoint
            that has answered before is taken for flaky and stops the run only after eight
            times as many in a row.
    """

    provider: str = "llm"
    image_tokens: int = 800
    """Tokens one image is assumed to cost when estimating a call before sending it, where
    :meth:`image_tokens_for` knows no better (the providers compute it from the image's size)."""

    on_batch_progress: Callable[[Sequence[BatchProgress]], None] | None = None
    """Batch mode: called after each poll with every chunk's latest :class:`BatchProgress`
    (e.g. to drive a progress bar); progress is also logged at INFO on the ``povidgen`` logger."""

    def __init__(
        self,
        model: str,
        *,
        prompt: PromptConfig | None = None,
        send_image: bool = True,
        image_max_side: int = 1024,
        max_attempts: int = 3,
        max_retries: int = 6,
        timeout: float = 60.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_cost_usd: float | None = None,
        prices: dict[str, ModelPrice] | None = None,
        max_output_tokens: int = 1024,
        initial_backoff: float = 1.0,
        mode: Literal["live", "batch"] = "live",
        batch_dir: str | os.PathLike[str] | None = None,
        poll_interval: float = 30.0,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        max_connection_failures: int = 8,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ValueError("model must be a non-empty model name")
        for label, value in (("max_attempts", max_attempts), ("image_max_side", image_max_side)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive int, got {value!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_cost_usd is not None and max_cost_usd <= 0:
            raise ValueError(f"max_cost_usd must be positive, got {max_cost_usd!r}")
        if mode not in ("live", "batch"):
            raise ValueError(f"mode must be 'live' or 'batch', got {mode!r}")
        self.mode = mode
        self.batch_dir = Path(batch_dir) if batch_dir is not None else _default_batch_dir()
        """Where batch state files live, so an interrupted run resumes its batches."""
        self.poll_interval = poll_interval
        self.model = model
        self.prompt = prompt or PromptConfig()
        self.send_image = send_image
        self.image_max_side = image_max_side
        self.max_attempts = max_attempts
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_output_tokens = max_output_tokens
        self.initial_backoff = initial_backoff
        self.prices = prices
        self.cost = CostTracker(max_cost_usd)
        """The run's spending so far (``cost.spent``, in USD)."""
        self.usage = Usage(input_tokens=0, output_tokens=0)
        """Tokens used so far."""
        self.calls = 0
        """Requests sent, retries included."""
        self._stopped: RunStoppedError | None = None
        self._user_client: Any | None = None
        self._client: Any | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._limiters = _limiters(requests_per_minute, tokens_per_minute)
        self._max_cost_usd = max_cost_usd
        if isinstance(max_connection_failures, bool) or max_connection_failures < 1:
            raise ValueError(
                f"max_connection_failures must be a positive int, got {max_connection_failures!r}"
            )
        self.max_connection_failures = max_connection_failures
        self._connection_failures = 0
        self._answered_once = False
        self.use_cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: ReplyCache | None = None
        self._paused_until = 0.0  # after a 429 no task sends before this (time.monotonic)
        self._pause_window = 0.0  # each paused task waits a random share of this more
        self.priced = has_price(model, prices, provider=self.provider)
        """Whether a price is known for :attr:`model`; if not, tokens are counted and the
        cost is unknown (``cost.priced`` is ``False``)."""
        if not self.priced:
            if max_cost_usd is not None:
                raise ValueError(
                    f"max_cost_usd (--max-cost) needs a price; none is known for model {model!r}: "
                    f"give one with prices={{{model!r}: ModelPrice(input_per_mtok=..., "
                    "output_per_mtok=...)}} (on the command line --price-in and --price-out, "
                    "USD per million tokens)"
                )
            self.cost.priced = False
            logger.warning(
                "no price is known for model %r: its tokens are counted and its cost is "
                "unknown (give one with prices=, or --price-in and --price-out)",
                model,
            )

    # -- provenance ---------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "prompt_version": PROMPT_VERSION,
            "prompt_fingerprint": prompt_fingerprint(self.prompt),
            "kinds": [str(kind) for kind in self.prompt.kinds],
            "min_edits": self.prompt.min_edits,
            "max_edits": self.prompt.max_edits,
            "max_length_ratio": self.prompt.max_length_ratio,
            "send_image": self.send_image,
            "max_attempts": self.max_attempts,
            "mode": self.mode,
        }

    @property
    def stopped(self) -> RunStoppedError | None:
        """Why the hallucinator stopped taking calls, or ``None``."""
        return self._stopped

    # -- batch mode ---------------------------------------------------------------------------

    @property
    def streams(self) -> bool:
        """Live requests stream row by row; batch mode takes its rows together."""
        return self.mode == "live"

    async def ahallucinate_many(
        self,
        examples: Sequence[Example],
        *,
        concurrency: int = 8,
        on_result: Callable[[int, HallucinationResult], None] | None = None,
    ) -> list[HallucinationResult]:
        if self.mode == "live":
            return await super().ahallucinate_many(
                examples, concurrency=concurrency, on_result=on_result
            )
        results = await self._run_batch(examples)
        if on_result is not None:
            for index, result in enumerate(results):
                on_result(index, result)
        return results

    batch_retries: int = 2
    """How many times batch requests that expired or hit a transient fault are submitted again."""

    async def _run_batch(self, examples: Sequence[Example]) -> list[HallucinationResult]:
        if self._stopped is not None:
            stopped = type(self._stopped)(f"not attempted: {self._stopped}")
            return [stopped for _ in examples]
        items = []
        keys: dict[str, str] = {}
        cached: dict[str, tuple[str, Usage]] = {}
        cache = self.reply_cache
        for example in examples:
            system, user = build_messages(example, self.prompt)
            image_url = _data_url(example.image, self.image_max_side) if self.send_image else None
            custom_id = custom_id_for(example.id)
            if cache is not None:
                keys[custom_id] = self._cache_key(system, user, image_url, example.seed)
                if (hit := cache.get(keys[custom_id])) is not None:
                    cached[custom_id] = hit  # paid for by an earlier run: not submitted
                    continue
            request = self._batch_request(system, user, image_url)
            items.append(BatchItem(custom_id, example, request))
        if not items:
            return [
                self._verified(example, *cached[custom_id_for(example.id)], batch=None)
                for example in examples
            ]
        estimate = sum(
            self._cost_of(
                Usage(
                    input_tokens=self._batch_input_tokens(item.request),
                    output_tokens=self.max_output_tokens,
                ),
                batch=True,
            )
            for item in items
        )
        if not self.cost.reserve(estimate):
            self._stop(
                BudgetExceededError(
                    f"max_cost_usd={self._max_cost_usd} would be passed by a batch of "
                    f"{len(items)} requests (estimated ${estimate:.4f}); it was not submitted"
                )
            )
            assert self._stopped is not None
            return [self._stopped for _ in examples]
        fingerprint = prompt_fingerprint(self.prompt)

        def failed(error: Exception) -> ProviderError:
            if isinstance(error, ProviderError):
                return error
            if is_fatal(error):
                self._stop(ProviderFatalError(_describe(self.provider, error)))
                assert self._stopped is not None
                return self._stopped
            return ProviderError(f"batch failed: {_describe(self.provider, error)}")

        def keep(joined: Mapping[str, BatchResult]) -> None:
            # into the reply cache as each chunk is joined: a crash later loses none of them
            if cache is None:
                return
            for custom_id, reply in joined.items():
                if not isinstance(reply, ProviderError):
                    cache.put(keys[custom_id], *reply)

        try:
            replies = await run_batches(
                self._batch_backend(),
                items,
                state_dir=self.batch_dir,
                key=lambda chunk: batch_key(self.provider, self.model, fingerprint, chunk),
                poll_interval=self.poll_interval,
                retries=self.batch_retries,
                on_error=failed,
                on_results=keep,
                on_progress=self.on_batch_progress,
            )
        except Exception as error:  # noqa: BLE001 - a failed batch fails each of its rows
            failure = failed(error)
            return [failure for _ in examples]
        finally:
            self.cost.release(estimate)
        results: list[HallucinationResult] = []
        for example in examples:
            custom_id = custom_id_for(example.id)
            if custom_id in cached:
                results.append(self._verified(example, *cached[custom_id], batch=None))
                continue
            reply = replies.get(custom_id)
            if reply is None:
                results.append(ProviderError("the batch returned no result for this request"))
                continue
            if isinstance(reply, ProviderError):
                results.append(reply)
                continue
            results.append(self._verified(example, *reply, batch=True))
        return results

    def image_tokens_for(self, width: int, height: int) -> int:
        """The input tokens the provider bills for one image of this size, as it is sent.

        This base class knows no formula and answers :attr:`image_tokens`; the OpenAI and
        Anthropic hallucinators apply their provider's documented one
        (:func:`~povidgen.hallucinate.pricing.openai_image_tokens`,
        :func:`~povidgen.hallucinate.pricing.anthropic_image_tokens`).
        """
        return self.image_tokens

    def _input_tokens(self, system: str, user: str, image: Image.Image | None) -> int:
        """The estimated input tokens of a live request: its text, and the image (if sent) as
        the provider's image tokens for the size it is sent at, never as its base64 text."""
        tokens = estimate_tokens(system + user)
        if image is not None:
            tokens += self.image_tokens_for(*_sent_size(image.size, self.image_max_side))
        return tokens

    def _batch_input_tokens(self, request: dict[str, Any]) -> int:
        """The input tokens of a batch request, each image counted as the provider's image
        tokens for its size (:meth:`image_tokens_for`).

        The request carries each image as base64 text, many times the tokens the provider
        bills for it, so images are taken out before the text is counted; an image whose size
        cannot be read counts as :attr:`image_tokens`.
        """
        image_tokens = 0

        def count(data: str) -> None:
            nonlocal image_tokens
            size = _base64_image_size(data)
            image_tokens += self.image_tokens if size is None else self.image_tokens_for(*size)

        def strip(value: Any) -> Any:
            if isinstance(value, str) and value.startswith("data:image/"):
                count(value.partition(";base64,")[2])
                return ""
            if isinstance(value, dict):
                if value.get("type") == "base64" and "data" in value:  # an Anthropic image
                    count(str(value["data"]))
                    return {k: v for k, v in value.items() if k != "data"}
                return {k: strip(v) for k, v in value.items()}
            if isinstance(value, list):
                return [strip(v) for v in value]
            return value

        text = json.dumps(strip(request))
        return estimate_tokens(text) + image_tokens

    def _verified(
        self, example: Example, text: str, usage: Usage, *, batch: bool | None
    ) -> HallucinationResult:
        """Verify one batch reply; ``batch=None`` is a cached reply (nothing to pay)."""
        if batch is not None:
            self.cost.add(self._cost_of(usage, batch=batch))
            self.usage = self.usage + usage
        try:
            return self._verify(example, text)
        except VerificationError as error:
            return error

    def _batch_request(self, system: str, user: str, image_url: str | None) -> dict[str, Any]:
        """The body of one batch request (providers with batch APIs override this)."""
        raise NotImplementedError(f"{type(self).__name__} has no batch mode")

    def _batch_backend(self) -> BatchBackend:
        raise NotImplementedError(f"{type(self).__name__} has no batch mode")

    # -- the per-example loop -----------------------------------------------------------------

    def _verify(self, example: Example, text: str) -> Hallucination:
        """:func:`verify_reply`, then the question-aware check
        (:func:`verify_answer_to_question`): a reply that swaps the asked object away,
        contradicts itself or leaves what was asked unchanged fails with a reason that is
        fed back on the next attempt."""
        hallucination = verify_reply(example, text, self.prompt)
        verify_answer_to_question(example, hallucination)
        return hallucination

    async def ahallucinate(self, example: Example) -> Hallucination:
        feedback: str | None = None
        previous: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            system, user = build_messages(
                example, self.prompt, feedback=feedback, previous_reply=previous
            )
            reply = await self._call(system, user, example)
            try:
                return self._verify(example, reply.text)
            except VerificationError as error:
                logger.info(
                    "reply for %s failed verification (attempt %d/%d): %s",
                    example.id,
                    attempt,
                    self.max_attempts,
                    error.reason,
                )
                feedback, previous = error.reason, reply.text
        raise VerificationError(
            f"no reply passed verification in {self.max_attempts} attempts; last: {feedback}"
        )

    @property
    def reply_cache(self) -> ReplyCache | None:
        """The reply cache in use (opened on first use), or ``None`` with ``cache=False``."""
        if self.use_cache and self._cache is None:
            self._cache = ReplyCache(self.cache_dir)
        return self._cache

    def _cache_key(self, system: str, user: str, image_url: str | None, seed: int) -> str:
        image = None
        if image_url is not None:
            image = hashlib.blake2b(image_url.encode("ascii"), digest_size=20).hexdigest()
        return ReplyCache.key(
            provider=self.provider,
            model=self.model,
            prompt_version=PROMPT_VERSION,
            prompt_fingerprint=prompt_fingerprint(self.prompt),
            parameters={"max_output_tokens": self.max_output_tokens, **self._request_params()},
            system=system,
            user=user,
            image=image,
            seed=seed,
        )

    def _request_params(self) -> dict[str, Any]:
        """Request parameters besides the prompt that change the reply (subclasses add
        theirs, e.g. a temperature), for the reply cache's key."""
        return {}

    async def _call(self, system: str, user: str, example: Example) -> Reply:
        if self._stopped is not None:
            raise type(self._stopped)(f"not attempted: {self._stopped}")
        image_url = _data_url(example.image, self.image_max_side) if self.send_image else None
        cache = self.reply_cache
        key = self._cache_key(system, user, image_url, example.seed) if cache is not None else ""
        if cache is not None and (hit := cache.get(key)) is not None:
            return Reply(*hit)  # paid for by an earlier run: nothing is sent
        image = example.image if self.send_image else None
        estimate = Usage(
            input_tokens=self._input_tokens(system, user, image),
            output_tokens=self.max_output_tokens,
        )
        reserved = self._cost_of(estimate, batch=False)
        if not self.cost.reserve(reserved):
            self._stop(
                BudgetExceededError(
                    f"max_cost_usd={self._max_cost_usd} reached (spent ${self.cost.spent:.4f}); "
                    "no further requests are sent"
                )
            )
            assert self._stopped is not None
            raise self._stopped
        try:
            reply = await self._send(system, user, image_url, estimate.input_tokens)
        except BaseException:
            self.cost.release(reserved)
            raise
        self.cost.release(reserved, actual=self._cost_of(reply.usage, batch=False))
        self.usage = self.usage + reply.usage
        if cache is not None:
            # the commit waits for the disk (fsync): off the event loop, which would
            # otherwise hold every other call in flight for those milliseconds
            await asyncio.to_thread(cache.put, key, reply.text, reply.usage)
        return reply

    def _cost_of(self, usage: Usage, *, batch: bool) -> float:
        """What ``usage`` costs on :attr:`model` (0 when no price is known: see :attr:`priced`)."""
        if not self.priced:
            return 0.0
        return cost_usd(self.model, usage, batch=batch, prices=self.prices, provider=self.provider)

    async def _send(
        self, system: str, user: str, image_url: str | None, input_tokens: int
    ) -> Reply:
        backoff = _Backoff(self.initial_backoff, 60.0)

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            if error is not None and status_of(error) == 429:
                # the whole client pauses, not only this task: no one sends before retry-after
                floor = retry_after(error)
                pause = floor if floor is not None else backoff.window(state.attempt_number)
                self._paused_until = max(self._paused_until, time.monotonic() + pause)
                self._pause_window = backoff.window(state.attempt_number)
            logger.info(
                "%s: retrying a request in %.2fs (retry %d of %d): %s",
                type(self).__name__,
                wait,
                state.attempt_number,
                self.max_retries,
                scrub(_describe(self.provider, error)) if error is not None else "no reason",
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
                    if self._stopped is not None:  # tripped while this row waited to retry
                        raise type(self._stopped)(f"stopped: {self._stopped}")
                    await self._wait_for_pause()
                    await self._throttle(input_tokens + self.max_output_tokens)
                    self.calls += 1
                    return await self._answered(self._complete(system, user, image_url))
        except Exception as error:
            if isinstance(error, HallucinationError | RunStoppedError):
                raise
            if is_fatal(error):
                self._stop(ProviderFatalError(_describe(self.provider, error)))
                assert self._stopped is not None
                raise self._stopped from error
            raise ProviderError(_describe(self.provider, error)) from error
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _answered(self, request: Coroutine[Any, Any, Reply]) -> Reply:
        """Await one request and keep the circuit breaker's count: a request that got any
        HTTP response resets it, one that got none adds to it and may trip it."""
        try:
            reply = await request
        except Exception as error:
            if not is_connection_failure(error):
                self._connection_failures = 0
                self._answered_once = True  # an HTTP error is an answer: the server is there
                raise
            self._connection_failures += 1
            # an endpoint that has answered before is flaky rather than dead: it gets more rope
            limit = self.max_connection_failures * (8 if self._answered_once else 1)
            if self._connection_failures >= limit:
                self._stop(
                    ProviderFatalError(
                        f"{self._endpoint()} is unreachable: {self._connection_failures} "
                        f"requests in a row got no response "
                        f"({_describe(self.provider, error)}); check the URL and the network"
                    )
                )
                assert self._stopped is not None
                raise self._stopped from error
            raise
        self._connection_failures = 0
        self._answered_once = True
        return reply

    def _endpoint(self) -> str:
        """The URL requests go to, for messages."""
        base_url = getattr(self.client(), "base_url", None)
        return str(base_url) if base_url is not None else f"the {self.provider} API"

    async def _wait_for_pause(self) -> None:
        """After a 429, wait until the client-wide pause is over, plus a random share of the
        pause's backoff window (full jitter), so paused tasks do not all send at once."""
        while (left := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(left + _rng.uniform(0.0, self._pause_window))

    async def _throttle(self, tokens: int) -> None:
        requests, token_budget = self._limiters
        if requests is not None:
            await requests.acquire()
        if token_budget is not None:
            await token_budget.acquire(min(tokens, token_budget.max_rate))

    def _stop(self, reason: RunStoppedError) -> None:
        if self._stopped is None:
            logger.error("%s: %s", type(self).__name__, reason)
            self._stopped = reason

    def client(self) -> Any:
        """The SDK client for the running event loop.

        An HTTP connection pool belongs to the loop that opened it, so a client made by
        povidgen is (re)made per loop and closed by :meth:`aclose`; a client passed in by the
        user is used as it is and never closed here.
        """
        loop = asyncio.get_running_loop()
        if self._user_client is not None:
            return self._user_client
        if self._client is None or self._client_loop is not loop:
            self._client = self._make_client()
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()

    def _make_client(self) -> Any:
        """A new SDK client with retries off (subclasses that talk HTTP override this)."""
        raise NotImplementedError

    @abstractmethod
    async def _complete(self, system: str, user: str, image_url: str | None) -> Reply:
        """Send one request; return the raw reply text and its usage; raise the SDK's errors.

        ``image_url`` is a ``data:image/jpeg;base64,...`` URL, or ``None`` for text only.
        """


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
    """

    def __init__(self, interval: float, window: float = 1.0) -> None:
        self.interval = interval
        self.window = window
        self.capacity = max(1, int(window / interval + 1e-9))
        self._next = 0.0
        self._sent: deque[float] = deque()

    async def acquire(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
        while True:
            now = time.monotonic()
            while self._sent and self._sent[0] <= now - self.window:
                self._sent.popleft()
            if len(self._sent) < self.capacity:
                self._sent.append(now)
                return
            await asyncio.sleep(self._sent[0] + self.window - now)


def _default_batch_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "povidgen" / "batches"


def _limiters(rpm: float | None, tpm: float | None) -> tuple[_Pacer | None, Any]:
    for label, value in (("requests_per_minute", rpm), ("tokens_per_minute", tpm)):
        if value is not None and value <= 0:
            raise ValueError(f"{label} must be positive, got {value!r}")
    requests = _Pacer(60.0 / rpm) if rpm is not None else None
    if tpm is None:
        return requests, None
    try:
        from aiolimiter import AsyncLimiter
    except ImportError as error:  # an optional dependency of the provider extras
        raise ImportError("tokens_per_minute needs aiolimiter: pip install aiolimiter") from error
    # providers count tokens per minute, so the bucket holds a minute's worth
    return requests, AsyncLimiter(tpm, 60.0)


def _sent_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size an image of ``size`` is sent at: scaled down to a longer side of ``max_side``."""
    width, height = size
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _base64_image_size(data: str) -> tuple[int, int] | None:
    """The pixel size of a base64-encoded image (its header is read, not its pixels)."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=False))) as picture:
            width, height = picture.size
    except Exception:  # noqa: BLE001 - an unreadable image counts as the default image tokens
        return None
    return width, height


def _data_url(image: Image.Image, max_side: int) -> str:
    """The image as a JPEG data URL, scaled down so its longer side is at most ``max_side``."""
    picture = image.convert("RGB")
    size = _sent_size(picture.size, max_side)
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _describe(provider: str, error: BaseException) -> str:
    """A message for an SDK error without request details (which could carry secrets)."""
    status = status_of(error)
    detail = getattr(error, "message", None) or str(error) or type(error).__name__
    prefix = f"{provider} {type(error).__name__}"
    return f"{prefix} (HTTP {status}): {detail}" if status else f"{prefix}: {detail}"
