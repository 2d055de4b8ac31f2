"""The on-disk layout of a build: parquet shards written as rows finish, and what resumes them.

An output folder::

    povidgen-build.json          the marker: povidgen wrote this folder; the build's configuration
    data/train-00000.parquet     finished shards, rows in input order (``load_dataset(DIR)``)
    data/train-00001.parquet
    manifest.jsonl               one line per finished shard: its input range and row ids
    errors.jsonl                 one :class:`povidgen.RowError` per failed row, in input order
    summary.json                 counts, failures by stage and reason, cost, time, configuration

Rows are grouped into *segments* of consecutive input rows. A segment ends after the row that
brings its pairs to ``max_bytes`` of data or its rows (pairs and failures) to ``max_rows``, so
where shards end depends only on the rows, never on when a run was stopped: a resumed run writes
the same bytes as an uninterrupted one.

A segment is committed in this order, each step flushed to disk before the next:

1. ``data/.train-NNNNN.parquet.partial`` is closed and renamed to ``data/train-NNNNN.parquet``;
2. its failures are appended to ``errors.jsonl``;
3. its line is appended to ``manifest.jsonl``.

Only what the manifest names is finished. A run killed between steps leaves a shard or error
lines past the manifest; the next run removes the one and truncates the other. A run stopped
gracefully (Ctrl-C) also closes its open segment as a readable partial file with a sidecar
(``.partial.json``) listing its rows, and the next run takes those rows back instead of
making them again; a partial without its sidecar (SIGKILL) is discarded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from povidgen.schema import RowError

__all__ = [
    "DATA_DIR",
    "ERRORS",
    "MANIFEST",
    "SUMMARY",
    "ShardLimits",
    "ShardWriter",
    "features_of_configuration",
    "load_pairs",
    "read_manifest",
    "shard_files",
]

DATA_DIR = "data"
MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class ShardLimits:
    """Where segments and parquet row groups end.

    A shard closes after the row that brings it to ``max_bytes`` of pair data or ``max_rows``
    input rows; a row group after ``group_rows`` pairs or ``group_bytes`` bytes. Memory holds
    at most one row group, so ``group_bytes`` bounds what a run keeps of its output.
    """

    max_bytes: int = 512 * 2**20
    max_rows: int = 10_000
    group_rows: int = 100
    group_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_rows", "group_rows", "group_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, int]:
        """The limits as recorded in a build's configuration."""
        return {
            "max_bytes": self.max_bytes,
            "max_rows": self.max_rows,
            "group_rows": self.group_rows,
            "group_bytes": self.group_bytes,
        }


@dataclass
class Segment:
    """A finished shard as the manifest records it: its input range ``[first, end)``, the
    ids and input positions of its pairs, its failures' count and where they end in
    ``errors.jsonl``."""

    shard: str
    first: int
    end: int
    ids: list[str]
    positions: list[int]
    failed: int
    errors_end: int
    sha256: str
    seconds: float = 0.0
    cost_usd: float | None = None

    @property
    def pairs(self) -> int:
        return len(self.ids)

    def to_json(self) -> str:
        return json.dumps(
            {
                "shard": self.shard,
                "first": self.first,
                "end": self.end,
                "pairs": self.pairs,
                "failed": self.failed,
                "errors_end": self.errors_end,
                "sha256": self.sha256,
                "seconds": round(self.seconds, 3),
                "cost_usd": self.cost_usd,
                "ids": self.ids,
                "positions": self.positions,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, line: str) -> Segment:
        data = json.loads(line)
        return cls(
            shard=data["shard"],
            first=int(data["first"]),
            end=int(data["end"]),
            ids=[str(i) for i in data["ids"]],
            positions=[int(i) for i in data["positions"]],
            failed=int(data["failed"]),
            errors_end=int(data["errors_end"]),
            sha256=str(data["sha256"]),
            seconds=float(data.get("seconds", 0.0)),
            cost_usd=data.get("cost_usd"),
        )


@dataclass
class _Open:
    """The segment being written."""

    number: int
    first: int | None = None
    end: int = 0
    pairs: list[tuple[int, str]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    rows: int = 0
    data_bytes: int = 0
    buffer: list[dict[str, Any]] = field(default_factory=list)
    buffer_bytes: int = 0
    writer: pq.ParquetWriter | None = None


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _signals_held(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``method`` with Ctrl-C and SIGTERM held until it returns.

    The writer changes a file and its own bookkeeping together (a row group written, then
    the buffer emptied; a shard renamed, then its manifest line). Python delivers a signal
    between any two bytecodes, so an interrupt between the two halves would leave them out
    of step (a suspended shard holding a row group twice). Held, the signal's own handler
    runs as soon as the method returns: the interrupt lands between rows instead.
    Signals are held only where Python handles them (the main thread, a Python handler).
    """

    @functools.wraps(method)
    def held(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if threading.current_thread() is not threading.main_thread():
            return method(*args, **kwargs)
        caught: list[tuple[int, Any]] = []
        previous: dict[int, Callable[[int, Any], Any]] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if callable(handler):
                signal.signal(sig, lambda signum, frame: caught.append((signum, frame)))
                previous[sig] = handler
        try:
            return method(*args, **kwargs)
        finally:
            for held_signal, handler in previous.items():
                signal.signal(held_signal, handler)
            if caught:
                signum, frame = caught[0]
                previous[signum](signum, frame)

    return held


class ShardWriter:
    """Writes a build's outcomes, in input order, into ``folder`` as described above.

    Args:
        folder: the output (or staging) folder; povidgen's own.
        features: the pairs' ``datasets.Features`` (stored in each shard's schema, so
            ``load_dataset`` reads images back as images).
        limits: where shards and row groups end.

    After construction, :attr:`next_index` is the first input position not yet written:
    earlier rows are finished (the caller skips them) and rows taken back from a partial
    segment are already in the open segment.
    """

    @_signals_held
    def __init__(
        self, folder: Path, features: datasets.Features, limits: ShardLimits = ShardLimits()
    ) -> None:
        self.folder = folder
        self.features = features
        self.schema = features.arrow_schema
        self.limits = limits
        (folder / DATA_DIR).mkdir(exist_ok=True)
        (folder / MANIFEST).touch()
        self.segments = read_manifest(folder)
        self._repair()
        self._open = _Open(number=len(self.segments))
        self.next_index = self.segments[-1].end if self.segments else 0
        self._segment_seconds = 0.0
        self._segment_cost: float | None = None
        self._take_back_partial()

    # -- state --------------------------------------------------------------------------------

    @property
    def pairs(self) -> int:
        """Pairs written so far (finished shards and the open one)."""
        return sum(s.pairs for s in self.segments) + len(self._open.pairs)

    @property
    def failed(self) -> int:
        """Failed rows written so far."""
        return sum(s.failed for s in self.segments) + len(self._open.errors)

    def taken_back(self) -> tuple[list[tuple[int, str]], list[RowError]]:
        """The open segment's pairs (position, id) and failures so far."""
        return list(self._open.pairs), list(self._open.errors)

    # -- writing ------------------------------------------------------------------------------

    @_signals_held
    def add_pair(self, index: int, row_id: str, row: dict[str, Any], size: int) -> None:
        """Add the pair at input position ``index`` (its ``row`` in the pairs' columns; ``size``
        its image and text bytes, which bound shards and row groups)."""
        segment = self._start(index)
        segment.pairs.append((index, row_id))
        segment.buffer.append(row)
        segment.buffer_bytes += size
        segment.data_bytes += size
        if (
            len(segment.buffer) >= self.limits.group_rows
            or segment.buffer_bytes >= self.limits.group_bytes
        ):
            self._flush_group(segment)
        self._row_done()

    @_signals_held
    def add_error(self, error: RowError) -> None:
        """Add the failure at input position ``error.index``."""
        self._start(error.index).errors.append(error)
        self._row_done()

    def account(self, *, seconds: float, cost_usd: float | None) -> None:
        """Time and cost spent since the last call, credited to the open segment."""
        self._segment_seconds += seconds
        if cost_usd is not None:
            self._segment_cost = (self._segment_cost or 0.0) + cost_usd

    @_signals_held
    def finish(self) -> None:
        """Commit the open segment; a build with no row at all still gets one (empty) shard,
        so the folder opens as a dataset with every column."""
        if self._open.first is not None or not self.segments:
            if self._open.first is None:
                self._open.first = self.next_index
                self._open.end = self.next_index
            self._commit()

    @_signals_held
    def suspend(self) -> None:
        """Keep the open segment as a partial file and sidecar for the next run (Ctrl-C)."""
        segment = self._open
        if segment.first is None:
            return
        self._flush_group(segment, force_writer=True)
        assert segment.writer is not None
        segment.writer.close()
        segment.writer = None
        sidecar = {
            "number": segment.number,
            "first": segment.first,
            "end": segment.end,
            "pairs": [[i, row_id] for i, row_id in segment.pairs],
            "errors": [e.model_dump(mode="json") for e in segment.errors],
            "data_bytes": segment.data_bytes,
            "rows": segment.rows,
        }
        _fsync_file(self._partial_path(segment.number))
        _write_atomically(self._sidecar_path(segment.number), json.dumps(sidecar))

    @_signals_held
    def abandon(self) -> None:
        """Drop the open segment (its rows are made again by the next run)."""
        segment = self._open
        if segment.writer is not None:
            with contextlib.suppress(Exception):
                segment.writer.close()
            segment.writer = None
        self._partial_path(segment.number).unlink(missing_ok=True)

    # -- internals ----------------------------------------------------------------------------

    def _start(self, index: int) -> _Open:
        segment = self._open
        if index < self.next_index:
            raise ValueError(f"row {index} comes after row {self.next_index - 1}: out of order")
        if segment.first is None:
            segment.first = index
        segment.end = index + 1
        self.next_index = index + 1
        return segment

    def _row_done(self) -> None:
        segment = self._open
        segment.rows += 1
        if segment.data_bytes >= self.limits.max_bytes or segment.rows >= self.limits.max_rows:
            self._commit()

    def _flush_group(self, segment: _Open, *, force_writer: bool = False) -> None:
        if segment.writer is None and (segment.buffer or force_writer):
            segment.writer = pq.ParquetWriter(
                self._partial_path(segment.number), self.schema, **_writer_options(self.schema)
            )
        if segment.buffer:
            assert segment.writer is not None
            table = pa.Table.from_pylist(segment.buffer, schema=self.schema)
            segment.writer.write_table(table, row_group_size=len(segment.buffer))
            segment.buffer = []
            segment.buffer_bytes = 0

    def _commit(self) -> None:
        segment = self._open
        assert segment.first is not None
        self._flush_group(segment, force_writer=True)
        assert segment.writer is not None
        segment.writer.close()
        segment.writer = None
        partial = self._partial_path(segment.number)
        shard = self.folder / _shard_name(segment.number)
        _fsync_file(partial)
        os.replace(partial, shard)
        self._sidecar_path(segment.number).unlink(missing_ok=True)
        errors_path = self.folder / ERRORS
        with errors_path.open("ab") as handle:
            for error in segment.errors:
                line = json.dumps(error.model_dump(mode="json"), ensure_ascii=False) + "\n"
                handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            errors_end = handle.tell()
        record = Segment(
            shard=_shard_name(segment.number),
            first=segment.first,
            end=segment.end,
            ids=[row_id for _, row_id in segment.pairs],
            positions=[index for index, _ in segment.pairs],
            failed=len(segment.errors),
            errors_end=errors_end,
            sha256=_sha256(shard),
            seconds=self._segment_seconds,
            cost_usd=self._segment_cost,
        )
        with (self.folder / MANIFEST).open("a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.folder / DATA_DIR)
        self.segments.append(record)
        self._segment_seconds = 0.0
        self._segment_cost = None
        self._open = _Open(number=segment.number + 1)

    def _repair(self) -> None:
        """Remove what a killed run wrote past the manifest."""
        manifest = self.folder / MANIFEST
        if len(manifest.read_text(encoding="utf-8").splitlines()) != len(self.segments):
            # keep only the lines that hold; the rest are made again
            _write_atomically(manifest, "".join(s.to_json() + "\n" for s in self.segments))
        data = self.folder / DATA_DIR
        named = {s.shard for s in self.segments}
        number = len(self.segments)
        for path in data.glob("train-*.parquet"):
            if f"{DATA_DIR}/{path.name}" not in named:
                path.unlink()
        for path in data.glob(".train-*.parquet.partial*"):
            if not path.name.startswith(f".train-{number:05d}."):
                path.unlink()  # a partial of an older segment: stale
        errors = self.folder / ERRORS
        end = self.segments[-1].errors_end if self.segments else 0
        if errors.exists() and errors.stat().st_size != end:
            with errors.open("r+b") as handle:
                handle.truncate(end)
        elif not errors.exists():
            errors.touch()

    def _take_back_partial(self) -> None:
        """Reopen the rows a gracefully stopped run kept in its partial segment."""
        number = self._open.number
        partial, sidecar_path = self._partial_path(number), self._sidecar_path(number)
        if not sidecar_path.exists():
            partial.unlink(missing_ok=True)  # killed mid-write: made again
            return
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
            table = pq.read_table(partial, schema=self.schema) if partial.exists() else None
            if int(sidecar["first"]) != self.next_index or int(sidecar["number"]) != number:
                raise ValueError("the partial segment does not follow the manifest")
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            partial.unlink(missing_ok=True)
            sidecar_path.unlink(missing_ok=True)
            return
        rows = table.to_pylist() if table is not None else []
        pairs = [(int(i), str(row_id)) for i, row_id in sidecar["pairs"]]
        errors = [RowError.model_validate(e) for e in sidecar["errors"]]
        if len(rows) != len(pairs):
            partial.unlink(missing_ok=True)
            sidecar_path.unlink(missing_ok=True)
            return
        partial.unlink()
        sidecar_path.unlink()
        # replayed through the same path, so row groups and shard ends fall where an
        # uninterrupted run puts them
        by_index: dict[int, tuple[str, dict[str, Any]] | RowError] = {
            i: (row_id, row) for (i, row_id), row in zip(pairs, rows, strict=True)
        }
        by_index.update({e.index: e for e in errors})
        for index in sorted(by_index):
            item = by_index[index]
            if isinstance(item, RowError):
                self.add_error(item)
            else:
                self.add_pair(index, item[0], item[1], row_size(item[1]))
        self._open.end = max(self._open.end, int(sidecar["end"]))
        self.next_index = max(self.next_index, int(sidecar["end"]))

    def _partial_path(self, number: int) -> Path:
        return self.folder / DATA_DIR / f".train-{number:05d}.parquet.partial"

    def _sidecar_path(self, number: int) -> Path:
        return self.folder / DATA_DIR / f".train-{number:05d}.parquet.partial.json"


def row_size(row: Mapping[str, Any]) -> int:
    """The bytes a pair row adds to a shard, counted as its image bytes plus its texts."""
    size = 0
    for column in ("images", "rejected_images"):
        for image in row.get(column) or ():
            size += len(image.get("bytes") or b"")
    for column in ("prompt", "chosen", "rejected"):
        for message in row.get(column) or ():
            for part in message["content"]:
                size += len((part.get("text") or "").encode("utf-8"))
    return size + 256


def read_manifest(folder: Path) -> list[Segment]:
    """The finished segments of the build in ``folder`` (a torn last line is ignored: that
    segment was not finished). Reading changes nothing; a :class:`ShardWriter` resuming the
    build rewrites the manifest without such lines."""
    path = folder / MANIFEST
    if not path.exists():
        return []
    segments = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            segment = Segment.from_json(line)
        except (ValueError, KeyError, TypeError):
            break
        if segment.shard != _shard_name(number) or not (folder / segment.shard).is_file():
            break
        segments.append(segment)
    return segments


def shard_files(folder: Path) -> list[Path]:
    """The finished shard files of the build in ``folder``, in input order."""
    return [folder / s.shard for s in read_manifest(folder)]


def load_pairs(
    folder: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> datasets.Dataset:
    """Open a build's output folder as a ``datasets.Dataset`` (memory-mapped, not in RAM).

    Reads the parquet shards the manifest names, in input order. A build that stopped early
    (Ctrl-C, a cost cap) also has a partial shard, which is read after them, so what was made
    so far can be used; ``summary.json`` says whether the build is complete. A folder written
    by ``save_to_disk`` (povidgen before 0.2, or any other) opens with ``load_from_disk``.
    ``datasets.load_dataset(DIR, split="train")`` reads the finished shards alike.

    Raises:
        DatasetFormatError: ``folder`` holds neither.
    """
    from povidgen.errors import DatasetFormatError

    path = Path(folder)
    if (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if not isinstance(loaded, datasets.Dataset):
            raise DatasetFormatError(f"{path} holds several splits, not one pairs dataset")
        return loaded
    if not path.is_dir() or not (path / MANIFEST).is_file():
        raise DatasetFormatError(f"{path} is not a pairs folder (no {MANIFEST})")
    segments = read_manifest(path)
    files = [path / s.shard for s in segments]
    partial = path / DATA_DIR / f".train-{len(segments):05d}.parquet.partial"
    if partial.is_file() and partial.with_name(partial.name + ".json").is_file():
        files.append(partial)
    if files:
        features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    else:
        features = _features_of(path)
    if not any(pq.ParquetFile(f).metadata.num_rows for f in files):
        # datasets cannot build a split from files without rows: the empty table, every column
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    loaded = datasets.load_dataset(
        "parquet",
        data_files=[str(f) for f in files],
        split="train",
        features=features,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    assert isinstance(loaded, datasets.Dataset)
    return loaded


def _features_of(folder: Path) -> datasets.Features:
    """The columns a build writes, from its marker's configuration."""
    from povidgen.pairs.output import MARKER
    from povidgen.pairs.trl_format import pair_features

    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return features_of_configuration(marker["configuration"])
    except (OSError, ValueError, KeyError, TypeError):
        return pair_features(with_rejected_images=False)


def features_of_configuration(configuration: Mapping[str, Any]) -> datasets.Features:
    """The columns of the build whose configuration (``povidgen-build.json``) this is:
    ``rejected_images`` when it stores them, ``provenance.pair_mode`` when it has pair modes.

    Raises:
        KeyError: the configuration does not say whether rejected images are stored.
    """
    from povidgen.pairs.modes import PairModes
    from povidgen.pairs.trl_format import pair_features

    return pair_features(
        with_rejected_images=bool(configuration["rejected_images"]),
        with_pair_mode=PairModes.recorded(configuration),
    )


def iter_shard_rows(files: Sequence[Path], batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """The rows of ``files`` one by one as Python dicts (a row group at a time in memory)."""
    for path in files:
        handle = pq.ParquetFile(path)
        for batch in handle.iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()


def _shard_name(number: int) -> str:
    return f"{DATA_DIR}/train-{number:05d}.parquet"


def _writer_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet writer settings for ``schema``: binary columns (encoded images) are stored as
    they are, the rest with pyarrow's defaults (snappy, dictionary, statistics).

    PNG and JPEG bytes are compressed already, a dictionary of values hundreds of kilobytes
    long never pays, and min/max statistics over them are bytes nobody reads; snappy, the
    dictionary attempt and the statistics cost about 1.2 ms of CPU a 336x336 row, two thirds
    of the write, for a file of the same size.
    """
    columns = _parquet_columns(schema)
    others = [path for path, binary in columns if not binary]
    return {
        "compression": {path: "none" if binary else "snappy" for path, binary in columns},
        "use_dictionary": others,
        "write_statistics": others,
    }


@functools.cache
def _parquet_columns(schema: pa.Schema) -> tuple[tuple[str, bool], ...]:
    """``(path, is_binary)`` for each leaf column parquet makes of ``schema``."""
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)
    columns = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
    return tuple(
        (
            column.path,
            column.physical_type == "BYTE_ARRAY" and str(column.logical_type) == "None",
        )
        for column in (columns.column(i) for i in range(len(columns)))
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
