"""A backend that answers from a script: for tests, yours and povidgen's.

:class:`ScriptedBackend` replies to each request with the next item of a list, or with what a
function returns for the request, and records every request it saw. Give it to
:class:`~povidgen.LLMHallucinator` to test a pipeline with exact replies, faults and refusals,
with no network and no SDK::

    from povidgen import LLMHallucinator, ScriptedBackend

    backend = ScriptedBackend(
        [
            ScriptedBackend.fault(429, retry_after=0.1),  # retried after 0.1 s or more
            {"rejected": "Three cats.", "edits": [...]},  # parsed as the reply schema
        ]
    )
    hallucinator = LLMHallucinator("scripted", backend=backend, cache=False)

A script item is a :class:`~povidgen.hallucinate.backend.ChatReply` (sent as it is), a string
(the reply's text, parsed as the request's schema), a mapping or pydantic model (dumped as
JSON), or an exception (raised, as a failed call raises). A function may return any of these,
or an awaitable of one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from pydantic import BaseModel

from povidgen.errors import ProviderError
from povidgen.hallucinate.backend import Backend, BackendStatusError, ChatReply, ChatRequest
from povidgen.hallucinate.pricing import ModelPrice, Usage, estimate_tokens

__all__ = ["ScriptItem", "ScriptedBackend"]

ScriptItem: TypeAlias = ChatReply | str | Mapping[str, Any] | BaseModel | BaseException
"""One scripted answer: a reply, its text, its JSON object, or the exception the call raises."""


class ScriptedBackend(Backend):
    """Replies from a list (in order) or a function of the request.

    Args:
        script: the replies, one per call, in order; or ``function(request)`` returning one
            (or an awaitable of one).
        delay: seconds each call waits before it answers (to hold calls in flight).
        cycle: start the list again when it runs out (otherwise a call past its end fails
            with a :class:`~povidgen.ProviderError`).

    Its calls cost nothing (:attr:`price` is zero) unless the hallucinator is given
    ``prices=``; a reply's usage, when the script does not give one, is the request's
    estimated tokens in and the reply's out. :attr:`requests` holds every request received.
    """

    provider = "scripted"
    price = ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0)

    def __init__(
        self,
        script: Sequence[ScriptItem] | Callable[[ChatRequest], ScriptItem | Awaitable[ScriptItem]],
        *,
        delay: float = 0.0,
        cycle: bool = False,
    ) -> None:
        if not callable(script) and (isinstance(script, str | bytes) or not script):
            raise ValueError("script must be a non-empty sequence of replies or a function")
        self.script = script
        self.delay = delay
        self.cycle = cycle
        self.requests: list[ChatRequest] = []
        """Every request received, in order."""

    @staticmethod
    def fault(status: int, message: str = "", *, retry_after: float | None = None) -> Exception:
        """A failed call to script: HTTP ``status`` (429 and 5xx are retried, after
        ``retry_after`` seconds at the least; 401/402/403 stop the run; other 4xx fail the
        row)."""
        return BackendStatusError(
            status, message or f"scripted HTTP {status}", retry_after=retry_after
        )

    async def send(self, request: ChatRequest) -> ChatReply:
        index = len(self.requests)
        self.requests.append(request)
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        item: Any
        if callable(self.script):
            item = self.script(request)
            if inspect.isawaitable(item):
                item = await item
        else:
            if index >= len(self.script) and not self.cycle:
                raise ProviderError(
                    f"ScriptedBackend ran out of replies: call {index + 1} of a script of "
                    f"{len(self.script)}"
                )
            item = self.script[index % len(self.script)]
        return _reply(item, request)


def _reply(item: Any, request: ChatRequest) -> ChatReply:
    if isinstance(item, BaseException):
        raise item
    if isinstance(item, ChatReply):
        return item
    if isinstance(item, BaseModel):
        text = item.model_dump_json()
    elif isinstance(item, Mapping):
        text = json.dumps(dict(item))
    elif isinstance(item, str):
        text = item
    else:
        raise TypeError(
            f"a script item must be a ChatReply, str, mapping, pydantic model or exception, "
            f"not {type(item).__name__}"
        )
    usage = Usage(
        input_tokens=estimate_tokens(request.system + request.user),
        output_tokens=estimate_tokens(text),
    )
    return ChatReply.from_text(text, request.schema, usage=usage)
