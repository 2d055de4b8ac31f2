"""``povidgen export``: write pairs in another layout, and open any layout as pairs.

::

    povidgen export SOURCE --format trl|llava|vlfeedback --out DIR [--image-folder DIR]

``SOURCE`` is anything :func:`detect_format` recognises: a ``povidgen build`` output folder (its
finished shards), a ``save_to_disk`` folder, a TRL or VLFeedback-style parquet file or folder, a
LLaVA/POVID ``.json``/``.jsonl`` file (images under ``--image-folder``, by default the file's
folder), or a folder an earlier export wrote. ``--out`` receives::

    povidgen-export.json        the marker: povidgen wrote this folder; format, source, rows
    data/train-00000.parquet    trl and vlfeedback (10,000 rows a file; load_dataset(DIR) reads it)
    pairs.json                  llava: the records, POVID's layout
    images/                     llava: the image files the records' "image" paths name

Rows stream from the source to the output (a row group at a time in memory; a LLaVA file's
records are read whole). ``--out`` must be new or empty; a folder holding the marker is
replaced only with ``--overwrite``; anything else is refused and left untouched. The output is
written in a sibling staging folder and renamed into place when finished, so a failed export
leaves nothing behind, and it must not be, hold or lie inside an input.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from povidgen.convert.formats import (
    FORMATS,
    Format,
    from_llava,
    from_vlfeedback,
    has_pair_mode,
    iter_llava_rows,
    iter_parquet_rows,
    iter_vlfeedback_rows,
    parquet_files,
    read_llava_records,
    to_llava,
    vlfeedback_features,
    vlfeedback_row,
    write_parquet,
)
from povidgen.errors import DatasetFormatError
from povidgen.pairs.output import OutputFolderError, unwritable_parent
from povidgen.pairs.trl_format import pair_features

__all__ = [
    "EXPORT_MARKER",
    "IMAGES_DIR",
    "LLAVA_FILE",
    "ExportReport",
    "add_parser",
    "detect_format",
    "export",
    "read_pairs",
]

EXPORT_MARKER = "povidgen-export.json"
"""The file that marks a folder as written by ``povidgen export``."""
LLAVA_FILE = "pairs.json"
IMAGES_DIR = "images"
_DATA_DIR = "data"
_SHARD_ROWS = 10_000


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote: ``rows`` pairs in ``format`` to ``out`` (and, for llava,
    ``image_files`` new image files), read as ``source_format``."""

    out: Path
    format: Format
    source_format: Format
    rows: int
    image_files: int


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") in FORMATS else None


def _parquet_format(files: list[Path]) -> Format:
    try:
        names = set(pq.read_schema(files[0]).names)
    except (OSError, pa.ArrowException) as error:
        raise DatasetFormatError(f"cannot read parquet file {files[0]}: {error}") from error
    if "completions" in names:
        return "vlfeedback"
    if {"prompt", "chosen", "rejected"} <= names:
        return "trl"
    raise DatasetFormatError(
        f"{files[0]} has neither chosen/rejected (trl) nor completions (vlfeedback) columns; "
        f"it has: {', '.join(sorted(names))}"
    )


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The layout of the pairs at ``path`` (see the module docstring for what is recognised).

    Raises:
        DatasetFormatError: none of them.
    """
    from povidgen.pairs.shards import MANIFEST

    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(f"no file or folder {path}")
    if path.is_dir():
        marker = _marker(path)
        if marker is not None:
            fmt: Format = marker["format"]
            return fmt
        if (path / MANIFEST).is_file() or (path / "dataset_info.json").is_file():
            return "trl"
        return _parquet_format(parquet_files(path))
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return "llava"
    if suffix == ".parquet":
        return _parquet_format([path])
    raise DatasetFormatError(
        f"cannot tell the layout of {path}: expected a pairs folder, a .parquet file or a "
        "LLaVA .json/.jsonl file"
    )


@dataclass
class _Source:
    format: Format
    rows: Callable[[], Iterator[dict[str, Any]]]
    with_rejected_images: bool
    inputs: list[Path]
    with_pair_mode: bool = False
    """Whether ``provenance`` carries ``pair_mode`` (a build with pair modes), kept on export."""


def _trl_dataset_rows(dataset: datasets.Dataset) -> Iterator[dict[str, Any]]:
    for batch in dataset.with_format("arrow").iter(batch_size=64):
        yield from batch.to_pylist()


def _open_source(path: Path, image_folder: Path | None) -> _Source:
    from povidgen.pairs.shards import MANIFEST, shard_files

    fmt = detect_format(path)
    if image_folder is not None and fmt != "llava":
        raise DatasetFormatError(f"--image-folder is only for LLaVA sources; {path} is {fmt}")
    if fmt == "llava":
        json_path, folder = path, image_folder
        if path.is_dir():  # an earlier llava export
            json_path, folder = path / LLAVA_FILE, folder or path / IMAGES_DIR
        folder = folder if folder is not None else json_path.parent
        records = read_llava_records(json_path)
        return _Source(
            "llava",
            lambda: iter_llava_rows(records, folder),
            any(r.get("rejected_image") is not None for r in records),
            [path, folder],
            any("pair_mode" in (r.get("provenance") or {}) for r in records),
        )
    if fmt == "trl" and path.is_dir() and (path / MANIFEST).is_file():
        files = shard_files(path)
        if not files:
            raise DatasetFormatError(f"{path} holds no finished shard yet")
        schema = pq.read_schema(files[0])
        return _Source(
            "trl",
            lambda: iter_parquet_rows(files),
            "rejected_images" in schema.names,
            [path],
            has_pair_mode(schema),
        )
    if fmt == "trl" and path.is_dir() and (path / "dataset_info.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if not isinstance(loaded, datasets.Dataset):
            raise DatasetFormatError(f"{path} holds several splits, not one pairs dataset")
        return _Source(
            "trl",
            lambda: _trl_dataset_rows(loaded),
            "rejected_images" in loaded.column_names,
            [path],
            has_pair_mode(loaded.features.arrow_schema),
        )
    files = parquet_files(path)
    schema = pq.read_schema(files[0])
    with_rejected = "rejected_images" in schema.names
    if fmt == "vlfeedback":
        return _Source(
            "vlfeedback",
            lambda: iter_vlfeedback_rows(iter_parquet_rows(files)),
            with_rejected,
            [path],
            has_pair_mode(schema),
        )
    return _Source(
        "trl", lambda: iter_parquet_rows(files), with_rejected, [path], has_pair_mode(schema)
    )


def read_pairs(
    path: str | os.PathLike[str], *, image_folder: str | os.PathLike[str] | None = None
) -> datasets.Dataset:
    """Open pairs in any layout as a TRL-format ``datasets.Dataset``.

    A ``povidgen build`` folder opens with :func:`povidgen.load_pairs` (memory-mapped); a
    LLaVA/POVID file with :func:`~povidgen.convert.from_llava` (``image_folder`` as there),
    VLFeedback-style parquet with :func:`~povidgen.convert.from_vlfeedback`, and TRL parquet or
    an export folder as it is (in memory).
    """
    from povidgen.pairs.shards import MANIFEST, load_pairs

    path = Path(path)
    fmt = detect_format(path)
    if fmt == "llava":
        if path.is_dir():
            return from_llava(path / LLAVA_FILE, image_folder or path / IMAGES_DIR)
        return from_llava(path, image_folder)
    if image_folder is not None:
        raise DatasetFormatError(f"image_folder is only for LLaVA sources; {path} is {fmt}")
    if fmt == "vlfeedback":
        return from_vlfeedback(path)
    if path.is_dir() and ((path / MANIFEST).is_file() or (path / "dataset_info.json").is_file()):
        return load_pairs(path)
    files = parquet_files(path)
    try:
        return datasets.Dataset(pa.concat_tables([pq.read_table(f) for f in files]))
    except (OSError, pa.ArrowException) as error:
        raise DatasetFormatError(f"cannot read the parquet files of {path}: {error}") from error


# -- the output folder ----------------------------------------------------------------------


def _check_out(out: Path, *, overwrite: bool, inputs: list[Path]) -> None:
    """Raise :class:`OutputFolderError` unless ``out`` is new, empty, or (with ``overwrite``)
    an earlier export; and never an input or around one."""
    if out.is_symlink():
        raise OutputFolderError(f"--out {out} is a symbolic link; give a real folder")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder")
    problem = unwritable_parent(out)
    if problem is not None:
        raise OutputFolderError(f"--out {out}: {problem}")
    resolved = out.resolve()
    for source in inputs:
        source = source.resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise OutputFolderError(
                f"--out {out} is, holds or lies inside the input {source}; choose a folder "
                "apart from the inputs"
            )
    if out.is_dir() and any(out.iterdir()):
        if _marker(out) is None:
            raise OutputFolderError(
                f"--out {out} exists, is not empty and is not a povidgen export (no "
                f"{EXPORT_MARKER}); choose a new or empty folder"
            )
        if not overwrite:
            raise OutputFolderError(
                f"--out {out} holds an earlier export; pass --overwrite to replace it"
            )


def _write_shards(rows: Iterator[dict[str, Any]], folder: Path, features: datasets.Features) -> int:
    """``rows`` as ``folder/train-NNNNN.parquet`` files of at most 10,000 rows (one file, empty,
    when there are none)."""
    folder.mkdir()
    total = 0
    for number in itertools.count():
        first = next(rows, None)
        if first is None and number > 0:
            break
        chunk = itertools.chain(
            [] if first is None else [first], itertools.islice(rows, _SHARD_ROWS - 1)
        )
        total += write_parquet(chunk, folder / f"train-{number:05d}.parquet", features)
        if first is None:
            break
    return total


def export(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: Format = "trl",
    image_folder: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Convert the pairs at ``source`` (any layout :func:`detect_format` knows) to ``format`` in
    the folder ``out`` (laid out as in the module docstring).

    Args:
        source: the pairs to convert.
        out: a new or empty folder, or (with ``overwrite``) one an earlier export wrote.
        format: ``"trl"``, ``"llava"`` or ``"vlfeedback"``.
        image_folder: where a LLaVA source's image paths point (default: its file's folder).
        overwrite: replace an earlier export at ``out``.

    Raises:
        OutputFolderError: ``out`` cannot be used.
        DatasetFormatError: the source cannot be read, or a pair has no form in ``format``
            (the message names it).
    """
    from povidgen import __version__

    if format not in FORMATS:
        raise DatasetFormatError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    source, out = Path(source), Path(out)
    opened = _open_source(source, None if image_folder is None else Path(image_folder))
    _check_out(out, overwrite=overwrite, inputs=opened.inputs)
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=parent))
    try:
        image_files = 0
        rows = opened.rows()
        if format == "llava":
            count = to_llava(rows, staging / LLAVA_FILE, staging / IMAGES_DIR)
            images = staging / IMAGES_DIR
            image_files = sum(1 for p in images.rglob("*") if p.is_file()) if images.is_dir() else 0
        elif format == "vlfeedback":
            with_rejected = opened.with_rejected_images
            count = _write_shards(
                (vlfeedback_row(r, with_rejected_images=with_rejected) for r in rows),
                staging / _DATA_DIR,
                vlfeedback_features(
                    with_rejected_images=with_rejected, with_pair_mode=opened.with_pair_mode
                ),
            )
        else:
            features = pair_features(
                with_rejected_images=opened.with_rejected_images,
                with_pair_mode=opened.with_pair_mode,
            )
            count = _write_shards(rows, staging / _DATA_DIR, features)
        marker = {
            "format": format,
            "source": str(source.resolve()),
            "source_format": opened.format,
            "rows": count,
            "povidgen_version": __version__,
        }
        (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _check_out(out, overwrite=overwrite, inputs=opened.inputs)  # again: it may have changed
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(out, format, opened.format, count, image_files)


def _swap_in(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an earlier export there is moved aside, then removed."""
    aside = staging.with_name(staging.name + ".old")
    replaced = out.is_dir() and any(out.iterdir())
    if replaced:
        os.rename(out, aside)
    try:
        os.rename(staging, out)
    except OSError as error:
        if replaced:
            os.rename(aside, out)
        raise OutputFolderError(f"--out {out} changed during the export: {error}") from error
    if replaced:
        shutil.rmtree(aside, ignore_errors=True)


# -- the command line -----------------------------------------------------------------------


def add_parser(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Register ``export`` on the CLI's subcommands."""
    parser = subcommands.add_parser(
        "export",
        help="convert pairs to TRL, LLaVA/POVID or VLFeedback layout",
        description="Convert pairs (a build folder, TRL or VLFeedback parquet, a LLaVA/POVID "
        ".json file, or an earlier export) to another layout in a new folder.",
    )
    parser.add_argument("source", type=Path, metavar="SOURCE", help="the pairs to convert")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="trl",
        help="trl (parquet, default), llava (POVID's JSON and image files) or vlfeedback",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="a new or empty folder"
    )
    parser.add_argument(
        "--image-folder",
        type=Path,
        default=None,
        metavar="DIR",
        help="where a LLaVA source's image paths point (default: the .json file's folder)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export at --out"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``povidgen export``: 0 done, 1 no pairs in the source (errors raise, exit code 2)."""
    report = export(
        args.source,
        args.out,
        format=args.format,
        image_folder=args.image_folder,
        overwrite=args.overwrite,
    )
    where = {
        "llava": f"{LLAVA_FILE} and {report.image_files} files in {IMAGES_DIR}/",
        "trl": f"{_DATA_DIR}/",
        "vlfeedback": f"{_DATA_DIR}/",
    }[report.format]
    with contextlib.suppress(BrokenPipeError):
        print(
            f"exported {report.rows} pairs ({report.source_format} -> {report.format}) to "
            f"{report.out} ({where})",
            file=sys.stdout,
        )
    return 0 if report.rows else 1
