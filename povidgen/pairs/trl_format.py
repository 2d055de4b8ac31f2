"""The published pair format: TRL's vision preference layout plus povidgen provenance.

One row per pair::

    id               string
    images           [Image]                       the clean image (one)
    prompt           [{"role": "user", "content": [{"type": "image", "text": null},
                                                   {"type": "text",  "text": <prompt>}]}]
    chosen           [{"role": "assistant", "content": [{"type": "text", "text": <answer>}]}]
    rejected         [{"role": "assistant", "content": [{"type": "text", "text": <corrupted>}]}]
    rejected_images  [Image]                       the distorted image (only with a distorter)
    provenance       {hallucinator, hallucinator_params (JSON), distorter, distorter_params
                      (JSON), seed, example_seed, edits: [{kind, original, injected, start, end}],
                      povidgen_version, turn}

``prompt``/``chosen``/``rejected`` are conversational messages with typed content parts, which
is what ``trl.DPOTrainer`` expects for vision data; ``edits[i].start:end`` index the rejected
text.

A build with pair modes (:mod:`povidgen.pairs.modes`: ``pair_mode`` other than what a build
makes by default, or a mix) adds ``provenance.pair_mode`` (``text``, ``image`` or ``both``):
a ``text`` row has no rejected image (``rejected_images`` is ``null`` when the column exists),
an ``image`` row's ``rejected`` repeats ``chosen`` (the contrast is in ``rejected_images``).
Builds without pair modes write the layout above unchanged.

A turn ``k > 0`` of a multi-turn conversation keeps the ``k`` exchanges before it in
``prompt``, oldest first: ``[user (image, question 0), assistant (answer 0), ..., user
(question k)]``; ``chosen``/``rejected`` are still the one final assistant message, and
``provenance.turn`` is ``k`` (``None`` for rows that are not from a conversation).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from povidgen.schema import Exchange, PreferencePair

__all__ = [
    "PNG_COMPRESS_LEVEL",
    "edit_spans",
    "message_text",
    "pair_features",
    "pair_to_row",
    "png_bytes",
    "prompt_messages",
]

_CONTENT = List({"type": Value("string"), "text": Value("string")})
_MESSAGES = List({"role": Value("string"), "content": _CONTENT})
_EDIT = {
    "kind": Value("string"),
    "original": Value("string"),
    "injected": Value("string"),
    "start": Value("int32"),
    "end": Value("int32"),
}
_PROVENANCE = {
    "hallucinator": Value("string"),
    "hallucinator_params": Value("string"),
    "distorter": Value("string"),
    "distorter_params": Value("string"),
    "seed": Value("int64"),
    "example_seed": Value("int64"),
    "edits": List(_EDIT),
    "povidgen_version": Value("string"),
    "turn": Value("int32"),
}


def pair_features(*, with_rejected_images: bool, with_pair_mode: bool = False) -> Features:
    """The ``datasets.Features`` of a pairs dataset, with or without ``rejected_images``, and
    with ``provenance.pair_mode`` for a build with pair modes."""
    columns: dict[str, Any] = {
        "id": Value("string"),
        "images": List(Image()),
        "prompt": _MESSAGES,
        "chosen": _MESSAGES,
        "rejected": _MESSAGES,
    }
    if with_rejected_images:
        columns["rejected_images"] = List(Image())
    columns["provenance"] = (
        {**_PROVENANCE, "pair_mode": Value("string")} if with_pair_mode else _PROVENANCE
    )
    return Features(columns)


def pair_to_row(
    pair: PreferencePair,
    *,
    image_bytes: bytes | None = None,
    rejected_image_bytes: bytes | None = None,
    pair_mode: str | None = None,
) -> dict[str, Any]:
    """One dataset row for ``pair``.

    ``pair_mode``, when given, is written as ``provenance.pair_mode`` (builds with pair modes,
    see :func:`pair_features`).

    ``image_bytes``, when given, are stored for the clean image as they are (the source JPEG,
    say) instead of re-encoding ``pair.image`` as PNG. The distorted image is always stored as
    PNG, since lossy compression would change the noise: ``pair.rejected_image`` encoded here,
    or ``rejected_image_bytes`` already encoded (the column is written when either is given).
    """
    provenance = pair.provenance
    row: dict[str, Any] = {
        "id": pair.id,
        "images": [{"bytes": image_bytes or png_bytes(pair.image), "path": None}],
        "prompt": prompt_messages(pair.prompt, pair.context),
        "chosen": _assistant(pair.chosen),
        "rejected": _assistant(pair.rejected),
    }
    if rejected_image_bytes is not None:
        row["rejected_images"] = [{"bytes": rejected_image_bytes, "path": None}]
    elif pair.rejected_image is not None:
        row["rejected_images"] = [{"bytes": png_bytes(pair.rejected_image), "path": None}]
    row["provenance"] = {
        "hallucinator": provenance.hallucinator,
        "hallucinator_params": json.dumps(provenance.hallucinator_params, sort_keys=True),
        "distorter": provenance.distorter,
        "distorter_params": (
            None
            if provenance.distorter_params is None
            else json.dumps(provenance.distorter_params, sort_keys=True)
        ),
        "seed": provenance.seed,
        "example_seed": provenance.example_seed,
        "edits": [edit.model_dump(mode="json") for edit in provenance.edits],
        "povidgen_version": provenance.povidgen_version,
        "turn": provenance.turn,
    }
    if pair_mode is not None:
        row["provenance"]["pair_mode"] = pair_mode
    return row


def prompt_messages(prompt: str, context: Sequence[Exchange] = ()) -> list[dict[str, Any]]:
    """The ``prompt`` column of a pair: one user message with the image and ``prompt``, or,
    after ``context`` (the earlier exchanges of a conversation), ``user (image, question 0),
    assistant (answer 0), ..., user (prompt)``: the image goes with the first question."""
    image = {"type": "image", "text": None}
    if not context:
        return [{"role": "user", "content": [image, {"type": "text", "text": prompt}]}]
    messages: list[dict[str, Any]] = []
    for number, exchange in enumerate(context):
        question = {"type": "text", "text": exchange.question}
        content = [image, question] if number == 0 else [question]
        messages.append({"role": "user", "content": content})
        messages.extend(_assistant(exchange.answer))
    messages.append({"role": "user", "content": [{"type": "text", "text": prompt}]})
    return messages


def message_text(messages: list[dict[str, Any]]) -> str:
    """The concatenated text parts of a conversational message list (``chosen``, say)."""
    return "".join(
        part["text"]
        for message in messages
        for part in message["content"]
        if part["type"] == "text" and part["text"] is not None
    )


def edit_spans(rejected: str, edits: Iterable[Any]) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` of each edit's injected text inside ``rejected``, in edit order.

    ``provenance.edits`` index the rejected text; an edit whose ``start:end`` does not hold
    its injected text (hand-edited data) is looked up by text instead, and skipped when the
    text is not there, as is anything that is not an edit mapping.
    """
    spans: list[tuple[int, int, str]] = []
    for edit in edits:
        if not isinstance(edit, Mapping):
            continue
        injected = str(edit.get("injected") or "")
        start, end = edit.get("start"), edit.get("end")
        if not (
            isinstance(start, int)
            and isinstance(end, int)
            and 0 <= start < end
            and rejected[start:end] == injected
        ):
            found = rejected.find(injected) if injected else -1
            if found < 0:
                continue
            start, end = found, found + len(injected)
        spans.append((start, end, str(edit.get("kind") or "")))
    return spans


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNGs povidgen writes. Noise barely compresses: level 1 encodes a 336x336
distorted image in less than half the time of the default level 6 for about 10% more bytes,
and encoding is most of a build's CPU time (``benchmarks/build_throughput.py``)."""


def png_bytes(image: PILImage.Image) -> bytes:
    """``image`` encoded as PNG (lossless, so a distortion's exact pixels are kept), at
    :data:`PNG_COMPRESS_LEVEL`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
