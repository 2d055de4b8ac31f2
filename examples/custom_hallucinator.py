"""A custom Hallucinator: plug your own model or service into povidgen.

Run it:  python examples/custom_hallucinator.py OUT_DIR

Subclass ``povidgen.Hallucinator``, implement ``async def ahallucinate(example)``, and return a
``Hallucination`` whose edits carry exact spans. Here the "model" is an offline stand-in (an
async function that swaps antonyms), so the example runs anywhere; replace ``call_model`` with
a request to your own server. To make it available by name (``get_hallucinator("antonym")``,
``povidgen build --hallucinator antonym``), register the class in your package's metadata:

    [project.entry-points."povidgen.hallucinators"]
    antonym = "my_package.hallucinators:AntonymHallucinator"
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

from povidgen import (
    DiffusionNoise,
    Edit,
    EditKind,
    Example,
    Hallucination,
    HallucinationError,
    Hallucinator,
    PairBuilder,
)
from povidgen.sources.demo import demo_dataset

ANTONYMS = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "top": "bottom",
    "bottom": "top",
    "yes": "no",
}


async def call_model(text: str) -> list[tuple[int, int, str]]:
    """Stand-in for a network call: returns (start, end, replacement) for each word to swap."""
    await asyncio.sleep(0)  # a real client would await an HTTP response here
    pattern = r"\b(" + "|".join(ANTONYMS) + r")\b"
    return [
        (m.start(), m.end(), ANTONYMS[m.group(0).lower()])
        for m in re.finditer(pattern, text, flags=re.IGNORECASE)
    ]


class AntonymHallucinator(Hallucinator):
    """Flips spatial words and yes/no answers: a minimal, complete custom provider."""

    name = "antonym"

    def __init__(self, *, max_edits: int = 2) -> None:
        self.max_edits = max_edits

    def params(self) -> dict[str, Any]:
        return {"max_edits": self.max_edits}

    async def ahallucinate(self, example: Example) -> Hallucination:
        swaps = (await call_model(example.answer))[: self.max_edits]
        if not swaps:
            raise HallucinationError("no spatial word or yes/no answer to flip")
        rejected, edits, shift = example.answer, [], 0
        for start, end, replacement in swaps:
            original = example.answer[start:end]
            if original[0].isupper():
                replacement = replacement.capitalize()
            at = start + shift
            rejected = rejected[:at] + replacement + rejected[at + len(original) :]
            kind = EditKind.REASONING if original.lower() == "yes" else EditKind.SPATIAL
            edits.append(
                Edit(
                    kind=kind,
                    original=original,
                    injected=replacement,
                    start=at,
                    end=at + len(replacement),
                )
            )
            shift += len(replacement) - len(original)
        return Hallucination(rejected=rejected, edits=edits)


def main(out_dir: str) -> None:
    builder = PairBuilder.from_dataset(
        demo_dataset(n=16),
        image_column="image",
        prompt_column="question",
        answer_column="answer",
        id_column="id",
        hallucinator=AntonymHallucinator(),
        distorter=DiffusionNoise(step=500),
        seed=0,
    )
    pairs = builder.build()
    pairs.save_to_disk(out_dir)
    print(
        f"{len(pairs)} pairs written to {out_dir}; {len(builder.errors)} rows had nothing to flip"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "custom_pairs")
