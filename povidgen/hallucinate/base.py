"""The :class:`Hallucinator` extension point: turn a correct answer into a plausible wrong one."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from povidgen.errors import HallucinationError
from povidgen.schema import Example, Hallucination

if TYPE_CHECKING:
    from povidgen.errors import RunStoppedError
    from povidgen.hallucinate.pricing import Usage

__all__ = ["HallucinationResult", "Hallucinator", "checked_result"]

HallucinationResult = Hallucination | Exception
"""One outcome of :meth:`Hallucinator.ahallucinate_many`: the hallucination or the error."""


class Hallucinator(ABC):
    """Rewrites an example's correct answer, injecting typed, span-located errors.

    Subclasses implement :meth:`ahallucinate` (async, so network-bound providers can run many
    requests at once) and set :attr:`name`. Everything else is derived:

    * :meth:`hallucinate` runs one example synchronously;
    * :meth:`ahallucinate_many` / :meth:`hallucinate_many` run many with bounded concurrency,
      returning one result per example in input order and capturing each row's exception
      instead of raising; anything :meth:`ahallucinate` returns that is not a
      :class:`~povidgen.Hallucination` (``None``, a string) becomes that row's
      :class:`~povidgen.HallucinationError` naming the class and what it returned.

    What a build reads from any hallucinator is declared here, with defaults for one that
    costs nothing and never stops a run: :attr:`cost_usd`, :attr:`usage` and :attr:`stopped`.

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
    def cost_usd(self) -> float | None:
        """What the calls so far cost, in USD; ``None`` when the hallucinator has no cost or
        its price is unknown (then :attr:`usage` says how many tokens it used)."""
        return None

    @property
    def usage(self) -> Usage | None:
        """The tokens used so far, where the hallucinator counts them (``None``: it does not)."""
        return None

    @property
    def stopped(self) -> RunStoppedError | None:
        """Why the hallucinator stopped taking calls (a fatal provider error, a spent budget),
        or ``None``. A build that sees a row fail with a
        :class:`~povidgen.RunStoppedError` records this as the run's cause."""
        return None

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
                result = checked_result(self, await self.ahallucinate(example))
            finally:
                await self.aclose()
            if isinstance(result, Exception):
                raise result
            return result

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
        ``Exception`` that example raised (the other examples carry on); a result that is not
        a :class:`Hallucination` becomes a :class:`~povidgen.HallucinationError` in its place
        (see :func:`checked_result`). ``on_result(index, result)`` is called as each one
        finishes, for progress reporting.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        semaphore = asyncio.Semaphore(concurrency)
        # every slot is filled before gather returns (each task fills its own): results are
        # kept by position, never filtered, so a bad result cannot shift the rows after it
        results: list[HallucinationResult] = [_NOT_RUN] * len(examples)

        async def run_one(index: int, example: Example) -> None:
            async with semaphore:
                result: HallucinationResult
                try:
                    result = checked_result(self, await self.ahallucinate(example))
                except Exception as error:  # noqa: BLE001 - recorded per row by design
                    result = error
            results[index] = result
            if on_result is not None:
                on_result(index, result)

        await asyncio.gather(*(run_one(i, ex) for i, ex in enumerate(examples)))
        return results

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


_NOT_RUN = HallucinationError("not run")  # a placeholder every task overwrites


def checked_result(hallucinator: Hallucinator, result: object) -> HallucinationResult:
    """``result`` if it is a :class:`~povidgen.Hallucination`, else a
    :class:`~povidgen.HallucinationError` saying which class returned what (``None``, a
    ``str``, ...), so a subclass's bad return value costs its row only."""
    if isinstance(result, Hallucination):
        return result
    shown = repr(result)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    what = "None" if result is None else f"a {type(result).__name__} ({shown})"
    return HallucinationError(
        f"{type(hallucinator).__name__}.ahallucinate returned {what}, not a Hallucination"
    )


def _refuse_inside_event_loop(sync_name: str, async_name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{sync_name}() was called inside a running event loop; use `await {async_name}(...)`"
    )
