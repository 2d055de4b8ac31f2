"""A fake OpenAI + Anthropic HTTP server for tests: real SDKs, real sockets, scripted faults.

:class:`FakeLLMServer` runs an aiohttp app on ``127.0.0.1`` (a free port, never any other
interface) in a background thread with its own event loop, and answers the endpoints the
``openai`` and ``anthropic`` SDKs call for structured generation and batches::

    with FakeLLMServer() as server:
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.openai_base_url)
        client = anthropic.AsyncAnthropic(api_key="sk-ant", base_url=server.anthropic_base_url)

Replies. The client puts the correct answer in its user message between a line ``<answer>`` and
a line ``</answer>``. The default :attr:`FakeLLMServer.responder` corrupts it with
:class:`povidgen.RuleHallucinator` and answers the JSON ``{"rejected": ..., "edits": [{"kind",
"original", "injected"}, ...]}`` as the message text (OpenAI: ``choices[0].message.content``;
Anthropic: one ``text`` content block), which is what ``chat.completions.parse(
response_format=Model)`` and ``messages.parse(output_format=Model)`` parse. A request without
the markers gets a 400 ``invalid_request_error`` from the default responder.

Usage is deterministic: prompt tokens are the whitespace-separated words of every text part of
the request (all messages, and Anthropic's ``system``; images count 0), completion tokens the
words of the reply text (at least 1). See :func:`count_tokens` and :func:`prompt_tokens`.

Faults (one per *generation* request, i.e. ``POST /v1/chat/completions`` and
``POST /v1/messages``; batch items use :attr:`FakeLLMServer.batch_item_faults` instead), with
the exception each SDK raises (``max_retries=0``):

* ``"429"``: 429 with ``retry-after`` (:attr:`FakeLLMServer.retry_after`); OpenAI body code
  ``rate_limit_exceeded``, Anthropic type ``rate_limit_error``. ``openai.RateLimitError`` /
  ``anthropic.RateLimitError``.
* ``"quota"``: OpenAI 429 with code and type ``insufficient_quota`` (``openai.RateLimitError``
  whose ``.code == "insufficient_quota"``; the SDK *retries* it like any 429). Anthropic 402
  ``billing_error`` (``anthropic.PaymentRequiredError``, ``.type == "billing_error"``, not
  retried). (The live Anthropic API is also known to answer an empty credit balance with a 400
  ``invalid_request_error`` whose message says "credit balance is too low".)
* ``"401"``: ``openai.AuthenticationError`` (code ``invalid_api_key``) /
  ``anthropic.AuthenticationError`` (type ``authentication_error``).
* ``"500"``: ``openai.InternalServerError`` / ``anthropic.InternalServerError``.
* ``"529"``: OpenAI 503 (``openai.InternalServerError``); Anthropic 529 ``overloaded_error``
  (``anthropic.OverloadedError``, a subclass of ``anthropic.InternalServerError``).
* ``"slow"``: answers normally after :attr:`FakeLLMServer.slow_seconds`; a client whose timeout
  is shorter raises ``openai.APITimeoutError`` / ``anthropic.APITimeoutError``.
* ``"drop"``: the TCP connection is closed without a response: ``openai.APIConnectionError`` /
  ``anthropic.APIConnectionError`` (not the timeout subclass).
* ``"malformed"``: 200 whose text is truncated JSON; ``parse()`` raises
  ``pydantic.ValidationError`` in both SDKs.
* ``"refusal"``: 200 whose text is ``{"rejected": REFUSAL_TEXT, "edits": []}`` (valid JSON).
* ``"identical"``: 200 whose ``rejected`` is the answer itself, with no edits.
* ``"echo_key"``: 400 whose error message repeats the request's API key (as some proxies and
  misconfigured servers do): ``openai.BadRequestError`` / ``anthropic.BadRequestError``.

Recording: :attr:`FakeLLMServer.requests` keeps every request with ``authorization`` and
``x-api-key`` redacted; the keys go to :attr:`FakeLLMServer.seen_api_keys`. (``anthropic`` 2.x
sends ``api_key`` as ``Authorization: Bearer``, not as ``x-api-key``.)

Both SDKs retry 408/409/429/5xx and connection errors themselves (``max_retries``, default 2),
honouring ``retry-after``; pass ``max_retries=0`` to see each fault as an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import json
import math
import random
import re
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, get_args

import pytest
from aiohttp import web
from PIL import Image

from povidgen import Example, HallucinationError, RuleHallucinator

__all__ = [
    "DEFAULT_RANDOM_FAULTS",
    "FAULT_KINDS",
    "REFUSAL_TEXT",
    "FakeClientError",
    "FakeLLMServer",
    "FaultKind",
    "FaultPlan",
    "Provider",
    "RecordedRequest",
    "Responder",
    "StoredFile",
    "count_tokens",
    "default_responder",
    "extract_answer",
    "extract_question",
    "fake_llm_server",
    "prompt_tokens",
]

Provider: TypeAlias = Literal["openai", "anthropic", "unknown"]
FaultKind: TypeAlias = Literal[
    "429",
    "quota",
    "401",
    "500",
    "529",
    "slow",
    "drop",
    "malformed",
    "refusal",
    "identical",
    "echo_key",
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
DEFAULT_RANDOM_FAULTS: tuple[FaultKind, ...] = ("429", "500", "529", "drop")
"""The kinds :meth:`FakeLLMServer.fail_randomly` draws by default: transient ones only."""

FaultPlan: TypeAlias = (
    Sequence[FaultKind | None] | Callable[[str, int, dict[str, Any]], FaultKind | None] | None
)
"""A list consumed one entry per generation request, or ``(provider, index, body) -> fault``."""

ResponderResult: TypeAlias = dict[str, Any] | str
Responder: TypeAlias = Callable[[str, dict[str, Any]], ResponderResult | Awaitable[ResponderResult]]
"""``(provider, request_body) -> reply JSON (dict) or raw message text``, sync or async."""

REFUSAL_TEXT = "I'm sorry, but I can't help with that."
MALFORMED_TEXT = '{"rejected": "The answer was cut off here'
_REDACTED_HEADERS = frozenset({"authorization", "x-api-key"})
_ANSWER_BLOCK = re.compile(r"<answer>[ \t]*\r?\n(.*?)\r?\n[ \t]*</answer>", re.DOTALL)
_ANSWER_INLINE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_QUESTION_BLOCK = re.compile(r"(?:\A|\n)Question:[ \t]*\r?\n(.*?)\r?\n[ \t]*\r?\n", re.DOTALL)
_TINY_IMAGE = Image.new("RGB", (2, 2), (127, 127, 127))


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """The fake's token count of ``text``: its number of whitespace-separated words."""
    return len(text.split())


def _texts(content: Any) -> Iterator[str]:
    """The text parts of a message ``content`` (a string or a list of typed parts/blocks)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's prompt token count for a generation request body (either provider).

    Words of every text part of every message plus Anthropic's top-level ``system``; image
    parts count nothing.
    """
    total = sum(count_tokens(text) for text in _texts(body.get("system")))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += sum(count_tokens(text) for text in _texts(message.get("content")))
    return total


def extract_answer(body: dict[str, Any]) -> str | None:
    """The correct answer a request carries between ``<answer>`` and ``</answer>``, or ``None``.

    User messages are searched last to first, then every other message and ``system``. The
    preferred form is a line ``<answer>``, the text, a line ``</answer>`` (the newlines next to
    the markers are not part of the answer); an inline ``<answer>text</answer>`` is stripped.
    """
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    user = [m for m in messages if m.get("role") == "user"]
    others = [m for m in messages if m.get("role") != "user"]
    texts = [t for m in reversed(user) for t in _texts(m.get("content"))]
    texts += [t for m in others for t in _texts(m.get("content"))]
    texts += list(_texts(body.get("system")))
    for text in texts:
        match = _ANSWER_BLOCK.search(text)
        if match:
            return match.group(1)
        match = _ANSWER_INLINE.search(text)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return None


def extract_question(body: dict[str, Any]) -> str | None:
    """The question of the built-in prompt (the lines after ``Question:``), or ``None``."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for message in messages:
        if message.get("role") != "user":
            continue
        for text in _texts(message.get("content")):
            match = _QUESTION_BLOCK.search(text)
            if match and match.group(1).strip():
                return match.group(1).strip()
    return None


@functools.cache
def _rule_hallucinator() -> RuleHallucinator:
    return RuleHallucinator()


class FakeClientError(Exception):
    """Raise it from a responder to answer a provider-shaped ``invalid_request_error`` (status
    400 unless given) with ``message``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def default_responder(provider: str, body: dict[str, Any]) -> dict[str, Any]:
    """Corrupt the request's answer with :class:`povidgen.RuleHallucinator`.

    Returns ``{"rejected": ..., "edits": [{"kind", "original", "injected"}, ...]}``. The example
    id is a hash of the answer, so the same answer always gets the same corruption; the prompt is
    the request's question (:func:`extract_question`), so the reply answers it like a careful
    model would, or "Describe the image." when there is none.
    """
    answer = extract_answer(body)
    if answer is None or not answer.strip():
        raise FakeClientError(
            "fake LLM server: the user message has no non-empty <answer>...</answer> block"
        )
    example_id = hashlib.sha256(answer.encode("utf-8")).hexdigest()[:16]
    question = extract_question(body) or "Describe the image."
    example = Example(id=example_id, image=_TINY_IMAGE, prompt=question, answer=answer)
    try:
        hallucination = await _rule_hallucinator().ahallucinate(example)
    except HallucinationError:
        injected = "There is also a unicorn in the image."
        return {
            "rejected": f"{answer} {injected}",
            "edits": [{"kind": "object", "original": "", "injected": injected}],
        }
    return {
        "rejected": hallucination.rejected,
        "edits": [
            {"kind": str(edit.kind), "original": edit.original, "injected": edit.injected}
            for edit in hallucination.edits
        ],
    }


@dataclass
class RecordedRequest:
    """One request the server received.

    ``headers`` have lower-case names, with ``authorization``/``x-api-key`` values replaced by
    ``"<redacted>"`` (the keys themselves land in :attr:`FakeLLMServer.seen_api_keys`). ``body``
    is the parsed JSON (for the multipart file upload: ``{"purpose", "filename", "bytes"}``).
    ``index`` is the generation-request index (``None`` for other endpoints); ``fault`` the
    fault applied (``"rpm"`` when the rate limiter answered); ``status`` the HTTP status sent
    (``None`` when the connection was dropped or the client went away first).
    """

    provider: Provider
    path: str
    method: str
    timestamp: float
    body: Any
    headers: dict[str, str]
    index: int | None = None
    fault: str | None = None
    status: int | None = None


@dataclass
class StoredFile:
    """A file held by the fake OpenAI Files API (uploads and batch output/error files)."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """The OpenAI ``FileObject`` JSON."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
    provider: Provider
    id: str
    created_at: int
    requests: list[dict[str, Any]]
    polls: int = 0
    status: str = "validating"
    cancel_requested: bool = False
    cancel_at: int | None = None
    ended_at: int | None = None
    input_file_id: str = ""
    endpoint: str = ""
    completion_window: str = "24h"
    metadata: Any = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)


class _ReplyError(Exception):
    """Internal: answer this provider-shaped error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


_RECORD_KEY = web.RequestKey("record", RecordedRequest)
_BODY_KEY: web.RequestKey[Any] = web.RequestKey("body")
_UPLOAD_KEY: web.RequestKey[tuple[str, str, bytes]] = web.RequestKey("upload")


def _iso(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _seconds_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeLLMServer:
    """A fake OpenAI + Anthropic API on ``127.0.0.1``, run in a background thread.

    Use it as a context manager (``with FakeLLMServer() as server:``), through the
    :func:`fake_llm_server` fixture, or with :meth:`start`/:meth:`stop`. Every attribute below
    may be changed while it runs.

    Attributes:
        base_url: ``http://127.0.0.1:PORT``.
        openai_base_url: ``base_url + "/v1"`` (what ``openai.AsyncOpenAI(base_url=...)`` wants).
        anthropic_base_url: ``base_url`` (the Anthropic SDK appends ``/v1/messages`` itself).
        responder: makes the reply of a normal generation request (see :data:`Responder`).
        faults: the fault plan (see :data:`FaultPlan`); assigning a list restarts it.
        batch_item_faults: ``custom_id -> fault`` for batch items: HTTP-error kinds give an
            errored item, ``slow``/``drop`` an expired one, text kinds a succeeded one.
        retry_after: seconds in the ``retry-after`` header of the ``"429"`` fault.
        slow_seconds: how long the ``"slow"`` fault waits before answering.
        latency: seconds added before every generation reply.
        rate_limit_rpm: when set, each provider accepts this many generation requests per
            :attr:`rate_limit_window` seconds (sliding window); the rest get a 429 whose
            ``retry-after`` is the whole seconds until the oldest accepted request leaves it.
        rate_limit_window: the sliding window of :attr:`rate_limit_rpm`, 60 s by default.
        batch_polls_until_done: a batch is finished on this many ``GET`` polls of it.
        requests: every request received, in arrival order (:class:`RecordedRequest`).
        seen_api_keys: every API key presented (``x-api-key`` or ``Authorization: Bearer``).
        batches_created: ``{"openai": n, "anthropic": n}``.
        files: the OpenAI files, by id (:class:`StoredFile`).
    """

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        faults: FaultPlan = None,
        retry_after: float = 1,
        slow_seconds: float = 5.0,
        latency: float = 0.0,
        rate_limit_rpm: int | None = None,
        rate_limit_window: float = 60.0,
        batch_polls_until_done: int = 2,
    ) -> None:
        self._lock = threading.Lock()
        self.responder: Responder = responder or default_responder
        self._faults: FaultPlan = None
        self._fault_cursor = 0
        self.faults = faults
        self.batch_item_faults: dict[str, FaultKind] = {}
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.latency = latency
        self.rate_limit_rpm = rate_limit_rpm
        self.rate_limit_window = rate_limit_window
        self.batch_polls_until_done = batch_polls_until_done

        self.requests: list[RecordedRequest] = []
        self.seen_api_keys: set[str] = set()
        self.batches_created: dict[str, int] = {"openai": 0, "anthropic": 0}
        self.files: dict[str, StoredFile] = {}

        self._batches: dict[str, _Batch] = {}
        self._generation_index = 0
        self._id_counter = 0
        self._accepted: dict[str, deque[float]] = {"openai": deque(), "anthropic": deque()}

        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._listener: socket.socket | None = None

    # ---- configuration --------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        """The fault plan. A list is consumed from its start, one entry per generation request
        (``None`` = answer normally; past its end, every request is normal); a callable gets
        ``(provider, request_index, body)`` where ``request_index`` counts generation requests
        of both providers from 0 since the server started. Each generation request consumes its
        entry first; then :attr:`latency` is waited, then the rate limiter may answer 429 (the
        entry is then lost; the record's ``fault`` reads ``"rpm"``), then the fault applies."""
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        if plan is not None and not callable(plan):
            for kind in plan:
                _check_kind(kind)
        with self._lock:
            self._faults = plan
            self._fault_cursor = 0

    def fail_randomly(
        self, rate: float, seed: int = 0, kinds: Sequence[FaultKind] = DEFAULT_RANDOM_FAULTS
    ) -> None:
        """Fault each generation request with probability ``rate``, with a kind drawn uniformly
        from ``kinds``. The fault of generation request number ``i`` depends only on ``(seed,
        i)`` (which request is number ``i`` depends on arrival order when they run
        concurrently). Replaces :attr:`faults`."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        if not kinds:
            raise ValueError("kinds must not be empty")
        for kind in kinds:
            _check_kind(kind)
        chosen = tuple(kinds)

        def plan(provider: str, index: int, body: dict[str, Any]) -> FaultKind | None:
            rng = random.Random(f"povidgen-fake:{seed}:{index}")
            if rng.random() >= rate:
                return None
            return rng.choice(chosen)

        self.faults = plan

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (only once started)."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK's ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic SDK's ``base_url``: ``http://127.0.0.1:PORT``."""
        return self.base_url

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._listener = sock
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_site(sock))
            except BaseException as error:  # noqa: BLE001 - reported to the starting thread
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                _drain_and_close(loop)

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="fake-llm-server", daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        if failure or not ready.is_set():
            self._thread.join(timeout=5)
            self._thread = None
            self._port = None
            sock.close()
            cause = failure[0] if failure else None
            raise RuntimeError("FakeLLMServer failed to start") from cause
        return self

    def stop(self) -> None:
        """Stop serving (waking any ``slow`` reply) and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread = None
            self._loop = None
            self._port = None
            self._listener = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not running"
        return f"FakeLLMServer({where}, {len(self.requests)} requests)"

    async def _start_site(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._record_middleware], client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/files", self._openai_upload)
        app.router.add_get("/v1/files/{file_id}", self._openai_file)
        app.router.add_get("/v1/files/{file_id}/content", self._openai_file_content)
        app.router.add_post("/v1/batches", self._openai_create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self._openai_get_batch)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._openai_cancel_batch)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/v1/messages/batches", self._anthropic_create_batch)
        app.router.add_get("/v1/messages/batches/{batch_id}", self._anthropic_get_batch)
        app.router.add_get("/v1/messages/batches/{batch_id}/results", self._anthropic_results)
        app.router.add_post("/v1/messages/batches/{batch_id}/cancel", self._anthropic_cancel)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Stop accepting first, and let connections accepted a moment ago get their transports
        # while the listener is still open: on Python 3.11 a transport made after it closes
        # fails inside asyncio and leaks its socket (a ResourceWarning in some later test).
        listener = self._listener
        if listener is not None and listener.fileno() != -1:
            asyncio.get_running_loop().remove_reader(listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0.005)
        await runner.cleanup()

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, waking early when the server stops."""
        if seconds <= 0:
            return
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # ---- recording --------------------------------------------------------------------------

    def generation_requests(self, provider: str | None = None) -> list[RecordedRequest]:
        """The recorded generation requests (chat completions / messages), optionally of one
        provider."""
        return [
            r
            for r in list(self.requests)
            if r.index is not None and (provider is None or r.provider == provider)
        ]

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        provider: Provider = (
            "anthropic"
            if path.startswith("/v1/messages")
            else "openai"
            if path.startswith("/v1/")
            else "unknown"
        )
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            lower = name.lower()
            if lower == "x-api-key":
                self.seen_api_keys.add(value)
            elif lower == "authorization" and value.lower().startswith("bearer "):
                self.seen_api_keys.add(value[7:].strip())
            headers[lower] = "<redacted>" if lower in _REDACTED_HEADERS else value
        body: Any = None
        if request.content_type == "multipart/form-data":
            with warnings.catch_warnings():
                # aiohttp's own multipart parser calls its deprecated unread_data() when a
                # part ends inside a network chunk; under the test suite's warnings-as-errors
                # that became a 500 for the upload, depending on how the bytes arrived
                warnings.filterwarnings(
                    "ignore", message=r"unread_data\(\) is deprecated", category=DeprecationWarning
                )
                form = await request.post()
            upload = form.get("file")
            content = upload.file.read() if isinstance(upload, web.FileField) else b""
            filename = upload.filename if isinstance(upload, web.FileField) else "upload"
            body = {"purpose": form.get("purpose"), "filename": filename, "bytes": len(content)}
            request[_UPLOAD_KEY] = (filename, str(form.get("purpose") or ""), content)
        elif request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        record = RecordedRequest(
            provider=provider,
            path=path,
            method=request.method,
            timestamp=time.monotonic(),
            body=body,
            headers=headers,
        )
        self.requests.append(record)
        request[_RECORD_KEY] = record
        request[_BODY_KEY] = body
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = self._error(provider, 404, "not_found", f"no route for {path}")
        except web.HTTPMethodNotAllowed:
            response = self._error(provider, 405, "invalid_request", f"bad method for {path}")
        except _ReplyError as reply:
            response = reply.response
        if record.fault != "drop":
            record.status = response.status
        return response

    # ---- ids, errors, faults --------------------------------------------------------------

    def _next_id(self) -> int:
        with self._lock:
            self._id_counter += 1
            return self._id_counter

    def _error(
        self,
        provider: str,
        status: int,
        kind: str,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """A provider-shaped error. ``kind`` is a short name mapped to each provider's types."""
        request_id = f"req_fake{self._next_id():06d}"
        if provider == "anthropic":
            anthropic_types = {
                "rate_limit": "rate_limit_error",
                "quota": "billing_error",
                "auth": "authentication_error",
                "server": "api_error",
                "overloaded": "overloaded_error",
                "not_found": "not_found_error",
                "invalid_request": "invalid_request_error",
            }
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": anthropic_types.get(kind, kind), "message": message},
                "request_id": request_id,
            }
            id_header = "request-id"
        else:
            openai_types = {
                "rate_limit": ("requests", "rate_limit_exceeded"),
                "quota": ("insufficient_quota", "insufficient_quota"),
                "auth": ("invalid_request_error", "invalid_api_key"),
                "server": ("server_error", None),
                "overloaded": ("server_error", None),
                "not_found": ("invalid_request_error", None),
                "invalid_request": ("invalid_request_error", None),
            }
            error_type, default_code = openai_types.get(kind, (kind, None))
            payload = {
                "error": {
                    "message": message,
                    "type": error_type,
                    "param": None,
                    "code": code or default_code,
                }
            }
            id_header = "x-request-id"
        return web.json_response(
            payload, status=status, headers={id_header: request_id, **(headers or {})}
        )

    def _fault_response(self, provider: str, fault: str) -> web.Response:
        """The error response of an HTTP-error fault kind."""
        if fault == "429":
            return self._error(
                provider,
                429,
                "rate_limit",
                "Rate limit reached for requests (fake). Please try again later.",
                headers={"retry-after": _seconds_header(self.retry_after)},
            )
        if fault == "quota":
            if provider == "anthropic":
                return self._error(
                    provider,
                    402,
                    "quota",
                    "Your credit balance is too low to access the Anthropic API (fake).",
                )
            return self._error(
                provider,
                429,
                "quota",
                "You exceeded your current quota, please check your plan and billing details.",
            )
        if fault == "401":
            return self._error(provider, 401, "auth", "Incorrect API key provided (fake).")
        if fault == "500":
            return self._error(provider, 500, "server", "The server had an error (fake).")
        if fault == "529":
            status = 529 if provider == "anthropic" else 503
            return self._error(provider, status, "overloaded", "Overloaded (fake).")
        raise AssertionError(f"not an HTTP-error fault: {fault}")

    def _pick_fault(self, provider: str, index: int, body: dict[str, Any]) -> str | None:
        with self._lock:
            plan = self._faults
            if plan is None:
                return None
            if not callable(plan):
                cursor = self._fault_cursor
                self._fault_cursor += 1
                return plan[cursor] if cursor < len(plan) else None
        kind = plan(provider, index, body)
        if kind is not None:
            _check_kind(kind)
        return kind

    def _rate_limited(self, provider: str) -> web.Response | None:
        """A 429 when ``provider``'s sliding window is full; otherwise records the request."""
        rpm = self.rate_limit_rpm
        if rpm is None:
            return None
        now = time.monotonic()
        window = self.rate_limit_window
        accepted = self._accepted.setdefault(provider, deque())
        while accepted and accepted[0] <= now - window:
            accepted.popleft()
        if len(accepted) < rpm:
            accepted.append(now)
            return None
        wait = max(1, math.ceil(accepted[0] + window - now))
        if provider == "anthropic":
            limit_headers = {
                "anthropic-ratelimit-requests-limit": str(rpm),
                "anthropic-ratelimit-requests-remaining": "0",
            }
        else:
            limit_headers = {
                "x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{wait}s",
            }
        return self._error(
            provider,
            429,
            "rate_limit",
            f"Rate limit reached: {rpm} requests per {window:g} s (fake).",
            headers={"retry-after": str(wait), **limit_headers},
        )

    # ---- generation -------------------------------------------------------------------------

    async def _reply_text(self, provider: str, body: dict[str, Any], fault: str | None) -> str:
        """The message text for a successful reply (raises :class:`_ReplyError` on 400)."""
        if fault == "malformed":
            return MALFORMED_TEXT
        if fault == "refusal":
            return json.dumps({"rejected": REFUSAL_TEXT, "edits": []})
        try:
            if fault == "identical":
                answer = extract_answer(body)
                if answer is None:
                    raise FakeClientError("fake LLM server: no <answer>...</answer> block")
                return json.dumps({"rejected": answer, "edits": []})
            reply = self.responder(provider, body)
            if inspect.isawaitable(reply):
                reply = await reply
        except FakeClientError as error:
            raise _ReplyError(
                self._error(provider, error.status, "invalid_request", error.message)
            ) from None
        return reply if isinstance(reply, str) else json.dumps(reply)

    def _chat_completion(self, index: int, body: dict[str, Any], text: str) -> dict[str, Any]:
        prompt = prompt_tokens(body)
        completion = max(1, count_tokens(text))
        return {
            "id": f"chatcmpl-fake{index:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or "fake-model"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def _message(self, index: int, body: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            "id": f"msg_fake{index:06d}",
            "type": "message",
            "role": "assistant",
            "model": str(body.get("model") or "fake-model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt_tokens(body),
                "output_tokens": max(1, count_tokens(text)),
            },
        }

    async def _generate(self, request: web.Request, provider: Provider) -> web.StreamResponse:
        record = request[_RECORD_KEY]
        body = request[_BODY_KEY]
        with self._lock:
            index = self._generation_index
            self._generation_index += 1
        record.index = index
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(provider, 400, "invalid_request", "body needs a messages list")
        fault = self._pick_fault(provider, index, body)
        record.fault = fault
        await self._sleep(self.latency)
        limited = self._rate_limited(provider)
        if limited is not None:
            record.fault = "rpm"
            return limited
        if fault in ("429", "quota", "401", "500", "529"):
            return self._fault_response(provider, fault)
        if fault == "echo_key":
            key = request.headers.get("x-api-key") or request.headers.get("authorization") or ""
            key = key.removeprefix("Bearer ")
            message = f"Invalid request for API key {key}: the model is not available (fake)."
            return self._error(provider, 400, "invalid_request", message)
        if fault == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if fault == "slow":
            await self._sleep(self.slow_seconds)
        text = await self._reply_text(provider, body, fault)
        if provider == "anthropic":
            headers = {"request-id": f"req_fake{index:06d}"}
            return web.json_response(self._message(index, body, text), headers=headers)
        headers = {"x-request-id": f"req_fake{index:06d}"}
        return web.json_response(self._chat_completion(index, body, text), headers=headers)

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "openai")

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "anthropic")

    # ---- OpenAI files -----------------------------------------------------------------------

    async def _openai_upload(self, request: web.Request) -> web.StreamResponse:
        upload = request.get(_UPLOAD_KEY)
        if upload is None:
            return self._error("openai", 400, "invalid_request", "expected multipart 'file'")
        filename, purpose, content = upload
        stored = self._store_file(filename, purpose or "batch", content)
        return web.json_response(stored.to_json())

    def _store_file(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(
            id=f"file-fake{self._next_id():06d}",
            filename=filename,
            purpose=purpose,
            content=content,
            created_at=int(time.time()),
        )
        self.files[stored.id] = stored
        return stored

    def _get_file(self, request: web.Request) -> StoredFile:
        file_id = request.match_info["file_id"]
        stored = self.files.get(file_id)
        if stored is None:
            raise _ReplyError(self._error("openai", 404, "not_found", f"No such file: {file_id}"))
        return stored

    async def _openai_file(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._get_file(request).to_json())

    async def _openai_file_content(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self._get_file(request).content, content_type="application/octet-stream"
        )

    # ---- OpenAI batches -----------------------------------------------------------------------

    def _get_batch(self, request: web.Request, provider: Provider) -> _Batch:
        batch_id = request.match_info["batch_id"]
        batch = self._batches.get(batch_id)
        if batch is None or batch.provider != provider:
            raise _ReplyError(self._error(provider, 404, "not_found", f"No batch {batch_id}"))
        return batch

    async def _openai_create_batch(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY_KEY]
        if not isinstance(body, dict):
            return self._error("openai", 400, "invalid_request", "expected a JSON object")
        file_id = str(body.get("input_file_id"))
        stored = self.files.get(file_id)
        if stored is None:
            return self._error("openai", 404, "not_found", f"No such file: {file_id}")
        lines: list[dict[str, Any]] = []
        for number, line in enumerate(stored.content.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                return self._error("openai", 400, "invalid_request", f"line {number}: bad JSON")
            if not isinstance(item, dict) or "custom_id" not in item or "body" not in item:
                return self._error(
                    "openai", 400, "invalid_request", f"line {number}: needs custom_id and body"
                )
            lines.append(item)
        batch = _Batch(
            provider="openai",
            id=f"batch_fake{self._next_id():06d}",
            created_at=int(time.time()),
            requests=lines,
            input_file_id=file_id,
            endpoint=str(body.get("endpoint") or "/v1/chat/completions"),
            completion_window=str(body.get("completion_window") or "24h"),
            metadata=body.get("metadata"),
            counts={"total": len(lines), "completed": 0, "failed": 0},
        )
        self._batches[batch.id] = batch
        self.batches_created["openai"] += 1
        if self.batch_polls_until_done <= 0:
            await self._finish_openai(batch)
        return web.json_response(self._openai_batch_json(batch))

    async def _openai_get_batch(self, request: web.Request) -> web.StreamResponse:
        batch = self._get_batch(request, "openai")
        batch.polls += 1
        if batch.status == "cancelling":
            batch.status = "cancelled"
            batch.ended_at = int(time.time())
        elif batch.status in ("validating", "in_progress"):
            if batch.polls >= self.batch_polls_until_done:
                await self._finish_openai(batch)
            else:
                batch.status = "in_progress"
        return web.json_response(self._openai_batch_json(batch))

    async def _openai_cancel_batch(self, request: web.Request) -> web.StreamResponse:
        batch = self._get_batch(request, "openai")
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelling"
            batch.cancel_at = int(time.time())
        return web.json_response(self._openai_batch_json(batch))

    async def _finish_openai(self, batch: _Batch) -> None:
        """Answer every line, write the output (and error) file, mark the batch completed."""
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        input_tokens = output_tokens = 0
        for item in batch.requests:
            custom_id = str(item["custom_id"])
            line_id = f"batch_req_fake{self._next_id():06d}"
            fault = self.batch_item_faults.get(custom_id)
            if fault in ("slow", "drop"):
                errors.append(
                    {
                        "id": line_id,
                        "custom_id": custom_id,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the "
                            "completion window expired.",
                        },
                    }
                )
                continue
            body = item["body"] if isinstance(item["body"], dict) else {}
            if fault in ("429", "quota", "401", "500", "529"):
                response = self._fault_response("openai", fault)
            else:
                try:
                    text = await self._reply_text("openai", body, fault)
                except _ReplyError as reply:
                    response = reply.response
                else:
                    completion = self._chat_completion(self._next_id(), body, text)
                    input_tokens += completion["usage"]["prompt_tokens"]
                    output_tokens += completion["usage"]["completion_tokens"]
                    outputs.append(
                        {
                            "id": line_id,
                            "custom_id": custom_id,
                            "response": {
                                "status_code": 200,
                                "request_id": f"req_{line_id}",
                                "body": completion,
                            },
                            "error": None,
                        }
                    )
                    continue
            errors.append(
                {
                    "id": line_id,
                    "custom_id": custom_id,
                    "response": {
                        "status_code": response.status,
                        "request_id": f"req_{line_id}",
                        "body": _response_json(response),
                    },
                    "error": None,
                }
            )
        batch.output_file_id = self._store_file(
            f"{batch.id}_output.jsonl", "batch_output", _jsonl(outputs)
        ).id
        if errors:
            batch.error_file_id = self._store_file(
                f"{batch.id}_error.jsonl", "batch_output", _jsonl(errors)
            ).id
        batch.counts = {
            "total": len(batch.requests),
            "completed": len(outputs),
            "failed": len(errors),
        }
        batch.usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        batch.status = "completed"
        batch.ended_at = int(time.time())

    def _openai_batch_json(self, batch: _Batch) -> dict[str, Any]:
        done = batch.status == "completed"
        usage = None
        if done:
            usage = {
                "input_tokens": batch.usage["input_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": batch.usage["output_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": batch.usage["input_tokens"] + batch.usage["output_tokens"],
            }
        started = batch.status != "validating"
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "in_progress_at": batch.created_at if started else None,
            "expires_at": batch.created_at + 86400,
            "finalizing_at": batch.ended_at if done else None,
            "completed_at": batch.ended_at if done else None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": batch.cancel_at,
            "cancelled_at": batch.ended_at if batch.status == "cancelled" else None,
            "request_counts": dict(batch.counts),
            "metadata": batch.metadata,
            "usage": usage,
        }

    # ---- Anthropic message batches ----------------------------------------------------------

    async def _anthropic_create_batch(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY_KEY]
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return self._error("anthropic", 400, "invalid_request", "requests: non-empty list")
        seen: set[str] = set()
        for number, item in enumerate(requests):
            if not isinstance(item, dict) or "custom_id" not in item or "params" not in item:
                return self._error(
                    "anthropic", 400, "invalid_request", f"requests.{number}: custom_id, params"
                )
            if item["custom_id"] in seen:
                return self._error(
                    "anthropic", 400, "invalid_request", f"duplicate custom_id {item['custom_id']}"
                )
            seen.add(item["custom_id"])
        batch = _Batch(
            provider="anthropic",
            id=f"msgbatch_fake{self._next_id():06d}",
            created_at=int(time.time()),
            requests=requests,
            status="in_progress",
        )
        self._batches[batch.id] = batch
        self.batches_created["anthropic"] += 1
        if self.batch_polls_until_done <= 0:
            await self._finish_anthropic(batch)
        return web.json_response(self._anthropic_batch_json(batch))

    async def _anthropic_get_batch(self, request: web.Request) -> web.StreamResponse:
        batch = self._get_batch(request, "anthropic")
        batch.polls += 1
        if batch.status == "canceling":
            await self._finish_anthropic(batch, canceled=True)
        elif batch.status == "in_progress" and batch.polls >= self.batch_polls_until_done:
            await self._finish_anthropic(batch)
        return web.json_response(self._anthropic_batch_json(batch))

    async def _anthropic_cancel(self, request: web.Request) -> web.StreamResponse:
        batch = self._get_batch(request, "anthropic")
        if batch.status == "in_progress":
            batch.status = "canceling"
            batch.cancel_at = int(time.time())
        return web.json_response(self._anthropic_batch_json(batch))

    async def _anthropic_results(self, request: web.Request) -> web.StreamResponse:
        batch = self._get_batch(request, "anthropic")
        if batch.status != "ended":
            return self._error(
                "anthropic", 400, "invalid_request", f"batch {batch.id} has not ended"
            )
        return web.Response(body=_jsonl(batch.results), content_type="application/binary")

    async def _finish_anthropic(self, batch: _Batch, *, canceled: bool = False) -> None:
        """Answer every request (or cancel them all) and mark the batch ended."""
        results: list[dict[str, Any]] = []
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for item in batch.requests:
            custom_id = str(item["custom_id"])
            fault = self.batch_item_faults.get(custom_id)
            result: dict[str, Any]
            if canceled:
                result = {"type": "canceled"}
            elif fault in ("slow", "drop"):
                result = {"type": "expired"}
            elif fault in ("429", "quota", "401", "500", "529"):
                response = self._fault_response("anthropic", fault)
                result = {"type": "errored", "error": _response_json(response)}
            else:
                params = item["params"] if isinstance(item["params"], dict) else {}
                try:
                    text = await self._reply_text("anthropic", params, fault)
                except _ReplyError as reply:
                    result = {"type": "errored", "error": _response_json(reply.response)}
                else:
                    message = self._message(self._next_id(), params, text)
                    result = {"type": "succeeded", "message": message}
            counts[result["type"]] += 1
            results.append({"custom_id": custom_id, "result": result})
        batch.results = results
        batch.counts = counts
        batch.status = "ended"
        batch.ended_at = int(time.time())

    def _anthropic_batch_json(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.status == "ended"
        counts = batch.counts or {
            "processing": len(batch.requests),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": dict(counts),
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + int(timedelta(days=1).total_seconds())),
            "ended_at": _iso(batch.ended_at) if ended else None,
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancel_at),
            "results_url": (
                f"{self.base_url}/v1/messages/batches/{batch.id}/results" if ended else None
            ),
        }


def _drain_and_close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the server's loop, let transports finish closing, close it."""
    for _ in range(5):
        pending = asyncio.all_tasks(loop)
        if not pending:
            break
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    # Closed transports close their sockets in callbacks: give them a few loop iterations.
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _response_json(response: web.Response) -> Any:
    """The JSON body of a response this module built with ``web.json_response``."""
    body = response.body
    if not isinstance(body, bytes):
        raise TypeError(f"expected a bytes body, got {type(body).__name__}")
    return json.loads(body)


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def _check_kind(kind: object) -> None:
    if kind is not None and kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS} or None")


@pytest.fixture
def fake_llm_server() -> Iterator[FakeLLMServer]:
    """A running :class:`FakeLLMServer`, stopped after the test."""
    with FakeLLMServer() as server:
        yield server
