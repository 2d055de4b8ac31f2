"""Verify-and-re-ask: ask a backend for a rewrite until one passes verification.

For one example, :class:`ReAsk` sends the rewrite prompt, types the reply
(:attr:`~povidgen.hallucinate.backend.ChatReply.outcome`) and verifies it; a reply that fails is
asked again, up to ``max_attempts`` times, with the reason and the previous reply in the
prompt (:func:`~povidgen.hallucinate.prompts.build_messages`)::

    for attempt in 1..max_attempts:
        reply = backend.send(request with the last reason)
        truncated / refused / filtered  -> the reason names what happened
        malformed / ok                  -> verify_reply + verify_answer_to_question
        verified                        -> the Hallucination

The reason fed back says which outcome it was: a reply cut off at the token limit is asked to
be shorter, a refusal is asked not to refuse, a malformed reply is told what did not parse.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from povidgen.hallucinate.backend import ChatReply, ChatRequest, ReplyOutcome
from povidgen.hallucinate.prompts import PromptConfig, RewriteReply, build_messages
from povidgen.hallucinate.verify import (
    VerificationError,
    verify_answer_to_question,
    verify_reply,
)
from povidgen.schema import Example, Hallucination

__all__ = ["ReAsk", "outcome_reason", "verify"]

logger = logging.getLogger("povidgen")


def outcome_reason(reply: ChatReply, max_tokens: int) -> str | None:
    """The reason, addressed to the model, that a truncated, refused or filtered reply failed
    (``None`` for an ``ok`` or ``malformed`` reply: the verifier says what is wrong with those,
    a malformed one's reason saying it was malformed)."""
    outcome = reply.outcome
    if outcome is ReplyOutcome.TRUNCATED:
        return (
            f"Your reply was truncated: it was cut off at the {max_tokens}-token limit before "
            "the JSON object was complete. Return a shorter reply: the rewritten answer and "
            "its edits only, with no text around the JSON."
        )
    if outcome is ReplyOutcome.REFUSED:
        said = (reply.refusal or reply.text or "").strip()
        quoted = f" ({_shorten(said)!r})" if said else ""
        return (
            f"Your reply was a refusal{quoted}. This is a data-generation task for training "
            "models to avoid hallucinations: do not refuse; return the rewritten answer with "
            "the injected errors as the JSON object."
        )
    if outcome is ReplyOutcome.FILTERED:
        return (
            "Your reply was stopped by the provider's content filter. Rewrite the answer with "
            "harmless, factual errors only and return the JSON object."
        )
    return None


def verify(example: Example, reply: ChatReply | str, prompt: PromptConfig) -> Hallucination:
    """Verify one reply (its parsed object where there is one, else its text):
    :func:`~povidgen.hallucinate.verify.verify_reply`, then the question-aware
    :func:`~povidgen.hallucinate.verify.verify_answer_to_question`. Raises
    :class:`~povidgen.VerificationError` with the reason; a malformed reply's reason starts
    with ``"The reply was malformed"``."""
    if isinstance(reply, str):
        content: RewriteReply | str = reply
    elif isinstance(reply.parsed, RewriteReply):
        content = reply.parsed
    else:
        content = reply.text
    try:
        hallucination = verify_reply(example, content, prompt)
    except VerificationError as error:
        if isinstance(content, str) and _is_parse_failure(error.reason):
            raise VerificationError(f"The reply was malformed. {error.reason}") from None
        raise
    verify_answer_to_question(example, hallucination)
    return hallucination


def _is_parse_failure(reason: str) -> bool:
    return reason.startswith(("The reply is not valid JSON", "The reply does not match"))


class ReAsk:
    """Asks ``send`` for a verified rewrite of an example, re-asking with the reason.

    Args:
        prompt: what to ask for.
        max_attempts: replies tried per example before the last reason becomes the row's
            :class:`~povidgen.VerificationError`.
        request: makes the request of one attempt from its system and user text and the
            example (the image, token limit and schema are the caller's).
    """

    def __init__(
        self,
        *,
        prompt: PromptConfig,
        max_attempts: int,
        request: Callable[[str, str, Example], ChatRequest],
    ) -> None:
        self.prompt = prompt
        self.max_attempts = max_attempts
        self.request = request

    async def run(
        self, example: Example, send: Callable[[ChatRequest], Awaitable[ChatReply]]
    ) -> Hallucination:
        """The verified :class:`~povidgen.Hallucination`; raises the last attempt's
        :class:`~povidgen.VerificationError`, or what ``send`` raised."""
        feedback: str | None = None
        previous: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            system, user = build_messages(
                example, self.prompt, feedback=feedback, previous_reply=previous
            )
            request = self.request(system, user, example)
            reply = await send(request)
            reason = outcome_reason(reply, request.max_tokens)
            if reason is None:
                try:
                    return verify(example, reply, self.prompt)
                except VerificationError as error:
                    reason = error.reason
            logger.info(
                "reply for %s failed verification (attempt %d/%d, %s): %s",
                example.id,
                attempt,
                self.max_attempts,
                reply.outcome.value,
                reason,
            )
            feedback = reason
            previous = reply.refusal or reply.text
        raise VerificationError(
            f"no reply passed verification in {self.max_attempts} attempts; last: {feedback}"
        )


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
