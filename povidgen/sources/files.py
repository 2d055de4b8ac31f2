"""Reading input datasets from disk: ``save_to_disk`` folders, parquet, JSON Lines, JSON, and
LLaVA/POVID-style conversation files.

A LLaVA-style file is a JSON list (or JSON Lines) of records ``{"id", "image",
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...},
...]}``. It is flattened to one row per record with columns ``id``, ``image`` (the path as
written, resolved later against an image folder), ``prompt`` (the first human turn, without the
``<image>`` placeholder), ``answer`` (the first gpt turn) and ``conversations`` (the original
turns as JSON). :class:`povidgen.PairBuilder` reads the exchanges from ``conversations``: the
first only by default, or the last or every one with ``turns=`` (``--turns``), each later one
with the earlier ones as context (:mod:`povidgen.sources.conversations`); records with several
exchanges are counted in a log message.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from povidgen.errors import DatasetFormatError

__all__ = ["is_llava_records", "llava_to_rows", "load_examples_file"]

logger = logging.getLogger("povidgen")


def load_examples_file(
    path: str | os.PathLike[str], *, split: str | None = None
) -> datasets.Dataset:
    """Load a dataset of examples from ``path``.

    ``path`` is a ``datasets`` ``save_to_disk`` folder (``split`` picks one split of a
    ``DatasetDict``; without it a single split is taken as it is, else ``train``), a
    ``.parquet`` file, a ``.jsonl`` file, or a ``.json`` file holding a list of records;
    LLaVA-style records are flattened (see the module docstring). Raises
    :class:`povidgen.DatasetFormatError` with the reason otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(f"no dataset at {path}")
    if path.is_dir():
        return _load_saved(path, split)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DatasetFormatError(f"{path} is neither a regular file nor a folder")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return datasets.Dataset.from_parquet(str(path))
        except Exception as error:
            raise DatasetFormatError(f"cannot read parquet file {path}: {error}") from error
    if suffix in (".jsonl", ".json"):
        records = _read_json_records(path)
        if is_llava_records(records):
            records = llava_to_rows(records)
        if not records:
            raise DatasetFormatError(f"{path} holds no records")
        try:
            return datasets.Dataset.from_list(records)
        except Exception as error:
            raise DatasetFormatError(f"cannot make a dataset of {path}: {error}") from error
    raise DatasetFormatError(
        f"cannot tell the format of {path}: expected a save_to_disk folder, or a .parquet, "
        ".jsonl or .json file"
    )


def _load_saved(path: Path, split: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise DatasetFormatError(
            f"{path} is not a datasets save_to_disk folder: {error}"
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            return next(iter(loaded.values()))
        if split is None and "train" in loaded:
            logger.info("%s holds the splits %s; reading 'train'", path, sorted(loaded))
            return loaded["train"]
        if split is None or split not in loaded:
            missing = "" if split is None else f"has no split {split!r}: it "
            raise DatasetFormatError(
                f"{path} {missing}holds the splits {sorted(loaded)}; choose one with "
                "split= (--split)"
            )
        return loaded[split]
    if split is not None:
        raise DatasetFormatError(f"{path} holds a single dataset, not splits; drop split=")
    return loaded


def _read_json_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetFormatError(f"{path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetFormatError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8"
        ) from error
    except OSError as error:
        raise DatasetFormatError(f"cannot read {path}: {error.strerror or error}") from error
    records: Any
    if path.suffix.lower() == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DatasetFormatError(
                    f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno})"
                ) from error
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DatasetFormatError(f"{path} must hold a list of JSON objects (one per example)")
    return records


def is_llava_records(records: list[dict[str, Any]]) -> bool:
    """Whether ``records`` look like LLaVA/POVID conversation records."""
    return bool(records) and "conversations" in records[0]


def llava_to_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten LLaVA-style records to ``id, image, prompt, answer, conversations`` rows.

    A record whose turns cannot be read gets an empty prompt or answer, which the pair builder
    records as a per-row error.
    """
    rows: list[dict[str, Any]] = []
    multi_turn = 0
    for position, record in enumerate(records):
        turns = record.get("conversations")
        prompt = answer = ""
        if isinstance(turns, list):
            human = [t for t in turns if isinstance(t, dict) and t.get("from") == "human"]
            gpt = [t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
            if human and isinstance(human[0].get("value"), str):
                prompt = human[0]["value"]
            if gpt and isinstance(gpt[0].get("value"), str):
                answer = gpt[0]["value"]
            multi_turn += len(gpt) > 1
        image = record.get("image")
        rows.append(
            {
                "id": str(record.get("id", position)),
                "image": image if isinstance(image, str) else None,
                "prompt": prompt,
                "answer": answer,
                "conversations": json.dumps(turns, ensure_ascii=False),
            }
        )
    if multi_turn:
        logger.warning(
            "%d of %d LLaVA records have several exchanges; by default only the first "
            "becomes a pair (--turns all or last, or turns= in Python, for the others)",
            multi_turn,
            len(records),
        )
    return rows
