"""Dropping pairs that teach nothing: near-duplicate pairs and repeated input rows.

With ``drop_duplicates=True`` (``povidgen build --drop-duplicates``) a build drops

* a **near-duplicate pair**: a text-contrast pair (mode ``text`` or ``both``) whose rejected
  answer equals its chosen answer once case and whitespace are ignored
  (``"".join(s.split()).casefold()`` of both is equal): the preference would only be about
  spelling. Decided after the hallucinator's reply; stage ``pair``.
* a **repeated row**: an input row whose image, prompt, answer (and, for a turn of a
  conversation, earlier exchanges) equal those of an earlier row under another id. The first
  is kept, every later one dropped; stage ``input``, before any call is made.

A dropped row is never lost silently: it is a :class:`povidgen.RowError` in ``errors.jsonl``
(and :attr:`povidgen.PairBuilder.errors`) with ``error_type`` :data:`NEAR_DUPLICATE` or
:data:`REPEATED` and a reason naming what it duplicates, so a resumed build does not make it
again and ``povidgen merge`` carries it like any failure; ``summary.json`` counts drops apart
from failures, under ``dropped`` (``{"near_duplicate": n, "repeated": m}``), and ``failed``
and ``failures`` leave them out.

Repeats are found across the whole input, whichever share of a ``--num-shards`` build is
made: every share already reads every row's id (to catch a repeated id), and now hashes every
row's content too (:func:`content_key`, 16 bytes a row, kept in a dict with the first row's
position and id: about 200 bytes of memory a row, 200 MB per million rows). So a row is
dropped by the same rule in one run, a resumed run and any share, and merged shares equal one
run.

What counts as the same image: the same bytes when the cell holds bytes (a ``datasets``
image, a ``{"bytes": ...}`` cell), the same pixels for a PIL image or an array, the same path
*as written* when the cell holds only a path (two paths to one file are not compared by
content, which would mean reading every image of the input in every share).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from povidgen.schema import Exchange, RowError

__all__ = [
    "DROP_KINDS",
    "NEAR_DUPLICATE",
    "REPEATED",
    "RepeatedRows",
    "content_key",
    "drop_kind",
    "near_duplicate",
    "near_duplicate_pair",
    "repeated_row",
]

NEAR_DUPLICATE = "NearDuplicatePair"
"""``RowError.error_type`` of a dropped near-duplicate pair."""
REPEATED = "RepeatedRow"
"""``RowError.error_type`` of a dropped repeated row."""
DROP_KINDS: Mapping[str, str] = {NEAR_DUPLICATE: "near_duplicate", REPEATED: "repeated"}
"""``error_type`` -> the key it is counted under in ``summary.json``'s ``dropped``."""


def drop_kind(error: RowError) -> str | None:
    """``"near_duplicate"`` or ``"repeated"`` for a dropped row's record, ``None`` for a
    failure."""
    return DROP_KINDS.get(error.error_type)


def near_duplicate(chosen: str, rejected: str) -> bool:
    """Whether ``rejected`` equals ``chosen`` up to case and whitespace."""
    return _folded(chosen) == _folded(rejected)


def _folded(text: str) -> str:
    return "".join(text.split()).casefold()


def content_key(image: Any, prompt: Any, answer: Any, context: Sequence[Exchange] = ()) -> bytes:
    """A 16-byte BLAKE2b digest of a row's content: its image (see the module docstring for
    what counts as the same image), prompt, answer and earlier exchanges."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (
        _image_identity(image),
        str(prompt).encode("utf-8"),
        str(answer).encode("utf-8"),
        *(f"{exchange.question}\x1e{exchange.answer}".encode() for exchange in context),
    ):
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two splits collide
        digest.update(part)
    return digest.digest()


def _image_identity(value: Any) -> bytes:
    """What identifies an image cell's picture: its bytes, pixels or path."""
    from PIL import Image

    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return b"bytes:" + bytes(value["bytes"])
        return b"path:" + str(value.get("path")).encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return b"bytes:" + bytes(value)
    if isinstance(value, str | os.PathLike):
        return b"path:" + os.fspath(value).encode("utf-8", "surrogateescape")
    if isinstance(value, Image.Image):
        return f"pil:{value.mode}:{value.size}:".encode() + value.tobytes()
    tobytes = getattr(value, "tobytes", None)
    if callable(tobytes):  # a numpy array
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        return f"array:{shape}:{dtype}:".encode() + bytes(tobytes())
    return b"repr:" + repr(value).encode("utf-8", "backslashreplace")


class RepeatedRows:
    """The content keys seen so far, each with the first row that had it."""

    def __init__(self) -> None:
        self._first: dict[bytes, tuple[int, str]] = {}

    def first(self, key: bytes, index: int, row_id: str) -> tuple[int, str] | None:
        """The earlier row (position, id) with content ``key``, or ``None`` when this row at
        ``index`` is the first (it is then remembered)."""
        earlier = self._first.get(key)
        if earlier is None:
            self._first[key] = (index, row_id)
        return earlier

    def __len__(self) -> int:
        return len(self._first)


def repeated_row(row_id: str, index: int, earlier: tuple[int, str]) -> RowError:
    """The record of the repeated row ``row_id`` at ``index``."""
    return RowError(
        id=row_id,
        index=index,
        stage="input",
        reason=(
            f"repeated row: the same image, prompt and answer as row {earlier[0]} "
            f"(id {earlier[1]!r}), which is kept"
        ),
        error_type=REPEATED,
    )


def near_duplicate_pair(row_id: str, index: int) -> RowError:
    """The record of the near-duplicate pair ``row_id`` at ``index``."""
    return RowError(
        id=row_id,
        index=index,
        stage="pair",
        reason="near-duplicate pair: the rejected answer equals the chosen one up to case and "
        "whitespace",
        error_type=NEAR_DUPLICATE,
    )
