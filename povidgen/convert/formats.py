"""Pair converters: TRL's vision preference format <-> LLaVA/POVID <-> VLFeedback/Silkie.

Three layouts of the same pairs:

``trl`` (povidgen's own, see :mod:`povidgen.pairs.trl_format`)
    ``id``, ``images``, ``prompt``/``chosen``/``rejected`` (conversational messages with typed
    content parts), ``rejected_images`` (optional), ``provenance``.

``llava`` (POVID's released data)
    A JSON list of records::

        {"id": "000000033471",
         "image": "COCO_train2014_000000033471.jpg",          # relative to an image folder
         "conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"},
                           {"from": "gpt", "value": "<correct answer>"}],
         "rejected_conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"},
                                    {"from": "gpt", "value": "<corrupted answer>"}],
         "rejected_image": "rejected/000000033471.png",        # povidgen's, optional
         "provenance": {...}}                                   # povidgen's, optional

    Roles map ``human``/``gpt``/``system`` to ``user``/``assistant``/``system``. A turn's
    ``<image>`` placeholders are the message's image parts: the value is its parts joined with
    ``"\\n"`` (``[image, text]`` is ``"<image>\\nQ"``, ``[text, image]`` is ``"Q\\n<image>"``).
    The TRL ``prompt`` is the turns both conversations share, up to the last non-``gpt`` turn
    before they part; the rest of ``conversations`` is ``chosen`` and the rest of
    ``rejected_conversations`` is ``rejected``, so multi-turn records convert too.

``vlfeedback`` (VLFeedback / Silkie style)
    One row per pair: ``id``, ``image``, ``prompt`` (the question's text),
    ``completions = [{"response": chosen, "rating": 1.0, "model": "reference"},
    {"response": rejected, "rating": 0.0, "model": <hallucinator>}]``, and povidgen's
    ``rejected_images`` and ``provenance`` columns as they are. Reading, the highest-rated
    completion is chosen and the lowest-rated rejected; a completion without ``rating`` gets the
    mean of its ``annotations`` ratings (VLFeedback's own layout, e.g.
    ``{"Helpfulness": {"Rating": "4", ...}, ...}``); a row with fewer than two completions or no
    strict order is skipped and counted in a warning. Only single-turn pairs with one image,
    ``[image, text]`` as the prompt and one text part per answer fit this layout; others are
    refused with the pair's id.

What each layout keeps: ids and texts always; image bytes always, bit for bit (a file's bytes
are read and written as they are, never decoded); the image's file name in ``images[].path``
(LLaVA ``image`` paths come back as they were; a TRL image without a usable relative path is
written as ``<id>.<ext>``, the extension sniffed from its bytes); provenance and rejected images
in every layout (as povidgen's extra keys/columns: other tools ignore them). Lost on the way:
a LLaVA record's keys other than those above and its turns' keys other than ``from``/``value``
(dropped with a warning), an ``<image>`` placeholder written without a newline beside it (comes
back with one; counted in a warning), a non-string id (comes back as a string), and the
``model`` names and exact ratings of VLFeedback completions (only their order counts).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value

from povidgen.errors import DatasetFormatError, ImageError
from povidgen.pairs.trl_format import pair_features

__all__ = [
    "FORMATS",
    "IMAGE_TOKEN",
    "Format",
    "from_llava",
    "from_vlfeedback",
    "has_pair_mode",
    "image_extension",
    "iter_llava_rows",
    "iter_vlfeedback_rows",
    "llava_record",
    "read_llava_records",
    "to_llava",
    "to_vlfeedback",
    "vlfeedback_features",
    "vlfeedback_row",
]

logger = logging.getLogger("povidgen")

Format = Literal["trl", "llava", "vlfeedback"]
FORMATS: tuple[Format, ...] = ("trl", "llava", "vlfeedback")

IMAGE_TOKEN = "<image>"
"""The placeholder LLaVA puts in a turn where the image goes."""

_TO_LLAVA_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}
_FROM_LLAVA_ROLE = {value: key for key, value in _TO_LLAVA_ROLE.items()}
_LLAVA_KEYS = ("id", "image", "conversations", "rejected_conversations")
_EXTRA_KEYS = ("rejected_image", "provenance")
_REJECTED_FOLDER = "rejected"
_CHOSEN_RATING = 1.0
_REJECTED_RATING = 0.0
_BATCH = 64


# -- images ---------------------------------------------------------------------------------


_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, ".jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, ".png"),
    (b"GIF87a", 0, ".gif"),
    (b"GIF89a", 0, ".gif"),
    (b"WEBP", 8, ".webp"),
    (b"BM", 0, ".bmp"),
    (b"II*\x00", 0, ".tiff"),
    (b"MM\x00*", 0, ".tiff"),
)


def image_extension(data: bytes) -> str:
    """The file extension (``.jpg``, ``.png``, ...) of the image format ``data`` is in, from
    its first bytes (nothing is decoded); other formats PIL recognises get PIL's extension.

    Raises:
        ImageError: ``data`` is no image format PIL knows.
    """
    for magic, offset, extension in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return extension
    from PIL import Image as PILImage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PILImage.open(io.BytesIO(data)) as image:
                kind = image.format
    except (OSError, ValueError, PILImage.DecompressionBombError) as error:
        raise ImageError(f"not an image file ({error})") from error
    for extension, name in PILImage.registered_extensions().items():
        if name == kind:
            return extension
    raise ImageError(f"no file extension is known for {kind} images")


def _image_bytes(image: Mapping[str, Any] | None, row_id: str) -> bytes:
    """The stored bytes of a ``datasets`` image cell (read from its path if it holds none)."""
    if image is None:
        raise DatasetFormatError(f"pair {row_id!r}: an image cell is empty")
    data = image.get("bytes")
    if data is not None:
        return bytes(data)
    path = image.get("path")
    if not path:
        raise DatasetFormatError(f"pair {row_id!r}: an image holds neither bytes nor a path")
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageError(f"pair {row_id!r}: cannot read image {path}: {error}") from error


def _safe_relative(path: object) -> str | None:
    """``path`` if it is a plain relative POSIX path that stays inside its folder, else None."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        return None
    pure = PurePosixPath(path)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in path.split("/")):
        return None
    return str(pure)


def _file_stem(row_id: str) -> str:
    """A file name stem for ``row_id``: the id itself when it is a safe name, otherwise its
    safe characters and a short hash (so different ids never share a file)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", row_id)[:100]
    if stem != row_id or stem.startswith(".") or not stem:
        stem = f"{stem.lstrip('.') or 'pair'}-{hashlib.sha256(row_id.encode()).hexdigest()[:10]}"
    return stem


class _ImageFiles:
    """Writes image files into ``folder`` without ever replacing one: a file already there with
    the same bytes is reused; with other bytes it is an error."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written = 0
        self._digests: dict[str, str] = {}

    def put(self, relative: str, data: bytes, row_id: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        known = self._digests.get(relative)
        if known is not None:
            if known != digest:
                raise DatasetFormatError(
                    f"pair {row_id!r}: image {relative} is written twice with different bytes"
                )
            return
        target = self.folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with target.open("xb") as handle:
                handle.write(data)
        except FileExistsError:
            if not target.is_file() or target.is_symlink() or target.read_bytes() != data:
                raise DatasetFormatError(
                    f"pair {row_id!r}: {target} already exists with other content; "
                    "it is left as it is (choose an empty image folder)"
                ) from None
        else:
            self.written += 1
        self._digests[relative] = digest


def _read_image_file(folder: Path, relative: object, row_id: str) -> dict[str, Any]:
    """The image cell for a LLaVA ``image`` path: the file's bytes as they are, and the path as
    written in the record."""
    safe = _safe_relative(relative)
    if safe is None:
        raise DatasetFormatError(
            f"record {row_id!r}: image path {relative!r} must be a relative path inside the "
            "image folder"
        )
    path = folder / safe
    try:
        if not path.is_file():
            raise ImageError(f"record {row_id!r}: no image file {path}")
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"record {row_id!r}: cannot read image {path}: {error}") from error
    return {"bytes": data, "path": safe}


# -- LLaVA / POVID --------------------------------------------------------------------------


def _parts_to_value(parts: list[dict[str, Any]], row_id: str) -> str:
    pieces = []
    for part in parts:
        if part.get("type") == "image":
            pieces.append(IMAGE_TOKEN)
        elif part.get("type") == "text":
            pieces.append(part.get("text") or "")
        else:
            raise DatasetFormatError(
                f"pair {row_id!r}: a message part of type {part.get('type')!r} has no LLaVA form"
            )
    return "\n".join(pieces)


def _value_to_parts(value: str) -> list[dict[str, Any]]:
    if IMAGE_TOKEN not in value:
        return [{"type": "text", "text": value}]
    segments = value.split(IMAGE_TOKEN)
    parts: list[dict[str, Any]] = []
    for number, segment in enumerate(segments):
        if number > 0:
            parts.append({"type": "image", "text": None})
            segment = segment.removeprefix("\n")
        if number < len(segments) - 1:
            segment = segment.removesuffix("\n")
        if segment:
            parts.append({"type": "text", "text": segment})
    return parts


def _messages_to_turns(messages: list[dict[str, Any]], row_id: str) -> list[dict[str, str]]:
    turns = []
    for message in messages:
        role = _TO_LLAVA_ROLE.get(message.get("role") or "")
        if role is None:
            raise DatasetFormatError(
                f"pair {row_id!r}: role {message.get('role')!r} has no LLaVA form "
                f"(known: {', '.join(_TO_LLAVA_ROLE)})"
            )
        turns.append({"from": role, "value": _parts_to_value(message["content"], row_id)})
    return turns


def _turns_to_messages(
    turns: list[dict[str, Any]], row_id: str, counts: dict[str, int]
) -> list[dict[str, Any]]:
    messages = []
    for turn in turns:
        role = _FROM_LLAVA_ROLE.get(turn["from"])
        if role is None:
            raise DatasetFormatError(
                f"record {row_id!r}: a turn from {turn['from']!r} (known: human, gpt, system)"
            )
        parts = _value_to_parts(turn["value"])
        if _parts_to_value(parts, row_id) != turn["value"]:
            counts["placeholder"] += 1
        messages.append({"role": role, "content": parts})
    return messages


def llava_record(
    row: Mapping[str, Any], image_names: list[str | None] | None = None
) -> dict[str, Any]:
    """The LLaVA/POVID record of a TRL pair ``row`` (raw: images as ``{"bytes", "path"}``).

    ``image_names`` are the paths to write for its clean and rejected images (``None`` for
    none); by default those :func:`to_llava` would choose. The images themselves are not
    written here.
    """
    row_id = str(row["id"])
    clean, rejected = image_names if image_names is not None else _image_names(row)
    prompt = _messages_to_turns(row["prompt"], row_id)
    record: dict[str, Any] = {"id": row_id}
    if clean is not None:
        record["image"] = clean
    record["conversations"] = prompt + _messages_to_turns(row["chosen"], row_id)
    record["rejected_conversations"] = prompt + _messages_to_turns(row["rejected"], row_id)
    if rejected is not None:
        record["rejected_image"] = rejected
    if row.get("provenance") is not None:
        record["provenance"] = row["provenance"]
    return record


def _image_names(row: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Where a row's clean and rejected images go in the image folder: their own relative
    paths when they have safe ones, else ``<id>.<ext>`` and ``rejected/<id>.<ext>``."""
    row_id = str(row["id"])
    names: list[str | None] = []
    for column, prefix in (("images", ""), ("rejected_images", f"{_REJECTED_FOLDER}/")):
        images = row.get(column) or []
        if len(images) > 1:
            raise DatasetFormatError(
                f"pair {row_id!r}: {len(images)} images in {column}; a LLaVA record holds one"
            )
        if not images:
            names.append(None)
            continue
        safe = _safe_relative(images[0].get("path") if images[0] else None)
        if safe is None:
            safe = prefix + _file_stem(row_id) + image_extension(_image_bytes(images[0], row_id))
        names.append(safe)
    return names[0], names[1]


def to_llava(
    pairs: datasets.Dataset | Iterable[Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    image_folder: str | os.PathLike[str],
) -> int:
    """Write ``pairs`` (TRL format) as a LLaVA/POVID JSON file and its image files.

    Each image is written into ``image_folder`` with its stored bytes as they are (see the
    module docstring for the names); a file already there is reused when its bytes are equal
    and is an error otherwise, so nothing is ever replaced. ``out_path`` must not exist.
    Returns the number of records written.

    Raises:
        DatasetFormatError: ``out_path`` exists, or a pair has no LLaVA form.
    """
    out_path = Path(out_path)
    files = _ImageFiles(Path(image_folder))
    count = 0
    try:
        handle = out_path.open("x", encoding="utf-8")
    except FileExistsError:
        raise DatasetFormatError(f"{out_path} already exists; it is left as it is") from None
    with handle:
        handle.write("[")
        for row in _raw_rows(pairs):
            row_id = str(row["id"])
            clean, rejected = _image_names(row)
            record = llava_record(row, [clean, rejected])
            for name, column in ((clean, "images"), (rejected, "rejected_images")):
                if name is not None:
                    files.put(name, _image_bytes(row[column][0], row_id), row_id)
            handle.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
            count += 1
        handle.write("\n]\n" if count else "]\n")
    logger.info("wrote %d LLaVA records to %s (%d image files)", count, out_path, files.written)
    return count


def read_llava_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a LLaVA/POVID ``.json`` (a list) or ``.jsonl`` file, checked to be pairs
    (``conversations`` and ``rejected_conversations`` lists of ``{"from", "value"}`` turns)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"cannot read {path}: {error}") from error
    try:
        if path.suffix.lower() == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DatasetFormatError(f"{path} must hold a list of JSON objects")
    for position, record in enumerate(records):
        for key in ("conversations", "rejected_conversations"):
            turns = record.get(key)
            if not isinstance(turns, list) or not all(
                isinstance(t, dict)
                and isinstance(t.get("from"), str)
                and isinstance(t.get("value"), str)
                for t in turns
            ):
                raise DatasetFormatError(
                    f"{path}, record {position} ({record.get('id')!r}): {key!r} must be a list "
                    'of {"from": ..., "value": ...} turns'
                )
    return records


def iter_llava_rows(
    records: Iterable[Mapping[str, Any]], image_folder: str | os.PathLike[str]
) -> Iterator[dict[str, Any]]:
    """TRL pair rows (raw: images as ``{"bytes", "path"}``) of LLaVA/POVID ``records``, with
    their images read from ``image_folder``. Warns once about what could not be kept."""
    folder = Path(image_folder)
    counts = {"placeholder": 0, "turn_keys": 0}
    dropped: set[str] = set()
    for position, record in enumerate(records):
        row_id = str(record.get("id", f"row-{position}"))
        dropped.update(k for k in record if k not in _LLAVA_KEYS + _EXTRA_KEYS)
        chosen_turns, rejected_turns = record["conversations"], record["rejected_conversations"]
        counts["turn_keys"] += sum(
            bool(set(t) - {"from", "value"}) for t in chosen_turns + rejected_turns
        )
        shared = 0
        while (
            shared < min(len(chosen_turns), len(rejected_turns))
            and chosen_turns[shared] == rejected_turns[shared]
        ):
            shared += 1
        while shared > 0 and chosen_turns[shared - 1]["from"] == "gpt":
            shared -= 1
        if shared == 0 or shared in (len(chosen_turns), len(rejected_turns)):
            raise DatasetFormatError(
                f"record {row_id!r}: the two conversations must open with the same human turn "
                "and then part (the answers)"
            )
        row: dict[str, Any] = {
            "id": row_id,
            "images": (
                [_read_image_file(folder, record["image"], row_id)] if "image" in record else []
            ),
            "prompt": _turns_to_messages(chosen_turns[:shared], row_id, counts),
            "chosen": _turns_to_messages(chosen_turns[shared:], row_id, counts),
            "rejected": _turns_to_messages(rejected_turns[shared:], row_id, counts),
            "rejected_images": (
                [_read_image_file(folder, record["rejected_image"], row_id)]
                if record.get("rejected_image") is not None
                else None
            ),
            "provenance": record.get("provenance"),
        }
        yield row
    if dropped:
        logger.warning("LLaVA keys not kept in the pairs: %s", ", ".join(sorted(dropped)))
    if counts["turn_keys"]:
        logger.warning("%d turn(s) had keys besides from/value; not kept", counts["turn_keys"])
    if counts["placeholder"]:
        logger.warning(
            "%d turn(s) put <image> without a newline beside it; written back, they get one",
            counts["placeholder"],
        )


def from_llava(
    path: str | os.PathLike[str], image_folder: str | os.PathLike[str] | None = None
) -> datasets.Dataset:
    """Read a LLaVA/POVID pairs file as a TRL-format ``datasets.Dataset`` (in memory).

    Args:
        path: a ``.json`` list (or ``.jsonl``) of records with ``conversations`` and
            ``rejected_conversations``.
        image_folder: where the records' ``image`` paths point (default: the file's folder).

    Raises:
        DatasetFormatError: the file or a record is malformed; ImageError: an image is missing.
    """
    path = Path(path)
    records = read_llava_records(path)
    folder = Path(image_folder) if image_folder is not None else path.parent
    with_rejected = any(r.get("rejected_image") is not None for r in records)
    with_pair_mode = any("pair_mode" in (r.get("provenance") or {}) for r in records)
    return _dataset(
        iter_llava_rows(records, folder),
        pair_features(with_rejected_images=with_rejected, with_pair_mode=with_pair_mode),
    )


# -- VLFeedback / Silkie --------------------------------------------------------------------


def vlfeedback_features(*, with_rejected_images: bool, with_pair_mode: bool = False) -> Features:
    """The columns of a VLFeedback-style pairs dataset (see the module docstring), with
    ``provenance.pair_mode`` for pairs from a build with pair modes."""
    columns: dict[str, Any] = {
        "id": Value("string"),
        "image": Image(),
        "prompt": Value("string"),
        "completions": List(
            {"response": Value("string"), "rating": Value("float64"), "model": Value("string")}
        ),
    }
    if with_rejected_images:
        columns["rejected_images"] = List(Image())
    columns["provenance"] = pair_features(
        with_rejected_images=False, with_pair_mode=with_pair_mode
    )["provenance"]
    return Features(columns)


def _single_text(messages: Any, role: str, row_id: str, what: str) -> str:
    if (
        isinstance(messages, list)
        and len(messages) == 1
        and messages[0].get("role") == role
        and len(messages[0]["content"]) == 1
        and messages[0]["content"][0].get("type") == "text"
    ):
        return str(messages[0]["content"][0].get("text") or "")
    raise DatasetFormatError(
        f"pair {row_id!r}: its {what} is not one {role} text message, which the VLFeedback "
        "layout needs (export it as trl or llava)"
    )


def vlfeedback_row(row: Mapping[str, Any], *, with_rejected_images: bool) -> dict[str, Any]:
    """The VLFeedback-style row of a TRL pair ``row`` (raw: images as ``{"bytes", "path"}``)."""
    row_id = str(row["id"])
    prompt = row["prompt"]
    if not (
        isinstance(prompt, list)
        and len(prompt) == 1
        and prompt[0].get("role") == "user"
        and [p.get("type") for p in prompt[0]["content"]] == ["image", "text"]
        and len(row.get("images") or []) == 1
    ):
        raise DatasetFormatError(
            f"pair {row_id!r}: the VLFeedback layout holds one image and a one-message "
            "[image, text] prompt (export it as trl or llava)"
        )
    provenance = row.get("provenance")
    image = row["images"][0]
    out: dict[str, Any] = {
        "id": row_id,
        "image": {"bytes": _image_bytes(image, row_id), "path": image.get("path")},
        "prompt": prompt[0]["content"][1].get("text") or "",
        "completions": [
            {
                "response": _single_text(row["chosen"], "assistant", row_id, "chosen answer"),
                "rating": _CHOSEN_RATING,
                "model": "reference",
            },
            {
                "response": _single_text(row["rejected"], "assistant", row_id, "rejected answer"),
                "rating": _REJECTED_RATING,
                "model": provenance["hallucinator"] if provenance else "rejected",
            },
        ],
    }
    if with_rejected_images:
        out["rejected_images"] = row.get("rejected_images")
    out["provenance"] = provenance
    return out


def to_vlfeedback(
    pairs: datasets.Dataset | Iterable[Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    *,
    with_rejected_images: bool | None = None,
) -> int:
    """Write ``pairs`` (TRL format) as one VLFeedback-style parquet file at ``out_path`` (which
    must not exist); ``datasets.load_dataset("parquet", data_files=out_path)`` reads it with
    its images. ``with_rejected_images`` defaults to whether ``pairs`` has the column (a
    ``Dataset``) or else ``True``. Returns the number of rows written."""
    if with_rejected_images is None:
        with_rejected_images = (
            "rejected_images" in pairs.column_names if isinstance(pairs, datasets.Dataset) else True
        )
    with_pair_mode = isinstance(pairs, datasets.Dataset) and "pair_mode" in (
        pairs.features.get("provenance") or {}
    )
    features = vlfeedback_features(
        with_rejected_images=with_rejected_images, with_pair_mode=with_pair_mode
    )
    rows = (vlfeedback_row(r, with_rejected_images=with_rejected_images) for r in _raw_rows(pairs))
    return write_parquet(rows, Path(out_path), features)


def _rating(completion: Mapping[str, Any]) -> float | None:
    rating = completion.get("rating")
    if rating is None and isinstance(completion.get("annotations"), Mapping):
        values = []
        for annotation in completion["annotations"].values():
            if isinstance(annotation, Mapping):
                try:
                    values.append(float(annotation.get("Rating")))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    continue
        rating = sum(values) / len(values) if values else None
    try:
        return None if rating is None else float(rating)
    except (TypeError, ValueError):
        return None


def iter_vlfeedback_rows(rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """TRL pair rows (raw) of VLFeedback-style ``rows``: the highest-rated completion is chosen,
    the lowest-rated rejected; rows without a strict order are skipped (and counted)."""
    skipped = 0
    for position, row in enumerate(rows):
        row_id = str(row.get("id", f"row-{position}"))
        rated = [
            (rating, str(c.get("response") or ""))
            for c in row.get("completions") or []
            if isinstance(c, Mapping) and (rating := _rating(c)) is not None
        ]
        if len(rated) < 2 or max(r for r, _ in rated) == min(r for r, _ in rated):
            skipped += 1
            continue
        best = max(r for r, _ in rated)
        worst = min(r for r, _ in rated)
        chosen = next(text for r, text in rated if r == best)
        rejected = next(text for r, text in rated if r == worst)
        image = row.get("image")
        yield {
            "id": row_id,
            "images": [image] if image is not None else [],
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "text": None},
                        {"type": "text", "text": row.get("prompt") or ""},
                    ],
                }
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
            "rejected_images": row.get("rejected_images"),
            "provenance": row.get("provenance"),
        }
    if skipped:
        logger.warning(
            "%d VLFeedback rows skipped: fewer than two rated completions, or all rated alike",
            skipped,
        )


def from_vlfeedback(path: str | os.PathLike[str]) -> datasets.Dataset:
    """Read a VLFeedback-style parquet file, or a folder of them, as a TRL-format
    ``datasets.Dataset`` (in memory; image bytes as stored)."""
    files = parquet_files(Path(path))
    schema = pq.read_schema(files[0])
    return _dataset(
        iter_vlfeedback_rows(iter_parquet_rows(files)),
        pair_features(
            with_rejected_images="rejected_images" in schema.names,
            with_pair_mode=has_pair_mode(schema),
        ),
    )


def has_pair_mode(schema: pa.Schema) -> bool:
    """Whether ``schema``'s ``provenance`` struct has a ``pair_mode`` field."""
    index = schema.get_field_index("provenance")
    if index < 0:
        return False
    kind = schema.field(index).type
    return bool(pa.types.is_struct(kind) and kind.get_field_index("pair_mode") >= 0)


# -- shared plumbing ------------------------------------------------------------------------


def parquet_files(path: Path) -> list[Path]:
    """``path`` if it is a parquet file, else the parquet files under the folder ``path``."""
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else []
    if not files:
        raise DatasetFormatError(f"{path} is neither a .parquet file nor a folder holding some")
    return files


def iter_parquet_rows(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The rows of parquet ``files`` as raw dicts (images as ``{"bytes", "path"}``), a batch at
    a time in memory."""
    for path in files:
        try:
            handle = pq.ParquetFile(path)
            for batch in handle.iter_batches(batch_size=_BATCH):
                yield from batch.to_pylist()
        except (OSError, pa.ArrowException) as error:
            raise DatasetFormatError(f"cannot read parquet file {path}: {error}") from error


def _raw_rows(pairs: datasets.Dataset | Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows with their images undecoded (``{"bytes", "path"}``): a ``Dataset`` is read as Arrow."""
    if isinstance(pairs, datasets.Dataset):
        for batch in pairs.with_format("arrow").iter(batch_size=_BATCH):
            yield from batch.to_pylist()
    else:
        for row in pairs:
            yield dict(row)


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowException, TypeError, ValueError) as error:
        ids = ", ".join(repr(r.get("id")) for r in rows[:3])
        raise DatasetFormatError(f"rows {ids}...: cannot be stored: {error}") from error


def _dataset(rows: Iterable[dict[str, Any]], features: Features) -> datasets.Dataset:
    schema = features.arrow_schema
    tables, batch = [], []
    for row in rows:
        batch.append(row)
        if len(batch) >= _BATCH:
            tables.append(_table(batch, schema))
            batch = []
    tables.append(_table(batch, schema))
    return datasets.Dataset(pa.concat_tables(tables))


def write_parquet(
    rows: Iterable[dict[str, Any]], path: Path, features: Features, *, group_rows: int = 100
) -> int:
    """Write ``rows`` to a new parquet file ``path`` with ``features`` in its schema (so
    ``datasets`` reads images back as images), ``group_rows`` rows per row group. Returns the
    number of rows."""
    schema = features.arrow_schema
    try:
        sink = path.open("xb")
    except FileExistsError:
        raise DatasetFormatError(f"{path} already exists; it is left as it is") from None
    count = 0
    with sink, pq.ParquetWriter(sink, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            count += 1
            if len(batch) >= group_rows:
                writer.write_table(_table(batch, schema))
                batch = []
        if batch or count == 0:
            writer.write_table(_table(batch, schema))
    return count
