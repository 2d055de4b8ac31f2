"""The Hallucinator ABC's derived behaviour: sync wrappers, bounded concurrency, per-row errors."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from povidgen import Edit, EditKind, Example, Hallucination, HallucinationError, Hallucinator


class Upper(Hallucinator):
    """Uppercases the answer after a short sleep, failing on ids starting with 'bad'."""

    name = "upper"

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0

    async def ahallucinate(self, example: Example) -> Hallucination:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01 if example.id.endswith("0") else 0.001)
            if example.id.startswith("bad"):
                raise HallucinationError(f"cannot corrupt {example.id}")
            rejected = example.answer.upper()
            edit = Edit(
                kind=EditKind.TEXT,
                original=example.answer,
                injected=rejected,
                start=0,
                end=len(rejected),
            )
            return Hallucination(rejected=rejected, edits=[edit])
        finally:
            self.in_flight -= 1


def _examples(ids: list[str]) -> list[Example]:
    image = Image.new("RGB", (2, 2))
    return [Example(id=i, image=image, prompt="q", answer=f"answer {i}") for i in ids]


def test_many_keeps_order_bounds_concurrency_and_captures_errors() -> None:
    hallucinator = Upper()
    ids = [f"r{i}" for i in range(20)] + ["bad-1"]
    seen: list[int] = []
    results = hallucinator.hallucinate_many(
        _examples(ids), concurrency=3, on_result=lambda i, _: seen.append(i)
    )
    assert hallucinator.most_in_flight == 3
    assert len(results) == len(ids)
    assert sorted(seen) == list(range(len(ids)))
    for identifier, result in zip(ids[:-1], results[:-1], strict=True):
        assert isinstance(result, Hallucination)
        assert result.rejected == f"ANSWER {identifier.upper()}"
    assert isinstance(results[-1], HallucinationError)


def test_sync_call_and_repr() -> None:
    hallucinator = Upper()
    assert hallucinator.hallucinate(_examples(["a"])[0]).rejected == "ANSWER A"
    assert repr(hallucinator) == "Upper()"


def test_sync_call_inside_a_running_loop_is_refused() -> None:
    async def inside() -> None:
        with pytest.raises(RuntimeError, match="await ahallucinate"):
            Upper().hallucinate(_examples(["a"])[0])

    asyncio.run(inside())


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Upper().hallucinate_many(_examples(["a"]), concurrency=0)


def test_the_abc_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        Hallucinator()  # type: ignore[abstract]
