"""The backend protocol: one chat request in, one typed reply out.

A :class:`Backend` is to :class:`~povidgen.LLMHallucinator` what a transport is to an httpx
client: it only sends. One call, :meth:`Backend.send`, takes a :class:`ChatRequest` (system
text, user text, an optional image, the reply's schema, a token limit) and returns a
:class:`ChatReply` (the text, the parsed object or ``None``, the tokens used, why the model
stopped, and a refusal if it refused). Everything else is a *policy* composed around a backend
(:class:`Policy` subclasses in :mod:`povidgen.hallucinate.policies`): retries, rate limits, the
budget, the reply cache, the circuit breaker; verification and re-asking sit above them
(:mod:`povidgen.hallucinate.reask`), and batch mode is its own executor
(:mod:`povidgen.hallucinate.batch`).

A reply's :attr:`ChatReply.outcome` types what happened: ``ok``, ``truncated`` (the token
limit cut it off), ``refused``, ``filtered`` (a content filter stopped it) or ``malformed``
(it does not parse as the schema). Only ``ok`` and ``malformed`` replies go to the verifier; the
others are re-asked with a reason that names the outcome.

Faults: a backend raises what its SDK raises. The retry policy reads an HTTP status from an
exception's ``status_code`` attribute and a wait from ``retry_after`` (seconds) or its
``response.headers`` (``retry-after-ms`` / ``retry-after``); ``TimeoutError`` and
``ConnectionError`` are taken for a dropped connection. A backend of your own can raise
:class:`BackendStatusError` to say the same.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import io
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from pydantic import BaseModel, ValidationError

from povidgen.errors import ProviderError
from povidgen.hallucinate.pricing import ModelPrice, Usage

if TYPE_CHECKING:
    from povidgen.schema import Example

__all__ = [
    "Backend",
    "BackendStatusError",
    "ChatReply",
    "ChatRequest",
    "FinishReason",
    "Policy",
    "ReplyOutcome",
    "data_url",
    "sent_size",
]

FinishReason = Literal["stop", "length", "refusal", "content_filter"]
"""Why the model stopped: it finished, hit the token limit, refused, or a filter stopped it."""


class ReplyOutcome(enum.StrEnum):
    """What a reply is, for the verifier and the re-ask message."""

    OK = "ok"
    """Finished and parsed as the schema."""
    TRUNCATED = "truncated"
    """Cut off at the token limit (``finish_reason == "length"``)."""
    REFUSED = "refused"
    """The model refused (a refusal message, or ``finish_reason == "refusal"``)."""
    FILTERED = "filtered"
    """The provider's content filter stopped it."""
    MALFORMED = "malformed"
    """Finished, but the text does not parse as the schema."""


def sent_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size an image of ``size`` is sent at: scaled down to a longer side of ``max_side``."""
    width, height = size
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def data_url(image: Image.Image, max_side: int) -> str:
    """The image as a JPEG data URL, scaled down so its longer side is at most ``max_side``."""
    picture = image.convert("RGB")
    size = sent_size(picture.size, max_side)
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ChatRequest:
    """One request: a system message, a user message with an optional image, and the schema
    the reply must follow.

    Args:
        system: the system prompt.
        user: the user message's text.
        schema: the pydantic model the reply's JSON must validate as.
        max_tokens: the reply's token limit.
        image: the image sent with the user message, or ``None`` for text only.
        image_max_side: the image is scaled down to this longer side before it is sent.
        seed: the example's seed (for backends that can use one, and the reply cache).
        example: the row the request is for, when there is one (scripted backends may read
            it; a backend must not need it).

    The image is encoded once, on first use of :attr:`image_url` (a JPEG data URL), so the
    cache key and the request body share the work.
    """

    __slots__ = (
        "_image_url",
        "example",
        "image",
        "image_max_side",
        "max_tokens",
        "schema",
        "seed",
        "system",
        "user",
    )

    def __init__(
        self,
        system: str,
        user: str,
        *,
        schema: type[BaseModel],
        max_tokens: int,
        image: Image.Image | None = None,
        image_max_side: int = 1024,
        seed: int = 0,
        example: Example | None = None,
    ) -> None:
        self.system = system
        self.user = user
        self.schema = schema
        self.max_tokens = max_tokens
        self.image = image
        self.image_max_side = image_max_side
        self.seed = seed
        self.example = example
        self._image_url: str | None = None

    @property
    def image_url(self) -> str | None:
        """The image as a ``data:image/jpeg;base64,...`` URL at its sent size, or ``None``."""
        if self.image is None:
            return None
        if self._image_url is None:
            self._image_url = data_url(self.image, self.image_max_side)
        return self._image_url

    async def aencode_image(self) -> None:
        """Encode the image for :attr:`image_url` on a worker thread, if not done yet.

        Scaling and JPEG encoding take milliseconds of CPU a request; Pillow releases the
        interpreter lock while it works, so on a worker thread they do not hold up the event
        loop that keeps the other requests moving (on the loop they would, and the sends
        bunch up behind them).
        """
        if self.image is not None and self._image_url is None:
            self._image_url = await asyncio.to_thread(data_url, self.image, self.image_max_side)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The image's size as sent (after scaling down), or ``None``."""
        if self.image is None:
            return None
        return sent_size(self.image.size, self.image_max_side)

    def __repr__(self) -> str:
        image = "None" if self.image is None else f"<image {self.image.size}>"
        return (
            f"ChatRequest(system={_short(self.system)!r}, user={_short(self.user)!r}, "
            f"image={image}, schema={self.schema.__name__}, max_tokens={self.max_tokens})"
        )


class ChatReply:
    """One reply: its text, the object parsed from it, the tokens used, why the model stopped.

    Args:
        text: the raw text the model returned (a partial JSON when truncated).
        parsed: the text validated as the request's schema, or ``None`` when it does not
            validate (or the reply was cut off, refused or filtered).
        usage: the tokens the call used.
        finish_reason: ``"stop"``, ``"length"``, ``"refusal"`` or ``"content_filter"``.
        refusal: the model's refusal message, when it refused.
    """

    __slots__ = ("finish_reason", "parsed", "refusal", "text", "usage")

    def __init__(
        self,
        text: str,
        *,
        parsed: BaseModel | None = None,
        usage: Usage | None = None,
        finish_reason: FinishReason = "stop",
        refusal: str | None = None,
    ) -> None:
        self.text = text
        self.parsed = parsed
        self.usage = usage if usage is not None else Usage(input_tokens=0, output_tokens=0)
        self.finish_reason = finish_reason
        self.refusal = refusal

    @classmethod
    def from_text(
        cls,
        text: str,
        schema: type[BaseModel],
        *,
        usage: Usage | None = None,
        finish_reason: FinishReason = "stop",
    ) -> ChatReply:
        """A reply whose :attr:`parsed` is ``text`` validated as ``schema`` (``None`` if it does
        not validate, or the model did not finish)."""
        parsed = None
        if finish_reason == "stop":
            try:
                parsed = schema.model_validate_json(text)
            except ValidationError:
                parsed = None
        return cls(text, parsed=parsed, usage=usage, finish_reason=finish_reason)

    @property
    def outcome(self) -> ReplyOutcome:
        """What the reply is (see :class:`ReplyOutcome`)."""
        if self.refusal is not None or self.finish_reason == "refusal":
            return ReplyOutcome.REFUSED
        if self.finish_reason == "length":
            return ReplyOutcome.TRUNCATED
        if self.finish_reason == "content_filter":
            return ReplyOutcome.FILTERED
        if self.parsed is None:
            return ReplyOutcome.MALFORMED
        return ReplyOutcome.OK

    def __repr__(self) -> str:
        return (
            f"ChatReply(text={_short(self.text)!r}, outcome={self.outcome.value!r}, "
            f"usage=({self.usage.input_tokens}, {self.usage.output_tokens}))"
        )


class BackendStatusError(ProviderError):
    """An HTTP-like failure a backend of your own can raise: the retry policy retries a
    transient ``status`` (408, 409, 425, 429, 5xx, 529) after ``retry_after`` seconds at the
    least, stops the run on 401/402/403 or a 429 about quota, and fails the row otherwise."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status
        self.retry_after = retry_after
        self.message = message


class Backend(ABC):
    """Sends one :class:`ChatRequest` and returns its :class:`ChatReply`.

    Implement :meth:`send` (raise on a failed call; see the module docstring for how faults
    are read) and set :attr:`provider`. Override :meth:`aclose` if the backend opens
    connections (it is called when a run's event loop is done; the backend must reopen them
    on its next call), :meth:`image_tokens_for` if the provider bills images by a formula,
    and :attr:`endpoint` for messages.
    """

    provider: str = "custom"
    """The provider's short name: in messages, provenance, prices and the reply cache key."""

    price: ModelPrice | None = None
    """What the backend's calls cost where it knows better than the price table (zero for a
    scripted or local one); ``prices=`` given to the hallucinator still wins."""

    @abstractmethod
    async def send(self, request: ChatRequest) -> ChatReply:
        """Send ``request``; return the reply, or raise the call's error."""

    async def aclose(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release what the backend opened in the running event loop."""

    @property
    def endpoint(self) -> str:
        """Where requests go, for messages (a URL where there is one)."""
        return f"the {self.provider} API"

    def image_tokens_for(self, width: int, height: int) -> int | None:
        """The input tokens one image of this (sent) size is billed as; ``None``: unknown."""
        return None

    def request_params(self) -> dict[str, Any]:
        """Settings besides the request that change the reply (e.g. a server URL, a
        temperature): hashed into the reply cache's key, never stored."""
        return {}


class Policy(Backend):
    """A backend that wraps another (:attr:`inner`) and adds behaviour around its calls:
    the base of retries, rate limits, the budget and the reply cache. It forwards
    :meth:`aclose`, :attr:`provider`, :attr:`endpoint`, :meth:`image_tokens_for` and
    :meth:`request_params` to :attr:`inner`; subclasses implement :meth:`send`."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.price = inner.price

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def image_tokens_for(self, width: int, height: int) -> int | None:
        return self.inner.image_tokens_for(width, height)

    def request_params(self) -> dict[str, Any]:
        return self.inner.request_params()


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
