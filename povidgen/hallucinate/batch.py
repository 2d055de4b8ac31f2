"""Batch mode: half-price provider batch APIs, chunked to the providers' limits and resumable.

For a set of examples, :func:`run_batches`:

1. takes one request per example (the same request the live path sends) with a ``custom_id``
   derived from the example id;
2. splits them, in input order, into chunks that each fit one provider batch: at most
   :attr:`BatchBackend.max_requests` requests and :attr:`BatchBackend.max_bytes` bytes of
   uploaded JSONL (OpenAI: 50,000 requests / 200 MB a file; Anthropic: 100,000 / 256 MB). A
   single request over the byte limit is not submitted: it becomes that row's
   :class:`~povidgen.ProviderError`;
3. for each chunk, looks for a state file named after a hash of the provider, model, prompt and
   the chunk's requests in ``state_dir``; if one exists, that chunk was already submitted and
   the run resumes polling it instead of submitting again; otherwise it submits the chunk and
   writes the state file (atomically) before polling. Every chunk is submitted before any is
   polled, so they run at the provider side by side;
4. polls the chunks until each is finished, reporting each chunk's progress (status, requests
   completed and failed of its total: a :class:`BatchProgress`) on the ``povidgen`` logger at
   INFO whenever it changes (and at least once a minute) and to an ``on_progress`` callback
   after every poll; a poll that raises is tried again on the next one (a few times in a row
   at most), since a batch runs for hours; then downloads and joins each chunk's results on
   ``custom_id`` and removes its state file;
5. submits the requests the provider reported as expired or as failed with a transient fault
   (5xx, 429 rate limit, overloaded) again, in new chunks, at most ``retries`` times.

A request that is still failing after that, or that failed for good (a 4xx, an exhausted quota),
becomes that example's :class:`~povidgen.ProviderError` (and so a per-row error record); the
caller verifies every reply exactly as a live reply is verified, and a reply that fails
verification is not retried here.

:class:`BatchExecutor` is batch mode as an executor of its own beside the live policies: it
answers what it can from the reply cache, reserves the whole batch's estimated cost at once,
runs :func:`run_batches` and verifies each reply (a provider's results may be
:class:`~povidgen.hallucinate.backend.ChatReply` objects, so a cut-off or refused reply keeps
its outcome).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from povidgen.errors import (
    BudgetExceededError,
    ProviderError,
    ProviderFatalError,
    RunStoppedError,
    VerificationError,
)
from povidgen.hallucinate.backend import ChatReply
from povidgen.hallucinate.policies import _packed, _unpacked, describe_error, is_fatal
from povidgen.hallucinate.pricing import Usage
from povidgen.hallucinate.prompts import RewriteReply, build_messages, prompt_fingerprint
from povidgen.hallucinate.reask import outcome_reason, verify
from povidgen.schema import Example

if TYPE_CHECKING:
    from povidgen.hallucinate.base import HallucinationResult
    from povidgen.hallucinate.llm import LLMHallucinator

__all__ = [
    "PROVIDER_LIMITS",
    "BatchBackend",
    "BatchExecutor",
    "BatchItem",
    "BatchProgress",
    "BatchResult",
    "is_retryable",
    "run_batches",
    "split_chunks",
]

logger = logging.getLogger("povidgen")

BatchResult = tuple[str, Usage] | ChatReply | ProviderError
"""One request's outcome: (reply text, usage) or a typed reply, or the error of that request."""

PROVIDER_LIMITS: dict[str, tuple[int, int]] = {
    "openai": (50_000, 200 * 2**20),  # requests and bytes of one batch input file
    "anthropic": (100_000, 256 * 2**20),  # requests and bytes of one batch create request
}
"""Each provider's documented size of one batch: ``(requests, bytes)``."""

_DEFAULT_LIMITS = PROVIDER_LIMITS["openai"]
_PROGRESS_EVERY = 60.0  # seconds between progress lines when nothing changes
_POLL_FAILURES = 5  # polls of a chunk in a row that may raise before its rows fail


@dataclass(frozen=True)
class BatchProgress:
    """One provider batch as of a poll: its status and request counts.

    ``completed`` and ``failed`` count the requests the provider has finished so far (OpenAI:
    ``request_counts.completed`` / ``failed``; Anthropic: ``succeeded`` / ``errored`` +
    ``canceled`` + ``expired``); ``total`` is 0 while the provider has not counted them yet.
    """

    batch_id: str
    status: str
    finished: bool
    total: int = 0
    completed: int = 0
    failed: int = 0

    def describe(self) -> str:
        """``"in_progress, 120 of 300 requests completed, 2 failed"``."""
        return (
            f"{self.status}, {self.completed} of {self.total} requests completed, "
            f"{self.failed} failed"
        )


class BatchItem:
    """One request of a batch: its ``custom_id``, example and provider request parameters."""

    __slots__ = ("custom_id", "example", "request")

    def __init__(self, custom_id: str, example: Example, request: dict[str, Any]) -> None:
        self.custom_id = custom_id
        self.example = example
        self.request = request


class BatchBackend(ABC):
    """What a provider's batch API must offer (see the providers' ``_batch_backend``).

    :attr:`max_requests` and :attr:`max_bytes` are the size of one provider batch; ``None``
    (the default) means the provider's documented limit from :data:`PROVIDER_LIMITS`. Set them
    on a backend class (or on :class:`BatchBackend` itself) to use smaller chunks.
    """

    provider: str
    max_requests: int | None = None
    max_bytes: int | None = None

    def limits(self) -> tuple[int, int]:
        """``(requests, bytes)`` one batch of this backend may hold."""
        requests, size = PROVIDER_LIMITS.get(self.provider, _DEFAULT_LIMITS)
        return (
            self.max_requests if self.max_requests is not None else requests,
            self.max_bytes if self.max_bytes is not None else size,
        )

    def request_bytes(self, item: BatchItem) -> int:
        """The bytes ``item`` adds to an upload: its JSONL line (an OpenAI-shaped wrapper).

        ASCII-escaped JSON with spaces after separators, so never less than what an SDK sends;
        for Anthropic (``{"custom_id", "params"}`` in one JSON body) the wrapper's extra keys
        more than cover the body's brackets and commas.
        """
        line = {
            "custom_id": item.custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": item.request,
        }
        return len(json.dumps(line).encode("utf-8")) + 1

    @abstractmethod
    async def submit(self, items: Sequence[BatchItem]) -> str:
        """Submit the requests; return the batch id."""

    @abstractmethod
    async def poll(self, batch_id: str) -> BatchProgress:
        """The batch's status and counts; ``finished`` once it has completed, ended, expired,
        failed or been cancelled."""

    @abstractmethod
    async def results(self, batch_id: str) -> dict[str, BatchResult]:
        """``custom_id`` -> (reply text, usage), or the error of that request."""


def custom_id_for(example_id: str) -> str:
    """A provider-safe id (``[A-Za-z0-9_-]{1,64}``) for an example id."""
    return "r" + hashlib.sha256(example_id.encode("utf-8")).hexdigest()[:40]


def batch_key(provider: str, model: str, fingerprint: str, items: Sequence[BatchItem]) -> str:
    """A stable name for a set of requests: the same rows and settings give the same key."""
    digest = hashlib.sha256()
    for part in (provider, model, fingerprint):
        digest.update(part.encode("utf-8") + b"\x00")
    for item in sorted(items, key=lambda i: i.custom_id):
        digest.update(item.custom_id.encode("utf-8"))
        digest.update(json.dumps(item.request, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:32]


def split_chunks(
    items: Sequence[BatchItem], backend: BatchBackend
) -> tuple[list[list[BatchItem]], dict[str, ProviderError]]:
    """Split ``items``, in order, into chunks within ``backend``'s limits.

    Returns the chunks and, by ``custom_id``, the errors of the requests that are larger than a
    whole batch may be (they are in no chunk). The same items and limits give the same chunks.
    """
    max_requests, max_bytes = backend.limits()
    if max_requests < 1 or max_bytes < 1:
        raise ValueError(f"batch limits must be positive, got {(max_requests, max_bytes)!r}")
    chunks: list[list[BatchItem]] = []
    oversized: dict[str, ProviderError] = {}
    chunk: list[BatchItem] = []
    size = 0
    for item in items:
        item_bytes = backend.request_bytes(item)
        if item_bytes > max_bytes:
            oversized[item.custom_id] = ProviderError(
                f"the request is {item_bytes} bytes, over the {backend.provider} batch limit of "
                f"{max_bytes} bytes; it was not submitted"
            )
            continue
        if chunk and (len(chunk) >= max_requests or size + item_bytes > max_bytes):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += item_bytes
    if chunk:
        chunks.append(chunk)
    return chunks, oversized


_RETRYABLE_MARKERS = (
    "expired",
    "server_error",
    "api_error",
    "internal_error",
    "overloaded",
    "rate_limit",
    "timeout",
    "timed out",
)
_PERMANENT_MARKERS = ("quota", "billing", "credit balance", "canceled", "cancelled")
_RETRYABLE_STATUS = re.compile(r"status_code['\"]?\s*[:=]\s*(?:408|429|5\d\d)\b")


def is_retryable(error: ProviderError) -> bool:
    """Whether a batch item's error is worth submitting again: expired, 5xx, 429, overloaded.

    Batch results carry the provider's error body, not an exception, so this reads its text
    (OpenAI: ``batch_expired``, ``server_error``, ``rate_limit_exceeded``; Anthropic:
    ``expired``, ``api_error``, ``overloaded_error``, ``rate_limit_error``). An exhausted quota
    or billing error is not retried.
    """
    if isinstance(error, RunStoppedError):
        return False
    text = str(error).lower()
    if any(marker in text for marker in _PERMANENT_MARKERS):
        return False
    return any(marker in text for marker in _RETRYABLE_MARKERS) or bool(
        _RETRYABLE_STATUS.search(text)
    )


class _Chunk:
    """One provider batch of a run: its requests, state file, batch id and latest progress."""

    __slots__ = (
        "batch_id",
        "items",
        "logged",
        "logged_at",
        "poll_failures",
        "progress",
        "state_path",
    )

    def __init__(self, items: list[BatchItem], state_path: Path) -> None:
        self.items = items
        self.state_path = state_path
        self.batch_id: str | None = None
        self.progress: BatchProgress | None = None
        self.logged: BatchProgress | None = None  # the progress last logged, and when
        self.logged_at = 0.0
        self.poll_failures = 0  # polls in a row that raised


async def run_batches(
    backend: BatchBackend,
    items: Sequence[BatchItem],
    *,
    state_dir: Path,
    key: Callable[[Sequence[BatchItem]], str],
    poll_interval: float,
    retries: int = 2,
    on_error: Callable[[Exception], ProviderError] | None = None,
    on_results: Callable[[Mapping[str, BatchResult]], None] | None = None,
    on_progress: Callable[[Sequence[BatchProgress]], None] | None = None,
) -> dict[str, BatchResult]:
    """Submit (or resume) ``items`` in provider-sized chunks; return the results by ``custom_id``.

    ``key`` names a chunk's state file from its items (see :func:`batch_key`). A chunk whose
    submission, polling or download raises gets ``on_error(exception)`` (default: a
    :class:`~povidgen.ProviderError` naming it) for each of its rows; when that is a
    :class:`~povidgen.RunStoppedError`, the chunks not yet submitted are not submitted. A chunk
    that could not be polled or downloaded keeps its state file, so a rerun resumes it.
    ``on_results`` sees each chunk's results as soon as they are joined (before its state
    file is removed), so a caller can keep them even if a later chunk never finishes.
    ``on_progress`` is called after every round of polls with the latest
    :class:`BatchProgress` of each chunk of the current round, in chunk order.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    describe = on_error or _default_error
    state_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, BatchResult] = {}
    pending = list(items)
    for round_number in range(retries + 1):
        chunks, oversized = split_chunks(pending, backend)
        results.update(oversized)
        if not chunks:
            break
        round_results = await _run_round(
            backend,
            [
                _Chunk(chunk, state_dir / f"{backend.provider}-{key(chunk)}.json")
                for chunk in chunks
            ],
            poll_interval=poll_interval,
            describe=describe,
            on_results=on_results,
            on_progress=on_progress,
        )
        results.update(round_results)
        if any(isinstance(found, RunStoppedError) for found in round_results.values()):
            break  # the run was stopped (a fatal error): nothing more is submitted
        retry = [
            item
            for chunk in chunks
            for item in chunk
            if isinstance(found := round_results.get(item.custom_id), ProviderError)
            and is_retryable(found)
        ]
        if not retry or round_number == retries:
            break
        logger.info(
            "submitting %d expired or failed %s batch requests again (retry %d of %d)",
            len(retry),
            backend.provider,
            round_number + 1,
            retries,
        )
        pending = retry
    return results


async def _run_round(
    backend: BatchBackend,
    chunks: list[_Chunk],
    *,
    poll_interval: float,
    describe: Callable[[Exception], ProviderError],
    on_results: Callable[[Mapping[str, BatchResult]], None] | None,
    on_progress: Callable[[Sequence[BatchProgress]], None] | None,
) -> dict[str, BatchResult]:
    """Submit or resume every chunk, then poll them all and join each as it finishes."""
    results: dict[str, BatchResult] = {}

    def fail(chunk: _Chunk, error: ProviderError) -> None:
        for item in chunk.items:
            results[item.custom_id] = error

    stopped: ProviderError | None = None
    running: list[_Chunk] = []
    for chunk in chunks:
        if stopped is not None:
            fail(chunk, type(stopped)(f"not attempted: {stopped}"))
            continue
        try:
            await _submit_or_resume(backend, chunk)
        except Exception as error:  # noqa: BLE001 - a failed chunk fails each of its rows
            failure = describe(error)
            fail(chunk, failure)
            if isinstance(failure, RunStoppedError):
                stopped = failure
            continue
        assert chunk.batch_id is not None
        chunk.progress = BatchProgress(chunk.batch_id, "submitted", False, len(chunk.items))
        running.append(chunk)

    submitted = list(running)
    numbers = {id(chunk): number for number, chunk in enumerate(submitted, start=1)}
    total_chunks = len(running)
    total_requests = sum(len(chunk.items) for chunk in running)
    done_chunks = done_requests = 0
    last_report = time.monotonic()
    while running:
        still: list[_Chunk] = []
        for chunk in running:
            assert chunk.batch_id is not None
            finished = False
            try:
                chunk.progress = await backend.poll(chunk.batch_id)
                _log_progress(backend.provider, chunk, numbers[id(chunk)], total_chunks)
                finished = chunk.progress.finished
                if not finished:
                    chunk.poll_failures = 0
                    still.append(chunk)
                    continue
                found = await backend.results(chunk.batch_id)
            except ProviderError as error:
                if finished:  # the batch is over, with nothing to join: resuming it won't help
                    chunk.state_path.unlink(missing_ok=True)
                fail(chunk, describe(error))
            except Exception as error:  # noqa: BLE001 - its state is kept: a rerun resumes it
                # a poll or download that raised (a dropped connection, a 5xx) is tried again
                # at the next poll, a few times in a row at most; a fatal error is not
                failure = describe(error)
                chunk.poll_failures += 1
                if (
                    not isinstance(failure, RunStoppedError)
                    and chunk.poll_failures < _POLL_FAILURES
                ):
                    logger.warning(
                        "polling %s batch %s failed (%d of %d in a row), trying again: %s",
                        backend.provider,
                        chunk.batch_id,
                        chunk.poll_failures,
                        _POLL_FAILURES,
                        failure,
                    )
                    still.append(chunk)
                    continue
                fail(chunk, failure)
            else:
                joined = {item.custom_id: _joined(found, item) for item in chunk.items}
                if on_results is not None:
                    on_results(joined)
                results.update(joined)
                chunk.state_path.unlink(missing_ok=True)
            done_chunks += 1
            done_requests += len(chunk.items)
            last_report = time.monotonic()
            logger.info(
                "%s batch %s finished: %d of %d chunks, %d of %d requests done",
                backend.provider,
                chunk.batch_id,
                done_chunks,
                total_chunks,
                done_requests,
                total_requests,
            )
        if on_progress is not None and submitted:
            on_progress([chunk.progress for chunk in submitted if chunk.progress is not None])
        running = still
        if running:
            if time.monotonic() - last_report >= _PROGRESS_EVERY:
                last_report = time.monotonic()
                logger.info(
                    "polling %d %s batches: %d of %d chunks, %d of %d requests done",
                    len(running),
                    backend.provider,
                    done_chunks,
                    total_chunks,
                    done_requests,
                    total_requests,
                )
            await asyncio.sleep(poll_interval)
    return results


def _log_progress(provider: str, chunk: _Chunk, number: int, chunks: int) -> None:
    """Log a chunk's progress at INFO when it changed since its last line, or a minute on."""
    progress = chunk.progress
    assert progress is not None
    now = time.monotonic()
    if progress == chunk.logged and now - chunk.logged_at < _PROGRESS_EVERY:
        return
    chunk.logged, chunk.logged_at = progress, now
    logger.info(
        "%s batch %s (chunk %d of %d): %s",
        provider,
        progress.batch_id,
        number,
        chunks,
        progress.describe(),
    )


async def _submit_or_resume(backend: BatchBackend, chunk: _Chunk) -> None:
    if chunk.state_path.exists():
        state = json.loads(chunk.state_path.read_text(encoding="utf-8"))
        chunk.batch_id = str(state["batch_id"])
        logger.info(
            "resuming %s batch %s (state %s)", backend.provider, chunk.batch_id, chunk.state_path
        )
        return
    chunk.batch_id = await backend.submit(chunk.items)
    _write_atomically(
        chunk.state_path,
        {"batch_id": chunk.batch_id, "provider": backend.provider, "requests": len(chunk.items)},
    )
    logger.info(
        "submitted %s batch %s with %d requests",
        backend.provider,
        chunk.batch_id,
        len(chunk.items),
    )


def _joined(found: Mapping[str, BatchResult], item: BatchItem) -> BatchResult:
    reply = found.get(item.custom_id)
    if reply is None:
        return ProviderError("the batch returned no result for this request")
    return reply


def _default_error(error: Exception) -> ProviderError:
    if isinstance(error, ProviderError):
        return error
    return ProviderError(f"batch failed: {type(error).__name__}: {error}")


def _write_atomically(path: Path, payload: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(payload, stream)
    os.replace(temporary, path)


class BatchExecutor:
    """Runs a hallucinator's examples through its provider's batch API (``mode="batch"``).

    For each example: the first attempt's request (the live path's, as the provider's batch
    body), answered from the reply cache when it was paid for before; the rest are submitted
    with :func:`run_batches` after the batch's whole estimated cost is reserved (a batch that
    would pass ``max_cost_usd`` is not submitted: the run stops); each reply is costed at the
    batch price, kept in the cache as its chunk is joined, and verified exactly as a live reply
    (one attempt: a failed verification is the row's error). A fatal error stops the
    hallucinator like a live one.
    """

    def __init__(self, hallucinator: LLMHallucinator) -> None:
        self.hallucinator = hallucinator

    async def run(self, examples: Sequence[Example]) -> list[HallucinationResult]:
        """One result per example, in order."""
        owner = self.hallucinator
        if owner.stopped is not None:
            stopped = type(owner.stopped)(f"not attempted: {owner.stopped}")
            return [stopped for _ in examples]
        items = []
        keys: dict[str, str] = {}
        cached: dict[str, ChatReply] = {}
        cache = owner.reply_cache
        for example in examples:
            system, user = build_messages(example, owner.prompt)
            request = owner.request_for(system, user, example)
            custom_id = custom_id_for(example.id)
            if cache is not None:
                keys[custom_id] = owner._cache_key(system, user, request.image_url, example.seed)
                if (hit := cache.get(keys[custom_id])) is not None:
                    cached[custom_id] = _typed(hit)  # paid for by an earlier run: not submitted
                    continue
            body = owner._batch_request(system, user, request.image_url)
            items.append(BatchItem(custom_id, example, body))
        if not items:
            return [
                self._verified(example, cached[custom_id_for(example.id)], paid=True)
                for example in examples
            ]
        estimate = sum(
            owner._cost_of(
                Usage(
                    input_tokens=owner._batch_input_tokens(item.request),
                    output_tokens=owner.max_output_tokens,
                ),
                batch=True,
            )
            for item in items
        )
        if not owner.cost.reserve(estimate):
            stopped = owner._stop(
                BudgetExceededError(
                    f"max_cost_usd={owner.cost.max_cost_usd} would be passed by a batch of "
                    f"{len(items)} requests (estimated ${estimate:.4f}); it was not submitted"
                )
            )
            return [stopped for _ in examples]
        fingerprint = prompt_fingerprint(owner.prompt)

        def failed(error: Exception) -> ProviderError:
            if isinstance(error, ProviderError):
                return error
            if is_fatal(error):
                return owner._stop(ProviderFatalError(describe_error(owner.provider, error)))
            return ProviderError(f"batch failed: {describe_error(owner.provider, error)}")

        def keep(joined: Mapping[str, BatchResult]) -> None:
            # into the reply cache as each chunk is joined: a crash later loses none of them
            if cache is None:
                return
            for custom_id, reply in joined.items():
                if not isinstance(reply, ProviderError):
                    typed = _typed(reply)
                    cache.put(keys[custom_id], _packed(typed), typed.usage)

        try:
            replies = await run_batches(
                owner._batch_backend(),
                items,
                state_dir=owner.batch_dir,
                key=lambda chunk: batch_key(owner.provider, owner.model, fingerprint, chunk),
                poll_interval=owner.poll_interval,
                retries=owner.batch_retries,
                on_error=failed,
                on_results=keep,
                on_progress=owner.on_batch_progress,
            )
        except Exception as error:  # noqa: BLE001 - a failed batch fails each of its rows
            failure = failed(error)
            return [failure for _ in examples]
        finally:
            owner.cost.release(estimate)
        results: list[HallucinationResult] = []
        for example in examples:
            custom_id = custom_id_for(example.id)
            if custom_id in cached:
                results.append(self._verified(example, cached[custom_id], paid=True))
                continue
            reply = replies.get(custom_id)
            if reply is None:
                results.append(ProviderError("the batch returned no result for this request"))
            elif isinstance(reply, ProviderError):
                results.append(reply)
            else:
                results.append(self._verified(example, _typed(reply), paid=False))
        return results

    def _verified(self, example: Example, reply: ChatReply, *, paid: bool) -> HallucinationResult:
        """Verify one batch reply; ``paid``: it came from the cache (nothing to count)."""
        owner = self.hallucinator
        if not paid:
            owner._add_usage(reply.usage, batch=True)
        reason = outcome_reason(reply, owner.max_output_tokens)
        if reason is not None:
            return VerificationError(reason)
        try:
            return verify(example, reply, owner.prompt)
        except VerificationError as error:
            return error


def _typed(reply: tuple[str, Usage] | ChatReply) -> ChatReply:
    """A batch result or cache entry as a typed reply."""
    if isinstance(reply, ChatReply):
        return reply
    text, usage = reply
    return _unpacked(text, usage, RewriteReply)
