""":class:`PairBuilder`: from a dataset of (image, prompt, answer) rows to preference pairs.

The data flow for each row::

    row --read--> Example --hallucinator--> rejected text + edits ---\\
                     \\--distorter (optional)--> distorted image ------+--> PreferencePair --> row

A row that fails at any stage becomes a :class:`povidgen.RowError` (kept in
:attr:`PairBuilder.errors`) and the run goes on; no row is dropped without a record, and no
half-made pair is written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import datasets
from pydantic import ValidationError

from povidgen.distort.base import Distorter
from povidgen.errors import (
    InvalidExampleError,
    MissingColumnError,
    PovidgenError,
    RunStoppedError,
)
from povidgen.hallucinate.base import HallucinationResult, Hallucinator
from povidgen.pairs.trl_format import pair_features, pair_to_row
from povidgen.schema import Example, Hallucination, PreferencePair, Provenance, RowError, Stage
from povidgen.seeding import derive_seed
from povidgen.sources.images import DEFAULT_LIMITS, ImageLimits, SourceImage, open_image

__all__ = ["BuildReport", "PairBuilder"]

logger = logging.getLogger("povidgen")

_T = TypeVar("_T")

_IMAGE_PLACEHOLDER = "<image>"

DatasetLike: TypeAlias = datasets.Dataset | datasets.IterableDataset | Sequence[Mapping[str, Any]]


@dataclass
class BuildReport:
    """What a :meth:`PairBuilder.build` run did."""

    rows: int = 0
    """Input rows read."""
    pairs: int = 0
    """Pairs written."""
    errors_by_stage: Counter[str] = field(default_factory=Counter)
    """Failed rows per stage (``input``, ``image``, ``hallucinate``, ``distort``, ``pair``)."""
    seconds: float = 0.0
    """Wall-clock time of the run."""
    cost_usd: float | None = None
    """What the hallucinator's calls cost, when it keeps a tally (API providers)."""
    stopped: str | None = None
    """Why the run stopped early (bad credentials, exhausted quota, ``max_cost_usd``), if it
    did; the rows after that point are recorded as not attempted."""

    @property
    def failed(self) -> int:
        """Rows that became :class:`RowError` records."""
        return sum(self.errors_by_stage.values())


@dataclass
class _Pending:
    index: int
    example: Example
    source: SourceImage


class PairBuilder:
    """Builds chosen/rejected pairs from a dataset; create it with :meth:`from_dataset`.

    Example::

        pairs = PairBuilder.from_dataset(
            ds, image_column="image", prompt_column="question", answer_column="answer",
            hallucinator=RuleHallucinator(), distorter=DiffusionNoise(step=500), seed=0,
        ).build()

    Each example's seed is ``derive_seed(seed, id)``: the hallucinator reads it from
    ``Example.seed`` and the distorter receives it as ``seed=``, so a pair depends only on the
    global seed, its id and its content, never on row order or batch size.
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        hallucinator: Hallucinator,
        distorter: Distorter | None,
        image_column: str,
        prompt_column: str,
        answer_column: str,
        id_column: str | None,
        seed: int,
        image_folder: str | os.PathLike[str] | None,
        concurrency: int,
        batch_size: int,
        image_limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        if not isinstance(hallucinator, Hallucinator):
            raise TypeError(
                f"hallucinator must be a povidgen.Hallucinator, got {type(hallucinator).__name__}"
            )
        if distorter is not None and not isinstance(distorter, Distorter):
            raise TypeError(
                f"distorter must be a povidgen.Distorter or None, got {type(distorter).__name__}"
            )
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        self._rows = rows
        self.hallucinator = hallucinator
        self.distorter = distorter
        self.image_column = image_column
        self.prompt_column = prompt_column
        self.answer_column = answer_column
        self.id_column = id_column
        self.seed = int(seed)
        self.image_folder = image_folder
        self.image_limits = image_limits
        self.concurrency = concurrency
        self.batch_size = batch_size
        self._stopped: RunStoppedError | None = None
        self._loop: _LoopThread | None = None
        self.errors: list[RowError] = []
        """Rows of the last run that did not become pairs, in input order."""
        self.report = BuildReport()
        """Counts and timing of the last run."""

    @classmethod
    def from_dataset(
        cls,
        dataset: DatasetLike,
        *,
        hallucinator: Hallucinator | None = None,
        distorter: Distorter | None = None,
        image_column: str = "image",
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        id_column: str | None = None,
        seed: int = 0,
        image_folder: str | os.PathLike[str] | None = None,
        concurrency: int = 8,
        batch_size: int = 64,
        image_limits: ImageLimits | None = None,
    ) -> PairBuilder:
        """A builder over ``dataset``.

        Args:
            dataset: a ``datasets.Dataset`` or ``IterableDataset``, or a list of dicts.
            hallucinator: corrupts answers; :class:`povidgen.RuleHallucinator` when ``None``.
            distorter: corrupts images into the ``rejected_images`` column; none when ``None``.
            image_column: PIL images, ``datasets`` images, paths, bytes or one-image lists.
            prompt_column: the question; a ``<image>`` placeholder in it is removed, since
                the output marks the image with a typed content part instead.
            answer_column: the correct answer (the chosen response).
            id_column: stable row ids; the row index (``row-<index>``) when ``None``.
            seed: the global seed; each row uses ``derive_seed(seed, id)``.
            image_folder: where relative image paths are resolved.
            concurrency: hallucinator calls in flight at once.
            batch_size: rows read, hallucinated and distorted per step.
            image_limits: the byte and pixel caps for image files and cells, and whether
                paths must stay inside ``image_folder`` (:class:`povidgen.sources.images.
                ImageLimits`; its defaults when ``None``). A row over a limit is a
                ``RowError`` of stage ``image``.

        Raises:
            MissingColumnError: a named column is not in the dataset (the message lists those
                that are).
        """
        if hallucinator is None:
            from povidgen.hallucinate.rule import RuleHallucinator

            hallucinator = RuleHallucinator()
        columns = _column_names(dataset)
        wanted = {
            "image": image_column,
            "prompt": prompt_column,
            "answer": answer_column,
        }
        if id_column is not None:
            wanted["id"] = id_column
        if columns is not None:
            for role, column in wanted.items():
                if column not in columns:
                    raise MissingColumnError(role, column, columns)
        if isinstance(dataset, datasets.Dataset | datasets.IterableDataset):
            dataset = _without_image_decoding(dataset, image_column)
        return cls(
            dataset,
            hallucinator=hallucinator,
            distorter=distorter,
            image_column=image_column,
            prompt_column=prompt_column,
            answer_column=answer_column,
            id_column=id_column,
            seed=seed,
            image_folder=image_folder,
            concurrency=concurrency,
            batch_size=batch_size,
            image_limits=image_limits or DEFAULT_LIMITS,
        )

    def iter_results(
        self, *, progress: Callable[[int], object] | None = None
    ) -> Iterator[tuple[PreferencePair, bytes | None] | RowError]:
        """Yield, in input order, each row's pair (with its source image bytes, if kept) or
        its :class:`RowError`. ``progress(n)`` is called after every batch of ``n`` rows."""
        self._loop = _LoopThread()
        try:
            yield from self._iterate(progress)
        finally:
            try:
                self._loop.run(self.hallucinator.aclose())
            finally:
                self._loop.close()
                self._loop = None

    def _iterate(
        self, progress: Callable[[int], object] | None
    ) -> Iterator[tuple[PreferencePair, bytes | None] | RowError]:
        if self.hallucinator.streams:
            yield from self._iterate_streaming(progress)
        else:
            yield from self._iterate_batches(progress)

    def _iterate_streaming(
        self, progress: Callable[[int], object] | None
    ) -> Iterator[tuple[PreferencePair, bytes | None] | RowError]:
        """A sliding window: each row's call starts as soon as the row is read (the event loop
        keeps up to ``concurrency`` calls in flight at all times, with no batch barrier), while
        this thread decodes the next rows and distorts and assembles finished ones. Results
        come out in input order; at most ``4 x concurrency`` rows wait in the window."""
        assert self._loop is not None
        loop = self._loop.loop
        slots = self._loop.run(_semaphore(self.concurrency))
        window: deque[tuple[_Pending | RowError, Future[HallucinationResult] | None]] = deque()
        seen: dict[str, int] = {}
        self._stopped = None

        def finish() -> tuple[PreferencePair, bytes | None] | RowError:
            item, future = window.popleft()
            if isinstance(item, RowError):
                outcome: tuple[PreferencePair, bytes | None] | RowError = item
            else:
                assert future is not None
                result = future.result()
                self._note_stop(result)
                outcome = self._assemble(item, result)
            if isinstance(outcome, RowError):
                logger.info(
                    "row %d (%s) failed at %s: %s",
                    outcome.index,
                    outcome.id,
                    outcome.stage,
                    outcome.reason,
                )
            if progress is not None:
                progress(1)
            return outcome

        try:
            for index, row in enumerate(self._rows):
                if self._stopped is not None:
                    window.append((self._not_attempted(index, row), None))
                else:
                    read = self._read(index, row, seen)
                    if isinstance(read, RowError):
                        window.append((read, None))
                    else:
                        call = _bounded_call(self.hallucinator, read.example, slots)
                        window.append((read, asyncio.run_coroutine_threadsafe(call, loop)))
                while window and (window[0][1] is None or window[0][1].done()):
                    yield finish()
                while len(window) >= 4 * self.concurrency:
                    yield finish()  # waits for the oldest row: the read-ahead stays bounded
            while window:
                yield finish()
        finally:
            for _, future in window:  # interrupted: no call outlives the run
                if future is not None:
                    future.cancel()

    def _not_attempted(self, index: int, row: Mapping[str, Any]) -> RowError:
        """The record of a row read after the run stopped (its image is not even decoded)."""
        stopped = RunStoppedError(f"not attempted: {self._stopped}")
        return _row_error(self._row_id(index, row), index, "hallucinate", stopped)

    def _note_stop(self, result: HallucinationResult) -> None:
        if isinstance(result, RunStoppedError) and self._stopped is None:
            # the hallucinator keeps the first cause; in-flight rows only say "not attempted"
            cause = getattr(self.hallucinator, "stopped", None)
            self._stopped = cause if isinstance(cause, RunStoppedError) else result

    def _iterate_batches(
        self, progress: Callable[[int], object] | None
    ) -> Iterator[tuple[PreferencePair, bytes | None] | RowError]:
        """Batches of ``batch_size`` rows, for hallucinators that take rows together."""
        batch: list[tuple[int, Mapping[str, Any]]] = []
        seen: dict[str, int] = {}
        self._stopped = None
        for index, row in enumerate(self._rows):
            if self._stopped is not None:
                yield self._not_attempted(index, row)
                if progress is not None:
                    progress(1)
                continue
            batch.append((index, row))
            if len(batch) == self.batch_size:
                yield from self._process(batch, seen)
                if progress is not None:
                    progress(len(batch))
                batch = []
        if batch:
            yield from self._process(batch, seen)
            if progress is not None:
                progress(len(batch))

    def build(self, *, progress: Callable[[int], object] | None = None) -> datasets.Dataset:
        """Run over every row and return the pairs as a ``datasets.Dataset``.

        The columns are those of :func:`povidgen.pairs.trl_format.pair_features`. Rows that
        failed are in :attr:`errors`; :attr:`report` has the counts and the time taken.
        """
        started = time.perf_counter()
        self.errors = []
        self.report = BuildReport()
        features = pair_features(with_rejected_images=self.distorter is not None)
        chunks: list[datasets.Dataset] = []
        rows: list[dict[str, Any]] = []
        for result in self.iter_results(progress=progress):
            self.report.rows += 1
            if isinstance(result, RowError):
                self.errors.append(result)
                self.report.errors_by_stage[result.stage] += 1
                continue
            pair, image_bytes = result
            rows.append(pair_to_row(pair, image_bytes=image_bytes))
            self.report.pairs += 1
            if len(rows) >= 1024:  # bounds the Python-object copy of the rows in memory
                chunks.append(datasets.Dataset.from_list(rows, features=features))
                rows = []
        if rows:
            chunks.append(datasets.Dataset.from_list(rows, features=features))
        if not chunks:  # from_list([]) would drop the columns, so build the empty table by name
            chunks.append(datasets.Dataset.from_dict({c: [] for c in features}, features=features))
        pairs = chunks[0] if len(chunks) == 1 else datasets.concatenate_datasets(chunks)
        self.report.seconds = time.perf_counter() - started
        tally = getattr(self.hallucinator, "cost", None)
        self.report.cost_usd = getattr(tally, "spent", None)
        self.report.stopped = None if self._stopped is None else str(self._stopped)
        logger.info(
            "built %d pairs from %d rows (%d failed) in %.1fs",
            self.report.pairs,
            self.report.rows,
            self.report.failed,
            self.report.seconds,
        )
        return pairs

    def _process(
        self, batch: list[tuple[int, Mapping[str, Any]]], seen: dict[str, int]
    ) -> Iterator[tuple[PreferencePair, bytes | None] | RowError]:
        outcomes: dict[int, tuple[PreferencePair, bytes | None] | RowError] = {}
        pending: list[_Pending] = []
        for index, row in batch:
            read = self._read(index, row, seen)
            if isinstance(read, RowError):
                outcomes[index] = read
            else:
                pending.append(read)

        assert self._loop is not None
        results = self._loop.run(
            self.hallucinator.ahallucinate_many(
                [p.example for p in pending], concurrency=self.concurrency
            )
        )
        for result in results:
            self._note_stop(result)
        for item, result in zip(pending, results, strict=True):
            outcomes[item.index] = self._assemble(item, result)

        for index, _ in batch:
            outcome = outcomes[index]
            if isinstance(outcome, RowError):
                logger.info(
                    "row %d (%s) failed at %s: %s", index, outcome.id, outcome.stage, outcome.reason
                )
            yield outcome

    def _row_id(self, index: int, row: Mapping[str, Any]) -> str:
        if self.id_column is not None and row.get(self.id_column) not in (None, ""):
            return str(row[self.id_column])
        return f"row-{index}"

    def _read(
        self, index: int, row: Mapping[str, Any], seen: dict[str, int]
    ) -> _Pending | RowError:
        row_id = f"row-{index}"

        def fail(stage: Stage, error: BaseException | str) -> RowError:
            return _row_error(row_id, index, stage, error)

        for column in (self.image_column, self.prompt_column, self.answer_column, self.id_column):
            if column is not None and column not in row:
                return fail("input", MissingColumnError("a", column, row.keys()))
        if self.id_column is not None:
            raw_id = row[self.id_column]
            if raw_id is None or not str(raw_id).strip():
                return fail("input", InvalidExampleError(f"empty id in column {self.id_column!r}"))
            row_id = str(raw_id)
        if row_id in seen:
            return fail(
                "input",
                InvalidExampleError(f"duplicate id {row_id!r} (first seen at row {seen[row_id]})"),
            )
        seen[row_id] = index

        prompt, answer = row[self.prompt_column], row[self.answer_column]
        for role, value in (("prompt", prompt), ("answer", answer)):
            if not isinstance(value, str):
                kind = type(value).__name__
                return fail("input", InvalidExampleError(f"{role} is not text (got {kind})"))
            if not value.strip():
                return fail("input", InvalidExampleError(f"{role} is empty"))
        assert isinstance(prompt, str)
        assert isinstance(answer, str)
        placeholders = prompt.count(_IMAGE_PLACEHOLDER)
        if placeholders > 1:
            return fail(
                "input",
                InvalidExampleError(
                    f"prompt has {placeholders} {_IMAGE_PLACEHOLDER} placeholders; "
                    "multi-image rows are not supported"
                ),
            )
        prompt = prompt.replace(_IMAGE_PLACEHOLDER, "").strip()
        if not prompt:
            return fail("input", InvalidExampleError("prompt is empty besides <image>"))

        try:
            source = open_image(
                row[self.image_column], image_folder=self.image_folder, limits=self.image_limits
            )
        except PovidgenError as error:
            return fail("image", error)
        example = Example(
            id=row_id,
            image=source.image,
            prompt=prompt,
            answer=answer,
            metadata={"index": index},
            seed=derive_seed(self.seed, row_id),
        )
        return _Pending(index, example, source)

    def _assemble(
        self, item: _Pending, result: Hallucination | Exception
    ) -> tuple[PreferencePair, bytes | None] | RowError:
        example = item.example
        if isinstance(result, Exception):
            return _row_error(example.id, item.index, "hallucinate", result)
        if not isinstance(result, Hallucination):
            return _row_error(
                example.id,
                item.index,
                "hallucinate",
                f"{type(self.hallucinator).__name__}.ahallucinate returned "
                f"{type(result).__name__}, not a Hallucination",
            )
        rejected_image = None
        if self.distorter is not None:
            try:
                rejected_image = self.distorter(example.image, seed=example.seed)
            except Exception as error:  # noqa: BLE001 - a third-party distorter may raise anything
                return _row_error(example.id, item.index, "distort", error)
        try:
            pair = PreferencePair(
                id=example.id,
                image=example.image,
                prompt=example.prompt,
                chosen=example.answer,
                rejected=result.rejected,
                rejected_image=rejected_image,
                provenance=Provenance(
                    hallucinator=self.hallucinator.name,
                    hallucinator_params=self.hallucinator.params(),
                    distorter=None if self.distorter is None else self.distorter.name,
                    distorter_params=None if self.distorter is None else self.distorter.params(),
                    seed=self.seed,
                    example_seed=example.seed,
                    edits=result.edits,
                    povidgen_version=_version(),
                ),
            )
        except ValidationError as error:
            reason = "; ".join(e["msg"] for e in error.errors())
            return _row_error(example.id, item.index, "pair", f"invalid pair: {reason}")
        return pair, item.source.encoded


class _LoopThread:
    """One event loop in a worker thread for a whole run.

    Async hallucinators keep their HTTP connection pools across batches (a pool belongs to one
    loop), and building works the same from plain scripts and from code that already runs a
    loop (a notebook cell).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="povidgen-build", daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _semaphore(concurrency: int) -> asyncio.Semaphore:
    """A semaphore made inside the run's event loop."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    return asyncio.Semaphore(concurrency)


async def _bounded_call(
    hallucinator: Hallucinator, example: Example, slots: asyncio.Semaphore
) -> HallucinationResult:
    """One row's call under the run's concurrency bound; its exception is its result."""
    async with slots:
        try:
            return await hallucinator.ahallucinate(example)
        except Exception as error:  # noqa: BLE001 - recorded per row by design
            return error


def _row_error(row_id: str, index: int, stage: Stage, error: BaseException | str) -> RowError:
    if isinstance(error, str):
        return RowError(id=row_id, index=index, stage=stage, reason=error, error_type="RowError")
    reason = str(error) or type(error).__name__
    return RowError(
        id=row_id, index=index, stage=stage, reason=reason, error_type=type(error).__name__
    )


def _column_names(dataset: DatasetLike) -> list[str] | None:
    if isinstance(dataset, datasets.Dataset | datasets.IterableDataset):
        names = dataset.column_names
        return list(names) if names is not None else None
    if isinstance(dataset, Sequence) and not isinstance(dataset, str):
        if not dataset:
            return None
        first = dataset[0]
        if not isinstance(first, Mapping):
            raise TypeError(f"rows must be mappings, got {type(first).__name__}")
        return list(first.keys())
    raise TypeError(
        "dataset must be a datasets.Dataset, a datasets.IterableDataset or a list of dicts, "
        f"got {type(dataset).__name__}"
    )


def _without_image_decoding(
    dataset: datasets.Dataset | datasets.IterableDataset, column: str
) -> datasets.Dataset | datasets.IterableDataset:
    """Read the image column as raw bytes/paths, so one corrupt image becomes one RowError
    instead of an exception from inside the dataset iterator."""
    feature = (dataset.features or {}).get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, datasets.List | datasets.Sequence) and isinstance(
        feature.feature, datasets.Image
    ):
        return dataset.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return dataset


def _version() -> str:
    from povidgen import __version__

    return __version__
