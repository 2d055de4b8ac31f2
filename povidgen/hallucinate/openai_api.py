"""OpenAI and OpenAI-compatible servers (vLLM, llama.cpp, Ollama) as a hallucinator."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, SecretStr

from povidgen.errors import ProviderError
from povidgen.hallucinate.backend import ChatReply, ChatRequest
from povidgen.hallucinate.batch import BatchBackend, BatchItem, BatchProgress, BatchResult
from povidgen.hallucinate.llm import LLMHallucinator
from povidgen.hallucinate.pricing import OPENAI_IMAGE_TOKENS, Usage, openai_image_tokens
from povidgen.hallucinate.prompts import RewriteReply
from povidgen.hallucinate.sdk_backend import SDKBackend
from povidgen.hallucinate.strict_schema import strict_json_schema

__all__ = ["OpenAIBackend", "OpenAIHallucinator"]


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as error:
        raise ImportError(
            "OpenAIHallucinator needs the openai SDK: pip install 'povidgen[openai]'"
        ) from error
    return openai


class OpenAIBackend(SDKBackend):
    """The OpenAI Chat Completions API (or any OpenAI-compatible server) as a backend.

    The request carries the system prompt, the user text and (when the request has one) the
    image as a JPEG data URL, with ``response_format`` set to the request's schema (the request
    the SDK's ``chat.completions.parse`` helper makes, sent through its public ``post``, with
    the schema converted once per schema). The reply's finish reason and refusal are kept:
    ``length`` is a truncated reply, a ``refusal`` message a refused one.

    Args:
        model: e.g. ``"gpt-4o-mini"``; for a local server, the name it serves.
        client: an ``openai.AsyncOpenAI`` to use (its retries are switched off: povidgen
            retries); it is never closed here.
        base_url: the server, default ``$OPENAI_BASE_URL`` or OpenAI's.
        api_key: default: the variable ``api_key_env`` names, else ``$OPENAI_API_KEY``; none
            is needed for a server on localhost. Kept as a ``SecretStr`` and never logged.
        api_key_env: the environment variable to read the key from.
        timeout: seconds per request.
    """

    provider = "openai"
    sdk_name = "OpenAI"
    base_url_env = "OPENAI_BASE_URL"
    key_env = "OPENAI_API_KEY"
    default_endpoint = "https://api.openai.com/v1"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        client: Any | None = None,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._openai = _import_openai()
        super().__init__(
            model,
            client=client,
            base_url=base_url,
            api_key=api_key,
            api_key_env=api_key_env,
            timeout=timeout,
        )

    def _new_client(self, api_key: str, base_url: str | None, timeout: float) -> Any:
        return self._openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
        )

    def image_tokens_for(self, width: int, height: int) -> int:
        """OpenAI's image tokens for this size on :attr:`model` (images are sent without a
        ``detail``, so at ``"auto"``, counted as high): see
        :func:`~povidgen.hallucinate.pricing.openai_image_tokens`."""
        return openai_image_tokens(width, height, model=self.model)

    def request_params(self) -> dict[str, Any]:
        # another server answers differently (hashed into the cache key, never stored)
        return {"base_url": self._base_url}

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The Chat Completions body of ``request`` (also a batch request's body)."""
        return _body(
            self.model,
            request.system,
            request.user,
            request.image_url,
            request.schema,
            request.max_tokens,
        )

    async def send(self, request: ChatRequest) -> ChatReply:
        # The same request as ``chat.completions.parse`` sends, through the SDK's public
        # ``post``: ``parse`` rebuilds the schema from the pydantic model and walks every
        # message through its type transforms on each call, about 4 ms of CPU a request on
        # the event loop, which caps a build's rate well under a provider's limit.
        body = self.body(request)
        body["stream"] = False
        completion = await self.client().post(
            "/chat/completions", body=body, cast_to=self._openai.types.chat.ChatCompletion
        )
        usage = _usage(completion)
        if not completion.choices:
            return ChatReply("", usage=usage)  # malformed: nothing to parse
        choice = completion.choices[0]
        message = choice.message
        text = message.content or ""
        if message.refusal:
            return ChatReply(text, usage=usage, finish_reason="refusal", refusal=message.refusal)
        finish = choice.finish_reason
        if finish in ("length", "content_filter"):
            return ChatReply(text, usage=usage, finish_reason=finish)
        return ChatReply.from_text(text, request.schema, usage=usage)


class OpenAIHallucinator(LLMHallucinator):
    """Rewrites answers with an OpenAI chat model (or any OpenAI-compatible server): an
    :class:`~povidgen.LLMHallucinator` over an :class:`OpenAIBackend`.

    Args:
        model: e.g. ``"gpt-4o-mini"``; for a local server, the name it serves (with no known
            price its tokens are counted and its cost is unknown; ``max_cost_usd`` then needs
            a price in ``prices=``).
        client: an ``openai.AsyncOpenAI`` to use (its retries are switched off: povidgen retries).
        base_url: the server, default ``$OPENAI_BASE_URL`` or OpenAI's.
        api_key: default: the variable ``api_key_env`` names, else ``$OPENAI_API_KEY``; none
            is needed for a server on localhost. Kept as a ``SecretStr`` and never logged.
        api_key_env: the environment variable to read the key from.
        **options: the shared settings of :class:`~povidgen.hallucinate.llm.LLMHallucinator`.
    """

    name: ClassVar[str] = "openai"
    provider = "openai"
    image_tokens = OPENAI_IMAGE_TOKENS  # an image of unknown size: 1024 px at high detail
    backend: OpenAIBackend

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        client: Any | None = None,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        api_key_env: str | None = None,
        **options: Any,
    ) -> None:
        backend = OpenAIBackend(
            model,
            client=client,
            base_url=base_url,
            api_key=api_key,
            api_key_env=api_key_env,
            timeout=options.get("timeout", 60.0),
        )
        super().__init__(model, backend=backend, **options)

    def _batch_request(self, system: str, user: str, image_url: str | None) -> dict[str, Any]:
        return _body(self.model, system, user, image_url, RewriteReply, self.max_output_tokens)

    def _batch_backend(self) -> BatchBackend:
        return _OpenAIBatches(self.backend.client())


class _OpenAIBatches(BatchBackend):
    """The OpenAI Batch API: a JSONL file of requests, then ``/v1/batches``."""

    provider = "openai"
    _FINISHED = ("completed", "failed", "expired", "cancelled")

    def __init__(self, client: Any) -> None:
        self.client = client

    async def submit(self, items: Sequence[BatchItem]) -> str:
        lines = [
            json.dumps(
                {
                    "custom_id": item.custom_id,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": item.request,
                }
            )
            for item in items
        ]
        uploaded = await self.client.files.create(
            file=("povidgen-batch.jsonl", "\n".join(lines).encode("utf-8")), purpose="batch"
        )
        batch = await self.client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return str(batch.id)

    async def poll(self, batch_id: str) -> BatchProgress:
        batch = await self.client.batches.retrieve(batch_id)
        counts = getattr(batch, "request_counts", None)  # none while the file is validated
        return BatchProgress(
            batch_id=batch_id,
            status=str(batch.status),
            finished=batch.status in self._FINISHED,
            total=_count(counts, "total"),
            completed=_count(counts, "completed"),
            failed=_count(counts, "failed"),
        )

    async def results(self, batch_id: str) -> dict[str, BatchResult]:
        batch = await self.client.batches.retrieve(batch_id)
        found: dict[str, BatchResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self.client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    entry = json.loads(line)
                    found[str(entry["custom_id"])] = _batch_entry(entry)
        if not found:
            reasons = [
                f"{getattr(error, 'code', None) or 'error'}: {getattr(error, 'message', error)}"
                for error in (getattr(getattr(batch, "errors", None), "data", None) or [])
            ]
            because = f" ({'; '.join(reasons)})" if reasons else ""
            raise ProviderError(f"batch {batch_id} ended {batch.status!r} with no results{because}")
        return found


def _count(counts: Any, name: str) -> int:
    value = getattr(counts, name, 0)
    return value if isinstance(value, int) else 0


def _batch_entry(entry: dict[str, Any]) -> BatchResult:
    response = entry.get("response") or {}
    if entry.get("error") or response.get("status_code") != 200:
        detail = entry.get("error") or response.get("body", {}).get("error") or response
        return ProviderError(f"batch request failed: {detail}")
    body = response["body"]
    message = body["choices"][0]["message"]
    usage = body.get("usage") or {}
    tokens = Usage(
        input_tokens=usage.get("prompt_tokens", 0) or 0,
        output_tokens=usage.get("completion_tokens", 0) or 0,
    )
    text = message.get("content") or ""
    if message.get("refusal"):
        return ChatReply(text, usage=tokens, finish_reason="refusal", refusal=message["refusal"])
    finish = body["choices"][0].get("finish_reason")
    if finish in ("length", "content_filter"):
        return ChatReply(text, usage=tokens, finish_reason=finish)
    return ChatReply.from_text(text, RewriteReply, usage=tokens)


@functools.cache
def _response_format(schema: type[BaseModel]) -> dict[str, Any]:
    """``response_format`` for ``schema``: its strict JSON schema (the one
    ``chat.completions.parse`` would send), made once a schema."""
    return {
        "type": "json_schema",
        "json_schema": {
            "schema": strict_json_schema(schema),
            "name": schema.__name__,
            "strict": True,
        },
    }


def _body(
    model: str,
    system: str,
    user: str,
    image_url: str | None,
    schema: type[BaseModel],
    max_tokens: int,
) -> dict[str, Any]:
    """The Chat Completions body, live or in a batch (one place, so the two agree)."""
    return {
        "model": model,
        "messages": _messages(system, user, image_url),
        "response_format": _response_format(schema),
        "max_completion_tokens": max_tokens,
    }


def _messages(system: str, user: str, image_url: str | None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": user}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def _usage(completion: Any) -> Usage:
    usage = getattr(completion, "usage", None)
    if usage is None:
        return Usage(input_tokens=0, output_tokens=0)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) or 0
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cached_input_tokens=cached,
    )
