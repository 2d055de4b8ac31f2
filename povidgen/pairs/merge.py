"""``povidgen merge``: join the outputs of a build split with ``--num-shards N`` into one.

Each of the ``N`` shard outputs holds the rows whose id hashes to its ``--shard-index``, with
their input positions (the manifest's ``positions`` for pairs, ``index`` for failures). The
merge reads them back in input order (a k-way merge, one row group per shard in memory at a
time) and writes them through the same :class:`povidgen.pairs.shards.ShardWriter`, with the
same shard limits, so the merged folder equals the output of one run over the whole input:
the same ``data/`` files, byte for byte, the same ``errors.jsonl`` and manifest (less the
per-segment time and cost), and a ``summary.json`` and marker whose configuration is that of
one run (``num_shards`` 1, ``shard_index`` 0).

The inputs are checked before anything is written: each must be a finished povidgen build
(``summary.json`` says ``complete``), all with the same configuration but for
``shard_index``, whose ``num_shards`` is the number of folders given, each share present once.
Every shard file is checked against the SHA-256 its manifest records as it is read, and the
rows must cover the input positions ``0..rows-1`` exactly once.

The output follows the rules of :mod:`povidgen.pairs.output`: it is locked, never an input,
never a folder povidgen did not write; the merge is written into a staging folder and swapped
in only when finished, so a failed or interrupted merge leaves ``OUT`` as it was. A folder
that already holds this build, finished, is left alone unless ``overwrite``; one holding an
unfinished run of this build (``num_shards`` 1) is replaced by the finished merge, as a build
would resume it; another build there is an error naming the difference unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import shutil
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from povidgen.errors import PovidgenError
from povidgen.pairs.duplicates import DROP_KINDS, drop_kind
from povidgen.pairs.modes import PairModes
from povidgen.pairs.output import MARKER, OutputFolder, read_json_object
from povidgen.pairs.shards import (
    DATA_DIR,
    ERRORS,
    MANIFEST,
    SUMMARY,
    Segment,
    ShardLimits,
    ShardWriter,
    features_of_configuration,
    row_size,
)
from povidgen.schema import RowError

__all__ = ["MergeError", "MergeReport", "merge_builds"]

logger = logging.getLogger("povidgen")

_BATCH_ROWS = 16
"""Rows decoded from a shard file at a time (pyarrow still reads a row group at once)."""


class MergeError(PovidgenError):
    """The shard outputs cannot be merged (the message names the folder and the problem)."""


@dataclass
class MergeReport:
    """What :func:`merge_builds` wrote (or found already there)."""

    rows: int = 0
    """Input rows in the merged output (pairs and failures)."""
    pairs: int = 0
    """Pairs in the merged output."""
    failed: int = 0
    """Rows that failed (the lines of ``errors.jsonl`` other than dropped rows)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped on purpose, by kind (``near_duplicate``, ``repeated``; see
    :mod:`povidgen.pairs.duplicates`), kinds with none left out."""
    shards: int = 0
    """Parquet files in the merged output's ``data/`` folder."""
    already_complete: bool = False
    """``OUT`` already held this build, finished; nothing was written."""


@dataclass
class _Share:
    """One shard output, checked."""

    path: Path
    configuration: dict[str, Any]
    summary: dict[str, Any]
    segments: list[Segment]

    @property
    def shard_index(self) -> int:
        return int(self.configuration["shard_index"])


@dataclass(order=True)
class _Item:
    """One row of a share, ready to be written: a pair (``row_id``, ``row``) or a failure
    (``error``). ``seconds`` and ``cost_usd`` are the time and cost of the share's segment,
    carried by that segment's last row."""

    position: int
    share: int = field(compare=False)
    row_id: str | None = field(default=None, compare=False)
    row: dict[str, Any] | None = field(default=None, compare=False)
    error: RowError | None = field(default=None, compare=False)
    seconds: float = field(default=0.0, compare=False)
    cost_usd: float | None = field(default=None, compare=False)


def merge_builds(
    out: str | os.PathLike[str],
    folders: Sequence[str | os.PathLike[str]],
    *,
    overwrite: bool = False,
) -> MergeReport:
    """Merge the outputs of one build run as ``--num-shards N`` shares into ``out``.

    The result equals one run of the build over the whole input (the same parquet files
    byte for byte, the same ``errors.jsonl``), with ``num_shards`` 1 and ``shard_index`` 0 in
    its configuration, and a ``summary.json`` whose counts, failures, time and cost add up
    those of the shares. Memory holds about one row group per share.

    Args:
        out: the merged output folder (the rules of :mod:`povidgen.pairs.output`).
        folders: the ``N`` shard outputs, in any order.
        overwrite: replace an earlier povidgen output at ``out`` (a finished folder with this
            configuration is otherwise left alone, and another build there is an error).

    Returns:
        The counts of the merged output.

    Raises:
        MergeError: a folder is not a finished povidgen build, the configurations differ (the
            message names the setting), a share is missing or given twice, or a shard file
            does not match its manifest.
        OutputFolderError: ``out`` cannot be used (the message says why).
    """
    paths = [Path(folder) for folder in folders]
    if not paths:
        raise MergeError("merge needs the shard output folders of a build; none was given")
    target = OutputFolder(out, overwrite=overwrite, inputs=paths)
    target.check()
    shares = _check_shares([_read_share(path) for path in paths])
    configuration = dict(shares[0].configuration, num_shards=1, shard_index=0)
    limits = _limits(configuration)
    with target.lock():
        state = target.state(configuration)
        if state == "complete":
            logger.info("%s already holds this build, finished; nothing to do", target.path)
            summary = read_json_object(target.path / SUMMARY) or {}
            return MergeReport(
                rows=int(summary.get("rows", 0)),
                pairs=int(summary.get("pairs", 0)),
                failed=int(summary.get("failed", 0)),
                shards=int(summary.get("shards", 0)),
                already_complete=True,
                dropped={k: int(n) for k, n in (summary.get("dropped") or {}).items() if n},
            )
        staging = target.staging(configuration)
        try:
            report = _merge_into(staging, shares, configuration, limits)
            target.commit(staging)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise MergeError(f"merging into {target.path} failed: {error}") from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info(
        "merged %d shard outputs into %s: %d pairs from %d rows (%d failed)",
        len(shares),
        target.path,
        report.pairs,
        report.rows,
        report.failed,
    )
    return report


# -- the inputs ---------------------------------------------------------------------------------


def _read_share(path: Path) -> _Share:
    """The marker, summary and manifest of the shard output at ``path``, checked."""
    if not path.is_dir():
        raise MergeError(f"{path} is not a folder")
    marker = read_json_object(path / MARKER)
    if marker is None:
        raise MergeError(f"{path} is not a povidgen build output (no readable {MARKER})")
    configuration = marker.get("configuration")
    if not isinstance(configuration, dict) or not {"num_shards", "shard_index", "shards"} <= set(
        configuration
    ):
        raise MergeError(
            f"{path} holds a povidgen output in an older layout, which cannot be merged; "
            "build it again with this version"
        )
    summary = read_json_object(path / SUMMARY)
    if summary is None or summary.get("complete") is not True:
        why = "has no summary.json" if summary is None else "summary.json says it is not complete"
        stopped = summary.get("stopped") if summary else None
        raise MergeError(
            f"{path} holds an unfinished build ({why}"
            f"{f', stopped: {stopped}' if stopped else ''}); run its povidgen build command "
            "again to finish it, then merge"
        )
    segments = _read_segments(path)
    pairs = sum(s.pairs for s in segments)
    failed = sum(s.failed for s in segments)  # the lines of errors.jsonl: dropped rows too
    dropped = summary.get("dropped") or {}
    recorded = summary.get("failed")
    if isinstance(recorded, int) and isinstance(dropped, dict):
        recorded += sum(int(n) for n in dropped.values() if isinstance(n, int))
    if (summary.get("pairs"), recorded) != (pairs, failed):
        raise MergeError(
            f"{path}: summary.json counts {summary.get('pairs')} pairs and "
            f"{recorded} failed or dropped rows, its manifest {pairs} and {failed}"
        )
    errors = path / ERRORS
    size = errors.stat().st_size if errors.is_file() else None
    if size != segments[-1].errors_end:
        raise MergeError(
            f"{path}: {ERRORS} holds {size} bytes, its manifest says "
            f"{segments[-1].errors_end}; the folder was changed after the build"
        )
    return _Share(path, configuration, summary, segments)


def _read_segments(path: Path) -> list[Segment]:
    """The manifest of ``path``, every line whole (it is not repaired: inputs are read only)."""
    try:
        lines = (path / MANIFEST).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise MergeError(f"{path}: cannot read {MANIFEST}: {error}") from error
    segments: list[Segment] = []
    for number, line in enumerate(lines):
        try:
            segment = Segment.from_json(line)
        except (ValueError, KeyError, TypeError) as error:
            raise MergeError(
                f"{path}: line {number + 1} of {MANIFEST} is broken ({error})"
            ) from None
        expected = f"{DATA_DIR}/train-{number:05d}.parquet"
        if segment.shard != expected or not (path / segment.shard).is_file():
            raise MergeError(
                f"{path}: line {number + 1} of {MANIFEST} names {segment.shard}, expected an "
                f"existing {expected}"
            )
        if len(segment.positions) != len(segment.ids):
            raise MergeError(
                f"{path}: {segment.shard} has {len(segment.ids)} ids but "
                f"{len(segment.positions)} positions in {MANIFEST}"
            )
        segments.append(segment)
    if not segments:
        raise MergeError(f"{path}: {MANIFEST} names no shard; the build is not finished")
    return segments


def _check_shares(shares: list[_Share]) -> list[_Share]:
    """``shares`` sorted by shard index, once each checked: one configuration (but for
    ``shard_index``), ``num_shards`` folders, every index once."""
    first = shares[0]
    base = {k: v for k, v in first.configuration.items() if k != "shard_index"}
    for share in shares[1:]:
        other = {k: v for k, v in share.configuration.items() if k != "shard_index"}
        if other != base:
            raise MergeError(
                f"{share.path} was built with another configuration than {first.path} "
                f"({_difference(other, base, share.path, first.path)}); only the shares of one "
                "build can be merged"
            )
    count = int(first.configuration["num_shards"])
    seen: dict[int, Path] = {}
    for share in shares:
        index = share.shard_index
        if not 0 <= index < count:
            raise MergeError(f"{share.path}: shard_index {index} is not in [0, {count})")
        if index in seen:
            raise MergeError(
                f"{seen[index]} and {share.path} are both shard {index} of {count}; give each "
                "share once"
            )
        seen[index] = share.path
    missing = [i for i in range(count) if i not in seen]
    if missing or len(shares) != count:
        listed = ", ".join(str(i) for i in missing)
        raise MergeError(
            f"the build was split into {count} shares (--num-shards {count}, as in "
            f"{first.path}) but {len(shares)} folders were given; missing shard index "
            f"{listed}: merge needs every share"
        )
    versions = {str(share.summary.get("povidgen_version")) for share in shares}
    if len(versions) > 1:
        logger.warning(
            "the shares were built by different povidgen versions (%s); the merge may differ "
            "from one run",
            ", ".join(sorted(versions)),
        )
    return sorted(shares, key=lambda share: share.shard_index)


def _limits(configuration: Mapping[str, Any]) -> ShardLimits:
    """The build's shard and row-group limits, as its configuration records them."""
    recorded = configuration["shards"]
    try:
        return ShardLimits(**{name: int(recorded[name]) for name in ShardLimits().as_dict()})
    except (KeyError, TypeError, ValueError) as error:
        raise MergeError(f"the configuration's shard limits are unreadable: {recorded}") from error


# -- the merge ----------------------------------------------------------------------------------


def _merge_into(
    folder: Path,
    shares: list[_Share],
    configuration: dict[str, Any],
    limits: ShardLimits,
) -> MergeReport:
    """Write the rows of ``shares`` in input order into the staging ``folder``."""
    features = features_of_configuration(configuration)
    writer = ShardWriter(folder, features, limits)
    failures: dict[str, dict[str, int]] = {}
    dropped = {kind: 0 for kind in DROP_KINDS.values()}
    streams = [_share_items(number, share, writer.schema) for number, share in enumerate(shares)]
    expected = 0
    try:
        for item in heapq.merge(*streams):
            if item.position != expected:
                _out_of_place(item, expected, shares)
            expected += 1
            writer.account(seconds=item.seconds, cost_usd=item.cost_usd)
            if item.error is not None:
                kind = drop_kind(item.error)
                if kind is not None:
                    dropped[kind] += 1
                else:
                    by_reason = failures.setdefault(item.error.stage, {})
                    by_reason[item.error.reason] = by_reason.get(item.error.reason, 0) + 1
                writer.add_error(item.error)
            else:
                assert item.row is not None
                assert item.row_id is not None
                writer.add_pair(item.position, item.row_id, item.row, row_size(item.row))
        writer.finish()
    except BaseException:
        writer.abandon()
        raise
    finally:
        for stream in streams:
            stream.close()
    report = MergeReport(
        rows=writer.pairs + writer.failed,
        pairs=writer.pairs,
        failed=writer.failed - sum(dropped.values()),
        shards=len(writer.segments),
        dropped={kind: n for kind, n in dropped.items() if n},
    )
    modes = PairModes.from_configuration(configuration).count(
        int(configuration["seed"]), (row_id for s in writer.segments for row_id in s.ids)
    )
    _write_summary(folder, shares, configuration, report, failures, modes)
    return report


def _share_items(number: int, share: _Share, schema: pa.Schema) -> Generator[_Item, None, None]:
    """The rows of ``share`` in input order: each segment's pairs (read from its shard file,
    checked against the manifest's SHA-256) and failures merged by position."""
    with (share.path / ERRORS).open("rb") as errors_file:
        errors_start = 0
        for segment in share.segments:
            errors_file.seek(errors_start)
            block = errors_file.read(segment.errors_end - errors_start)
            errors_start = segment.errors_end
            errors = _segment_errors(share.path, segment, block)
            items = _segment_items(number, share.path, segment, errors, schema)
            last: _Item | None = None
            for item in items:
                if last is not None:
                    yield last
                last = item
            if last is not None:
                last.seconds = segment.seconds
                last.cost_usd = segment.cost_usd
                yield last


def _segment_errors(path: Path, segment: Segment, block: bytes) -> list[RowError]:
    """The failures of ``segment`` from its block of ``errors.jsonl``."""
    try:
        errors = [RowError.model_validate_json(line) for line in block.splitlines() if line.strip()]
    except ValidationError as error:
        raise MergeError(f"{path}: a line of {ERRORS} is not a row error ({error})") from None
    if len(errors) != segment.failed:
        raise MergeError(
            f"{path}: {segment.shard} has {segment.failed} failures in {MANIFEST} but "
            f"{len(errors)} in {ERRORS}"
        )
    if any(not segment.first <= e.index < segment.end for e in errors):
        raise MergeError(f"{path}: a failure in {ERRORS} lies outside its segment's rows")
    return errors


def _segment_items(
    number: int, path: Path, segment: Segment, errors: list[RowError], schema: pa.Schema
) -> Iterator[_Item]:
    """The pairs of one shard file and the segment's ``errors``, by input position."""
    pending = iter(errors)
    error = next(pending, None)
    with (path / segment.shard).open("rb") as handle:
        _check_sha256(path, segment, handle)
        try:
            parquet = pq.ParquetFile(handle)
        except pa.ArrowException as problem:
            raise MergeError(f"{path}: {segment.shard} cannot be read ({problem})") from None
        if not parquet.schema_arrow.equals(schema):
            raise MergeError(
                f"{path}: {segment.shard} has other columns than this build writes "
                "(made by another povidgen version?)"
            )
        if parquet.metadata.num_rows != segment.pairs:
            raise MergeError(
                f"{path}: {segment.shard} holds {parquet.metadata.num_rows} rows, its manifest "
                f"line {segment.pairs}"
            )
        pairs = zip(segment.positions, segment.ids, strict=True)
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
            for row in batch.to_pylist():
                position, row_id = next(pairs)
                if row.get("id") != row_id:
                    raise MergeError(
                        f"{path}: {segment.shard} holds row {row.get('id')!r} where its "
                        f"manifest says {row_id!r}"
                    )
                if not segment.first <= position < segment.end:
                    raise MergeError(
                        f"{path}: pair {row_id!r} at input position {position} lies outside "
                        f"its segment [{segment.first}, {segment.end})"
                    )
                while error is not None and error.index < position:
                    yield _Item(error.index, number, error=error)
                    error = next(pending, None)
                yield _Item(position, number, row_id=row_id, row=row)
    while error is not None:
        yield _Item(error.index, number, error=error)
        error = next(pending, None)


def _check_sha256(path: Path, segment: Segment, handle: IO[bytes]) -> None:
    """Check the open shard file against its manifest line, then rewind it (the same open
    file is read next, so a file swapped in between cannot slip through)."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    if digest.hexdigest() != segment.sha256:
        raise MergeError(
            f"{path}: {segment.shard} does not match the SHA-256 in its manifest; the file "
            "was changed after the build"
        )
    handle.seek(0)


def _out_of_place(item: _Item, expected: int, shares: list[_Share]) -> NoReturn:
    """Raise the error for a row at ``item.position`` where ``expected`` was due."""
    path = shares[item.share].path
    if item.position < expected:
        raise MergeError(
            f"input row {item.position} is in more than one share (again in {path}); the "
            "shares are not of one build"
        )
    raise MergeError(
        f"input rows {expected} to {item.position - 1} are in no share (the next row, "
        f"{item.position}, is in {path}); the shares are not of one build over one input"
    )


def _write_summary(
    folder: Path,
    shares: list[_Share],
    configuration: dict[str, Any],
    report: MergeReport,
    failures: dict[str, dict[str, int]],
    pair_modes: dict[str, int],
) -> None:
    """``summary.json`` of the merge: the keys of a build's, time and cost added up."""

    def total(key: str) -> float | None:
        values = [s.summary.get(key) for s in shares]
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        return sum(numbers) if numbers else None

    seconds = total("seconds") or 0.0
    summary = {
        "complete": True,
        "stopped": None,
        "rows": report.rows,
        "pairs": report.pairs,
        "failed": report.failed,
        "not_attempted": 0,
        "failures": {stage: dict(sorted(r.items())) for stage, r in sorted(failures.items())},
        "dropped": {kind: report.dropped.get(kind, 0) for kind in DROP_KINDS.values()},
        "pair_modes": pair_modes,
        "shards": report.shards,
        "cost_usd": total("cost_usd"),
        "cost_usd_all_runs": total("cost_usd_all_runs"),
        "seconds": round(seconds, 3),
        "seconds_all_runs": round(total("seconds_all_runs") or 0.0, 3),
        "rows_per_second": round(report.rows / seconds, 3) if seconds > 0 else None,
        "runs": int(total("runs") or 0),
        "povidgen_version": _version(),
        "configuration": configuration,
        "merged_from": [
            {"folder": str(share.path), "shard_index": share.shard_index} for share in shares
        ],
        "merged": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    temporary = folder / f".{SUMMARY}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, folder / SUMMARY)


# -- helpers ------------------------------------------------------------------------------------


def _difference(first: Mapping[str, Any], second: Mapping[str, Any], a: Path, b: Path) -> str:
    """The settings that differ, as ``name: X in A, Y in B`` (at most three)."""
    found = _differing_keys(first, second, "")
    shown = [f"{name}: {json.dumps(x)} in {a}, {json.dumps(y)} in {b}" for name, x, y in found[:3]]
    more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
    return "; ".join(shown) + more


def _differing_keys(
    first: Mapping[str, Any], second: Mapping[str, Any], prefix: str
) -> list[tuple[str, Any, Any]]:
    found: list[tuple[str, Any, Any]] = []
    for key in sorted(set(first) | set(second)):
        x, y = first.get(key), second.get(key)
        if x == y:
            continue
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            found.extend(_differing_keys(x, y, f"{prefix}{key}."))
        else:
            found.append((f"{prefix}{key}", x, y))
    return found


def _version() -> str:
    from povidgen import __version__

    return __version__
