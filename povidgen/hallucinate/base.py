"""The :class:`Hallucinator` extension point: turn a correct answer into a plausible wrong one."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from povidgen.schema import Example, Hallucination

__all__ = ["HallucinationResult", "Hallucinator"]

HallucinationResult = Hallucination | Exception
"""One outcome of :meth:`Hallucinator.ahallucinate_many`: the hallucination or the error."""


class Hallucinator(ABC):
    """Rewrites an example's correct answer, injecting typed, span-located errors.

    Subclasses implement :meth:`ahallucinate` (async, so network-bound providers can run many
    requests at once) and set :attr:`name`. Everything else is derived:

    * :meth:`hallucinate` runs one example synchronously;
    * :meth:`ahallucinate_many` / :meth:`hallucinate_many` run many with bounded concurrency,
      returning results in input order and capturing each row's exception instead of raising.

    Implementations should be deterministic given ``example.seed`` and ``example.id`` where the
    backend allows, raise :class:`povidgen.HallucinationError` when they cannot corrupt an
    answer, and return a :class:`povidgen.Hallucination` whose edit spans are exact (the model
    validates them).

    Register a subclass for :func:`povidgen.get_hallucinator` through the entry-point group
    ``povidgen.hallucinators`` in your package's metadata.
    """

    name: ClassVar[str] = "custom"
    """The short name recorded in provenance (and, by convention, the entry-point name)."""

    @abstractmethod
    async def ahallucinate(self, example: Example) -> Hallucination:
        """Return a corrupted version of ``example.answer`` with its edits."""

    def params(self) -> dict[str, Any]:
        """The parameters that determine the output, recorded in provenance (JSON-serialisable,
        never secrets)."""
        return {}

    @property
    def streams(self) -> bool:
        """Whether rows may be sent one by one as they are read (a sliding window of calls).

        ``True`` unless a subclass overrides :meth:`ahallucinate_many` to take rows together
        (a provider's batch API); :class:`povidgen.PairBuilder` then hands it whole batches.
        """
        return type(self).ahallucinate_many is Hallucinator.ahallucinate_many

    async def aclose(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release what the hallucinator opened in the running event loop (HTTP connections).

        The sync wrappers and :class:`povidgen.PairBuilder` call it when they are done with a
        loop; the hallucinator stays usable and reopens what it needs on the next call.
        """

    def hallucinate(self, example: Example) -> Hallucination:
        """Synchronous :meth:`ahallucinate`. Not callable from inside a running event loop."""
        _refuse_inside_event_loop("hallucinate", "ahallucinate")

        async def once() -> Hallucination:
            try:
                return await self.ahallucinate(example)
            finally:
                await self.aclose()

        return asyncio.run(once())

    async def ahallucinate_many(
        self,
        examples: Sequence[Example],
        *,
        concurrency: int = 8,
        on_result: Callable[[int, HallucinationResult], None] | None = None,
    ) -> list[HallucinationResult]:
        """Run :meth:`ahallucinate` over ``examples`` with at most ``concurrency`` in flight.

        Returns one entry per example, in input order: the :class:`Hallucination`, or the
        ``Exception`` that example raised (the other examples carry on). ``on_result(index,
        result)`` is called as each one finishes, for progress reporting.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        semaphore = asyncio.Semaphore(concurrency)
        results: list[HallucinationResult | None] = [None] * len(examples)

        async def run_one(index: int, example: Example) -> None:
            async with semaphore:
                result: HallucinationResult
                try:
                    result = await self.ahallucinate(example)
                except Exception as error:  # noqa: BLE001 - recorded per row by design
                    result = error
            results[index] = result
            if on_result is not None:
                on_result(index, result)

        await asyncio.gather(*(run_one(i, ex) for i, ex in enumerate(examples)))
        return [r for r in results if r is not None]

    def hallucinate_many(
        self,
        examples: Sequence[Example],
        *,
        concurrency: int = 8,
        on_result: Callable[[int, HallucinationResult], None] | None = None,
    ) -> list[HallucinationResult]:
        """Synchronous :meth:`ahallucinate_many`."""
        _refuse_inside_event_loop("hallucinate_many", "ahallucinate_many")

        async def many() -> list[HallucinationResult]:
            try:
                return await self.ahallucinate_many(
                    examples, concurrency=concurrency, on_result=on_result
                )
            finally:
                await self.aclose()

        return asyncio.run(many())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _refuse_inside_event_loop(sync_name: str, async_name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{sync_name}() was called inside a running event loop; use `await {async_name}(...)`"
    )
