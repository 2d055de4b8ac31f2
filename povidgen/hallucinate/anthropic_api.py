"""Anthropic's Messages API as a hallucinator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, SecretStr

from povidgen.errors import ProviderError
from povidgen.hallucinate.backend import ChatReply, ChatRequest
from povidgen.hallucinate.batch import BatchBackend, BatchItem, BatchProgress, BatchResult
from povidgen.hallucinate.llm import LLMHallucinator
from povidgen.hallucinate.pricing import ANTHROPIC_IMAGE_TOKENS, Usage, anthropic_image_tokens
from povidgen.hallucinate.prompts import RewriteReply
from povidgen.hallucinate.sdk_backend import SDKBackend
from povidgen.hallucinate.strict_schema import strict_json_schema

__all__ = ["AnthropicBackend", "AnthropicHallucinator"]


def _import_anthropic() -> Any:
    try:
        import anthropic
    except ImportError as error:
        raise ImportError(
            "AnthropicHallucinator needs the anthropic SDK: pip install 'povidgen[anthropic]'"
        ) from error
    return anthropic


class AnthropicBackend(SDKBackend):
    """Anthropic's Messages API as a backend.

    The request carries the system prompt, the image (a base64 JPEG block, when the request
    has one) and the user text; the output format is the request's schema made strict
    (:func:`~povidgen.hallucinate.strict_schema.strict_json_schema`) under ``output_config``,
    as in a batch request. ``stop_reason`` ``max_tokens`` is a truncated reply, ``refusal`` a
    refused one, a text that does not parse as the schema a malformed one.

    Args:
        model: e.g. ``"claude-haiku-4-5"``.
        client: an ``anthropic.AsyncAnthropic`` to use (its retries are switched off); it is
            never closed here.
        base_url: default ``$ANTHROPIC_BASE_URL`` or Anthropic's.
        api_key: default: the variable ``api_key_env`` names, else ``$ANTHROPIC_API_KEY``;
            none is needed for a server on localhost. Kept as a ``SecretStr``, never logged.
        api_key_env: the environment variable to read the key from.
        timeout: seconds per request.
    """

    provider = "anthropic"
    sdk_name = "Anthropic"
    base_url_env = "ANTHROPIC_BASE_URL"
    key_env = "ANTHROPIC_API_KEY"
    default_endpoint = "https://api.anthropic.com"

    def __init__(
        self,
        model: str = "claude-haiku-4-5",
        *,
        client: Any | None = None,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._anthropic = _import_anthropic()
        super().__init__(
            model,
            client=client,
            base_url=base_url,
            api_key=api_key,
            api_key_env=api_key_env,
            timeout=timeout,
        )

    def _new_client(self, api_key: str, base_url: str | None, timeout: float) -> Any:
        return self._anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
        )

    def image_tokens_for(self, width: int, height: int) -> int:
        """Anthropic's image tokens for this size: see
        :func:`~povidgen.hallucinate.pricing.anthropic_image_tokens`."""
        return anthropic_image_tokens(width, height)

    async def send(self, request: ChatRequest) -> ChatReply:
        # ``messages.create`` with our own strict schema under ``output_config`` (what a batch
        # request carries too) rather than ``messages.parse(output_format=Model)``: the two
        # paths then send the identical schema, and the reply is parsed here, so a reply that
        # does not parse is a typed malformed outcome with its text and usage kept.
        message = await self.client().messages.create(
            model=self.model,
            max_tokens=request.max_tokens,
            system=request.system,
            messages=_messages(request.user, request.image_url),
            output_config=_output_config(request.schema),
        )
        return _reply(message, request.schema)


class AnthropicHallucinator(LLMHallucinator):
    """Rewrites answers with a Claude model: an :class:`~povidgen.LLMHallucinator` over an
    :class:`AnthropicBackend`.

    Args:
        model: e.g. ``"claude-haiku-4-5"`` (the default) or ``"claude-sonnet-4-6"`` (give its
            price in ``prices=`` if the table does not know it).
        client: an ``anthropic.AsyncAnthropic`` to use (its retries are switched off).
        base_url: default ``$ANTHROPIC_BASE_URL`` or Anthropic's.
        api_key: default: the variable ``api_key_env`` names, else ``$ANTHROPIC_API_KEY``;
            none is needed for a server on localhost. Kept as a ``SecretStr``, never logged.
        api_key_env: the environment variable to read the key from.
        **options: the shared settings of :class:`~povidgen.hallucinate.llm.LLMHallucinator`.
    """

    name: ClassVar[str] = "anthropic"
    provider = "anthropic"
    image_tokens = ANTHROPIC_IMAGE_TOKENS  # an image of unknown size: the largest unscaled
    backend: AnthropicBackend

    def __init__(
        self,
        model: str = "claude-haiku-4-5",
        *,
        client: Any | None = None,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        api_key_env: str | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("image_max_side", 1568)  # Anthropic's recommended longest side
        backend = AnthropicBackend(
            model,
            client=client,
            base_url=base_url,
            api_key=api_key,
            api_key_env=api_key_env,
            timeout=options.get("timeout", 60.0),
        )
        super().__init__(model, backend=backend, **options)

    def _batch_request(self, system: str, user: str, image_url: str | None) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": self.max_output_tokens,
            "system": system,
            "messages": _messages(user, image_url),
            "output_config": _output_config(RewriteReply),
        }

    def _batch_backend(self) -> BatchBackend:
        return _AnthropicBatches(self.backend.client())


class _AnthropicBatches(BatchBackend):
    """Anthropic's Message Batches API."""

    provider = "anthropic"

    def __init__(self, client: Any) -> None:
        self.client = client

    async def submit(self, items: Sequence[BatchItem]) -> str:
        batch = await self.client.messages.batches.create(
            requests=[{"custom_id": item.custom_id, "params": item.request} for item in items]
        )
        return str(batch.id)

    async def poll(self, batch_id: str) -> BatchProgress:
        batch = await self.client.messages.batches.retrieve(batch_id)
        counts = getattr(batch, "request_counts", None)
        processing, succeeded, errored, canceled, expired = (
            _count(counts, name)
            for name in ("processing", "succeeded", "errored", "canceled", "expired")
        )
        return BatchProgress(
            batch_id=batch_id,
            status=str(batch.processing_status),
            finished=batch.processing_status == "ended",
            total=processing + succeeded + errored + canceled + expired,
            completed=succeeded,
            failed=errored + canceled + expired,
        )

    async def results(self, batch_id: str) -> dict[str, BatchResult]:
        found: dict[str, BatchResult] = {}
        async for entry in await self.client.messages.batches.results(batch_id):
            result = entry.result
            if result.type == "succeeded":
                found[str(entry.custom_id)] = _reply(result.message)
            else:
                detail = getattr(result, "error", None) or result.type
                found[str(entry.custom_id)] = ProviderError(
                    f"batch request {result.type}: {detail}"
                )
        return found


def _count(counts: Any, name: str) -> int:
    value = getattr(counts, name, 0)
    return value if isinstance(value, int) else 0


def _reply(message: Any, schema: type[BaseModel] = RewriteReply) -> ChatReply:
    """A Message as a typed reply (its text parsed as ``schema`` when it finished normally; a
    refusal or a cut-off reply keeps its outcome, a text that does not parse is malformed)."""
    cached = getattr(message.usage, "cache_read_input_tokens", 0) or 0
    written = getattr(message.usage, "cache_creation_input_tokens", 0) or 0
    usage = Usage(  # povidgen's input_tokens include the cached and the cache-written ones
        input_tokens=(message.usage.input_tokens or 0) + cached + written,
        output_tokens=message.usage.output_tokens or 0,
        cached_input_tokens=cached,
        cache_write_input_tokens=written,
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    if message.stop_reason == "refusal":
        return ChatReply(text, usage=usage, finish_reason="refusal", refusal=text or "refused")
    if message.stop_reason == "max_tokens":
        return ChatReply(text, usage=usage, finish_reason="length")
    return ChatReply.from_text(text, schema, usage=usage)


def _output_config(schema: type[BaseModel]) -> dict[str, Any]:
    """``output_config`` for ``schema``, live and in batches: its strict JSON schema."""
    return {"format": {"type": "json_schema", "schema": strict_json_schema(schema)}}


def _messages(user: str, image_url: str | None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if image_url is not None:
        media_type, data = image_url.removeprefix("data:").split(";base64,", 1)
        content.append(
            {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        )
    content.append({"type": "text", "text": user})
    return [{"role": "user", "content": content}]
