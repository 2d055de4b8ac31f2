"""The LLM hallucinator: a backend, the policies around it, and verify-and-re-ask.

:class:`LLMHallucinator` turns one example into a verified :class:`~povidgen.Hallucination`
with a :class:`~povidgen.hallucinate.backend.Backend` (the transport: OpenAI, Anthropic, a
local model, a script) wrapped in policies (:mod:`povidgen.hallucinate.policies`), outermost
first::

    ReAsk           verify each reply; re-ask with the reason, up to max_attempts
    ReplyCaching    answer a request seen before from the reply cache
    Budget          reserve the call's estimated cost (max_cost_usd)
    Retry           transient faults retried with full jitter; a 429 pauses the whole client
    RateLimit       requests_per_minute / tokens_per_minute
    CircuitBreaker  an endpoint that never answers stops the run
    backend         one request, one typed reply

Batch mode (``mode="batch"``) is its own executor
(:class:`~povidgen.hallucinate.batch.BatchExecutor`): the provider's batch API at half price,
with the same cache, budget and verification.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from povidgen.errors import RunStoppedError
from povidgen.hallucinate.backend import (
    Backend,
    ChatReply,
    ChatRequest,
    data_url,
    sent_size,
)
from povidgen.hallucinate.base import HallucinationResult, Hallucinator
from povidgen.hallucinate.batch import BatchBackend, BatchExecutor, BatchProgress
from povidgen.hallucinate.cache import ReplyCache
from povidgen.hallucinate.policies import (
    Budget,
    CircuitBreaker,
    Pause,
    RateLimit,
    ReplyCaching,
    Retry,
    StopSwitch,
)
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
    RewriteReply,
    prompt_fingerprint,
)
from povidgen.hallucinate.reask import ReAsk, verify
from povidgen.schema import Example, Hallucination

__all__ = ["LLMHallucinator", "Reply"]

logger = logging.getLogger("povidgen")

_data_url = data_url  # the names benchmarks and tests import from here
_sent_size = sent_size


class Reply:
    """What :meth:`LLMHallucinator._complete` returns (the protocol before backends): the raw
    text the model returned and the tokens it cost."""

    __slots__ = ("text", "usage")

    def __init__(self, text: str, usage: Usage) -> None:
        self.text = text
        self.usage = usage


class _CompletionBackend(Backend):
    """A backend over a subclass's ``_complete(system, user, image_url) -> Reply`` (the local
    transformers hallucinator, and subclasses written before backends): a thin adapter. A
    reply that fills the token limit and does not parse is taken as cut off there."""

    def __init__(self, owner: LLMHallucinator) -> None:
        self.owner = owner
        self.provider = owner.provider

    async def send(self, request: ChatRequest) -> ChatReply:
        reply = await self.owner._complete(request.system, request.user, request.image_url)
        parsed = ChatReply.from_text(reply.text, request.schema, usage=reply.usage)
        if parsed.parsed is None and reply.usage.output_tokens >= request.max_tokens:
            parsed.finish_reason = "length"
        return parsed


class LLMHallucinator(Hallucinator):
    """A hallucinator that asks a language model, through any backend.

    Give ``backend=`` (a :class:`~povidgen.hallucinate.backend.Backend`: e.g.
    :class:`~povidgen.hallucinate.scripted.ScriptedBackend` in tests, or one of your own), or
    use a provider's subclass (:class:`~povidgen.OpenAIHallucinator`,
    :class:`~povidgen.AnthropicHallucinator`, :class:`~povidgen.TransformersHallucinator`),
    which makes its backend from its own arguments. The settings below configure the
    policies composed around it (see the module docstring).

    Args:
        model: the model's name; it picks the price from the price table, and is recorded.
        backend: the transport; default: the subclass's.
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
        initial_backoff: the first retry's jitter window, in seconds (doubling each retry).
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

    batch_retries: int = 2
    """How many times batch requests that expired or hit a transient fault are submitted again."""

    def __init__(
        self,
        model: str,
        *,
        backend: Backend | None = None,
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
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_cost_usd is not None and max_cost_usd <= 0:
            raise ValueError(f"max_cost_usd must be positive, got {max_cost_usd!r}")
        if mode not in ("live", "batch"):
            raise ValueError(f"mode must be 'live' or 'batch', got {mode!r}")
        if backend is None and type(self)._complete is LLMHallucinator._complete:
            raise TypeError(
                f"{type(self).__name__} needs a backend: pass backend=, or use a provider's "
                "hallucinator (OpenAIHallucinator, AnthropicHallucinator, ...)"
            )
        if backend is not None and type(self).provider == LLMHallucinator.provider:
            self.provider = backend.provider
        if backend is not None and backend.price is not None and model not in (prices or {}):
            prices = {**(prices or {}), model: backend.price}
        self.mode = mode
        self.batch_dir = Path(batch_dir) if batch_dir is not None else _default_batch_dir()
        """Where batch state files live, so an interrupted run resumes its batches."""
        self.poll_interval = poll_interval
        self.model = model
        self.prompt = prompt or PromptConfig()
        self.send_image = send_image
        self.image_max_side = image_max_side
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.max_output_tokens = max_output_tokens
        self.prices = prices
        self.cost = CostTracker(max_cost_usd)
        """The run's spending so far (``cost.spent``, in USD)."""
        self._max_cost_usd = max_cost_usd
        self.use_cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: ReplyCache | None = None
        self.backend: Backend = backend if backend is not None else _CompletionBackend(self)
        """The transport the policies wrap."""
        self._switch = StopSwitch(type(self).__name__)
        self._breaker = CircuitBreaker(
            self.backend, max_failures=max_connection_failures, stop=self._switch
        )
        pause = Pause()  # after a 429: started by Retry, honoured by the pacer too
        limited = RateLimit(
            self._breaker,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            tokens=self._estimated_tokens,
            pause=pause,
        )
        self._retry = Retry(
            limited,
            max_retries=max_retries,
            initial_backoff=initial_backoff,
            stop=self._switch,
            name=type(self).__name__,
            pause=pause,
            # a request pacer spaces the restart after a pause; jitter would waste its slots
            spread_after_pause=requests_per_minute is None,
        )
        self._budget = Budget(
            self._retry,
            tracker=self.cost,
            estimate=self._estimate,
            cost_of=lambda usage: self._cost_of(usage, batch=False),
            stop=self._switch,
        )
        self._policies: Backend = ReplyCaching(
            self._budget,
            cache=lambda: self.reply_cache,
            key=lambda r: self._cache_key(r.system, r.user, r.image_url, r.seed),
        )
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
        else:
            # price one token now: genai-prices loads its data and modules on first use, which
            # would otherwise happen on the event loop at the first reply and hold up the sends
            self._cost_of(Usage(input_tokens=1, output_tokens=1), batch=False)

    # -- what a build reads -------------------------------------------------------------------

    @property
    def cost_usd(self) -> float | None:
        """USD spent so far; ``None`` when no price is known for :attr:`model`."""
        return self.cost.spent if self.priced else None

    @property
    def usage(self) -> Usage:
        """Tokens used so far."""
        return self._budget.usage

    @property
    def stopped(self) -> RunStoppedError | None:
        """Why the hallucinator stopped taking calls, or ``None``."""
        return self._switch.reason

    @property
    def calls(self) -> int:
        """Requests sent, retries included."""
        return self._breaker.calls

    # -- the policies' settings ---------------------------------------------------------------

    @property
    def max_retries(self) -> int:
        """Transient-fault retries per request."""
        return self._retry.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self._retry.max_retries = value

    @property
    def initial_backoff(self) -> float:
        """The first retry's jitter window, in seconds."""
        return self._retry.initial_backoff

    @initial_backoff.setter
    def initial_backoff(self, value: float) -> None:
        self._retry.initial_backoff = value

    @property
    def max_connection_failures(self) -> int:
        """The circuit breaker's limit (see the class docstring)."""
        return self._breaker.max_failures

    @max_connection_failures.setter
    def max_connection_failures(self, value: int) -> None:
        self._breaker.max_failures = value

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

    # -- live calls ---------------------------------------------------------------------------

    def request_for(self, system: str, user: str, example: Example) -> ChatRequest:
        """The :class:`~povidgen.hallucinate.backend.ChatRequest` of one attempt for
        ``example``: the reply schema, the token limit and (with :attr:`send_image`) the
        image at :attr:`image_max_side`."""
        return ChatRequest(
            system,
            user,
            schema=RewriteReply,
            max_tokens=self.max_output_tokens,
            image=example.image if self.send_image else None,
            image_max_side=self.image_max_side,
            seed=example.seed,
            example=example,
        )

    async def send(self, request: ChatRequest) -> ChatReply:
        """Send one request through the policies and the backend (nothing is sent once the
        hallucinator has stopped: see :attr:`stopped`)."""
        self._switch.check()
        await request.aencode_image()
        return await self._policies.send(request)

    async def ahallucinate(self, example: Example) -> Hallucination:
        reask = ReAsk(prompt=self.prompt, max_attempts=self.max_attempts, request=self.request_for)
        return await reask.run(example, self.send)

    def _verify(self, example: Example, text: str) -> Hallucination:
        """:func:`~povidgen.hallucinate.reask.verify` on a reply's text."""
        return verify(example, text, self.prompt)

    def _estimate(self, request: ChatRequest) -> Usage:
        """A request's tokens before it is sent: its text and image in, the limit out."""
        return Usage(
            input_tokens=self._input_tokens(request.system, request.user, request.image),
            output_tokens=request.max_tokens,
        )

    def _estimated_tokens(self, request: ChatRequest) -> int:
        usage = self._estimate(request)
        return usage.input_tokens + usage.output_tokens

    def _cost_of(self, usage: Usage, *, batch: bool) -> float:
        """What ``usage`` costs on :attr:`model` (0 when no price is known: see :attr:`priced`)."""
        if not self.priced:
            return 0.0
        return cost_usd(self.model, usage, batch=batch, prices=self.prices, provider=self.provider)

    def _stop(self, reason: RunStoppedError) -> RunStoppedError:
        return self._switch.stop(reason)

    # -- the reply cache ----------------------------------------------------------------------

    @property
    def reply_cache(self) -> ReplyCache | None:
        """The reply cache in use (opened on first use), or ``None`` with ``cache=False``."""
        if not self.use_cache:
            return None
        if self._cache is None:
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
        """Request parameters besides the prompt that change the reply (the backend's, e.g. a
        server URL; subclasses may add theirs), for the reply cache's key."""
        return self.backend.request_params()

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
        results = await BatchExecutor(self).run(examples)
        if on_result is not None:
            for index, result in enumerate(results):
                on_result(index, result)
        return results

    def _batch_request(self, system: str, user: str, image_url: str | None) -> dict[str, Any]:
        """The body of one batch request (providers with batch APIs override this)."""
        raise NotImplementedError(f"{type(self).__name__} has no batch mode")

    def _batch_backend(self) -> BatchBackend:
        raise NotImplementedError(f"{type(self).__name__} has no batch mode")

    def _add_usage(self, usage: Usage, *, batch: bool) -> None:
        """Count a reply that did not go through the live policies (a batch reply)."""
        self.cost.add(self._cost_of(usage, batch=batch))
        self._budget.usage = self._budget.usage + usage

    def image_tokens_for(self, width: int, height: int) -> int:
        """The input tokens the provider bills for one image of this size, as it is sent.

        The backend's formula where it has one, else :attr:`image_tokens`; the OpenAI and
        Anthropic backends apply their provider's documented one
        (:func:`~povidgen.hallucinate.pricing.openai_image_tokens`,
        :func:`~povidgen.hallucinate.pricing.anthropic_image_tokens`).
        """
        known = self.backend.image_tokens_for(width, height)
        return self.image_tokens if known is None else known

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

    # -- the backend ----------------------------------------------------------------------------

    def client(self) -> Any:
        """The backend's SDK client for the running event loop (providers with one)."""
        client = getattr(self.backend, "client", None)
        if not callable(client):
            raise AttributeError(f"{type(self.backend).__name__} has no SDK client")
        return client()

    async def aclose(self) -> None:
        await self.backend.aclose()

    def _endpoint(self) -> str:
        """The URL requests go to, for messages."""
        return self.backend.endpoint

    async def _complete(self, system: str, user: str, image_url: str | None) -> Reply:
        """The protocol before backends: send one request, return its raw text and usage.

        A subclass that overrides this (and gives no ``backend=``) gets a thin adapter backend
        over it; new code should write a :class:`~povidgen.hallucinate.backend.Backend`.
        """
        raise NotImplementedError(f"{type(self).__name__} sends through its backend")


def _default_batch_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "povidgen" / "batches"


def _base64_image_size(data: str) -> tuple[int, int] | None:
    """The pixel size of a base64-encoded image (its header is read, not its pixels)."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=False))) as picture:
            width, height = picture.size
    except Exception:  # noqa: BLE001 - an unreadable image counts as the default image tokens
        return None
    return width, height
