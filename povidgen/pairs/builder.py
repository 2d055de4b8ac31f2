""":class:`PairBuilder`: from a dataset of (image, prompt, answer) rows to preference pairs.

The data flow for each row::

    row --read--> Example --hallucinator--> rejected text + edits ---\\
                     \\--distorter (optional)--> distorted image ------+--> PreferencePair --> row

Rows stream: they are read lazily, decoded, distorted and encoded on a pool of worker
threads while a sliding window keeps up to ``concurrency`` hallucinator calls in flight, and
finished rows go to disk in input order as parquet shards (:mod:`povidgen.pairs.shards`), so
memory does not grow with the dataset and a stopped run resumes where it stopped.

A row that fails at any stage becomes a :class:`povidgen.RowError` (kept in
:attr:`PairBuilder.errors` and ``errors.jsonl``) and the run goes on; no row is dropped without
a record, and no half-made pair is written.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import datasets
from pydantic import ValidationError
from tqdm import tqdm

from povidgen.distort.base import Distorter
from povidgen.errors import (
    InvalidExampleError,
    MissingColumnError,
    PovidgenError,
    RunStoppedError,
)
from povidgen.hallucinate.base import HallucinationResult, Hallucinator
from povidgen.pairs.duplicates import (
    DROP_KINDS,
    RepeatedRows,
    content_key,
    drop_kind,
    near_duplicate,
    near_duplicate_pair,
    repeated_row,
)
from povidgen.pairs.modes import BUILD_MODES, BuildMode, PairMode, PairModes
from povidgen.pairs.output import OutputFolder, read_json_object
from povidgen.pairs.shards import ERRORS, SUMMARY, ShardLimits, ShardWriter, load_pairs, row_size
from povidgen.pairs.trl_format import PNG_COMPRESS_LEVEL, pair_features, pair_to_row, png_bytes
from povidgen.schema import (
    Edit,
    Example,
    Hallucination,
    PreferencePair,
    Provenance,
    RowError,
    Stage,
)
from povidgen.seeding import derive_seed
from povidgen.sources.conversations import (
    CONVERSATIONS_COLUMN,
    TURNS,
    ConversationRows,
    Turns,
    turn_id,
    turn_of,
)
from povidgen.sources.images import DEFAULT_LIMITS, ImageLimits, SourceImage, open_image

__all__ = ["BuildReport", "PairBuilder"]

logger = logging.getLogger("povidgen")

_T = TypeVar("_T")

_IMAGE_PLACEHOLDER = "<image>"

DatasetLike: TypeAlias = datasets.Dataset | datasets.IterableDataset | Sequence[Mapping[str, Any]]


@dataclass
class BuildReport:
    """What a :meth:`PairBuilder.run` (or :meth:`PairBuilder.build`) did."""

    rows: int = 0
    """Input rows this run went through (rows an earlier run finished are in
    :attr:`resumed_rows`)."""
    pairs: int = 0
    """Pairs in the output, including those an earlier run of a resumed build wrote."""
    errors_by_stage: Counter[str] = field(default_factory=Counter)
    """Failed rows per stage (``input``, ``image``, ``hallucinate``, ``distort``, ``pair``),
    including those of earlier runs of a resumed build."""
    seconds: float = 0.0
    """Wall-clock time of the run."""
    cost_usd: float | None = None
    """What the hallucinator's calls cost in this run, when it keeps a tally (API providers)."""
    stopped: str | None = None
    """Why the run stopped early (bad credentials, exhausted quota, ``max_cost_usd``, Ctrl-C),
    if it did; the rows from that point on are not written, and running again resumes."""
    complete: bool = False
    """Every row of the input is in the output (as a pair or a failure)."""
    resumed_rows: int = 0
    """Rows an earlier, interrupted run had already finished."""
    not_attempted: int = 0
    """Rows not made because the run stopped (left for the next run)."""
    withheld: int = 0
    """Pairs made after the stop but left unwritten, since an earlier row was not made (their
    replies are cached: the next run writes them without a call)."""
    already_complete: bool = False
    """The folder already held this build, finished; nothing was done."""
    kept_earlier: bool = False
    """An earlier output was kept: no pair was built (see ``allow_empty``) or the run stopped
    before the replacement was finished."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Rows dropped on purpose (``drop_duplicates``), by kind: ``near_duplicate`` and
    ``repeated`` (:mod:`povidgen.pairs.duplicates`), including those of earlier runs. They are
    :class:`RowError` records too, but not failures: :attr:`failed` leaves them out."""
    pair_modes: dict[str, int] = field(default_factory=dict)
    """Pairs in the output by pair mode (``text``, ``image``, ``both``; see
    :mod:`povidgen.pairs.modes`), including those an earlier run wrote."""

    @property
    def failed(self) -> int:
        """Rows that failed (:class:`RowError` records other than dropped rows)."""
        return sum(self.errors_by_stage.values())


@dataclass
class _Pending:
    index: int
    example: Example
    source: SourceImage
    mode: PairMode = "both"


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
        store_rejected_images: bool = True,
        num_shards: int = 1,
        shard_index: int = 0,
        workers: int | None = None,
        shard_limits: ShardLimits | None = None,
        source: str | None = None,
        ray_address: str | None = None,
        turns: Turns = "first",
        pair_mode: BuildMode | None = None,
        mix: Mapping[str, float] | None = None,
        drop_duplicates: bool = False,
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
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(
                f"shard_index must be in [0, num_shards); got {shard_index} of {num_shards}"
            )
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if turns not in TURNS:
            raise ValueError(f"turns must be one of {', '.join(TURNS)}; got {turns!r}")
        self.pair_modes = _pair_modes(pair_mode, mix, distorter)
        """Each row's pair mode (:mod:`povidgen.pairs.modes`)."""
        # what a build made before pair modes: such builds keep their configuration and columns
        self._record_modes = self.pair_modes != _legacy_modes(distorter)
        self.drop_duplicates = bool(drop_duplicates)
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
        self.store_rejected_images = store_rejected_images
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.shard_limits = shard_limits or ShardLimits()
        self.source = source if source is not None else _describe(rows)
        self.ray_address = ray_address
        self.turns: Turns = turns
        # rows split out of conversations: pairs carry provenance.turn (None otherwise)
        self._conversations = isinstance(rows, ConversationRows)
        self._stopped: RunStoppedError | None = None
        self._loop: _LoopThread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closing = False
        # what every row's provenance repeats, computed once per run
        self._params: tuple[dict[str, Any], dict[str, Any] | None, str] = ({}, None, "")
        self.errors: list[RowError] = []
        """Rows of the last run that did not become pairs, in input order."""
        self.report = BuildReport()
        """Counts and timing of the last run."""

    @classmethod
    def from_dataset(
        cls,
        dataset: DatasetLike | str | os.PathLike[str],
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
        store_rejected_images: bool = True,
        num_shards: int = 1,
        shard_index: int = 0,
        workers: int | None = None,
        shard_limits: ShardLimits | None = None,
        source: str | None = None,
        ray_address: str | None = None,
        config: str | None = None,
        split: str | None = None,
        streaming: bool = False,
        revision: str | None = None,
        turns: Turns = "first",
        pair_mode: BuildMode | None = None,
        mix: Mapping[str, float] | None = None,
        drop_duplicates: bool = False,
    ) -> PairBuilder:
        """A builder over ``dataset``.

        Args:
            dataset: a ``datasets.Dataset`` or ``IterableDataset``, or a list of dicts; or a
                string: a Hub dataset id (``"owner/name"``), a local folder of data files (both
                read by ``datasets.load_dataset``), a ``save_to_disk`` folder, or a
                ``.parquet``/``.jsonl``/LLaVA ``.json`` file (see
                :func:`povidgen.sources.hub.open_input`).
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
            store_rejected_images: write the distorted images. ``False`` leaves the
                ``rejected_images`` column out (about half a row's bytes): the distorters are
                deterministic per seed, so a trainer given the same distorter remakes each
                from the row's ``provenance.example_seed``.
            num_shards: split the rows into this many shares by a hash of their ids (one
                machine's share each; ``povidgen merge`` joins the shares).
            shard_index: the share to build, ``0 <= shard_index < num_shards``.
            workers: threads that decode, distort and encode images beside the calls
                (default: the CPU count, at most 8).
            shard_limits: where output shards and row groups end.
            source: what the input is, as recorded in the configuration (a resumed build
                must name the same); by default the dataset's fingerprint or a description.
            ray_address: run the rows on a Ray cluster through Ray Data (``"auto"``, ``"local"``
                or a cluster address; needs the ``ray`` extra). The output is the same as a
                local run's: rows are written in input order by this process.
            config: the dataset configuration (``load_dataset(name=...)``) of a Hub id or folder.
            split: the split to read when ``dataset`` is a string; ``"train"`` if there is
                one, else the only split.
            streaming: read a string ``dataset`` as an ``IterableDataset`` (nothing is
                downloaded ahead; the progress bar has no total).
            revision: the Hub revision (branch, tag or commit) of a Hub id.
            turns: for a dataset with a ``conversations`` column (LLaVA-style records, which
                may hold several exchanges), the exchanges that become pairs: ``"first"``
                (the default; what single-turn data and earlier versions give), ``"last"`` or
                ``"all"``. The prompt and answer then come from the conversation, each later
                exchange with the earlier ones as context and the id ``"<id>#turn<k>"``
                (:mod:`povidgen.sources.conversations`); ``prompt_column`` and
                ``answer_column`` need not exist. Plain rows ignore it.
            pair_mode: the contrast each pair carries (:mod:`povidgen.pairs.modes`):
                ``"text"`` (hallucinated answer, same image; no distortion), ``"image"``
                (same answer, distorted image; no hallucinator call: ``rejected`` repeats
                ``chosen``), ``"both"`` (hallucinated answer and distorted image), or
                ``"mix"``: each row draws one from ``mix`` by its seed and id. ``None`` (the
                default) is what povidgen always made: ``"both"`` with a distorter, ``"text"``
                without; such a build's output, columns and configuration are unchanged. A
                build with another choice records each row's mode in ``provenance.pair_mode``.
                ``"image"``, ``"both"`` and a mix using them need a distorter.
            mix: with ``pair_mode="mix"``, the weights of the modes (``{"text": 3, "image":
                1}``; a missing mode weighs 0; default ``{"text": 1, "image": 1}``).
            drop_duplicates: drop near-duplicate pairs (rejected equal to chosen up to case
                and whitespace) and repeated input rows (the same image, prompt and answer as
                an earlier row under another id), each with a :class:`RowError` record and a
                count in ``summary.json`` (:mod:`povidgen.pairs.duplicates`).

        Raises:
            MissingColumnError: a named column is not in the dataset (the message lists those
                that are).
            DatasetFormatError: a string ``dataset`` cannot be opened (an unknown id, no
                network with ``HF_HUB_OFFLINE`` set, a missing split); the message says what
                was tried.
        """
        if isinstance(dataset, str | os.PathLike):
            from povidgen.sources.hub import open_input

            opened = open_input(
                dataset, config=config, split=split, streaming=streaming, revision=revision
            )
            dataset = opened.dataset
            source = opened.source if source is None else source
            image_folder = opened.image_folder if image_folder is None else image_folder
        elif config is not None or split is not None or streaming or revision is not None:
            raise TypeError(
                "config=, split=, streaming= and revision= apply only when dataset is a Hub id "
                "or a path"
            )
        if hallucinator is None:
            from povidgen.hallucinate.rule import RuleHallucinator

            hallucinator = RuleHallucinator()
        columns = _column_names(dataset)
        conversational = columns is not None and CONVERSATIONS_COLUMN in columns
        wanted = {"image": image_column}
        if not conversational:  # else they are read from the conversations
            wanted.update(prompt=prompt_column, answer=answer_column)
        if id_column is not None:
            wanted["id"] = id_column
        if columns is not None:
            for role, column in wanted.items():
                if column not in columns:
                    raise MissingColumnError(role, column, columns)
        if isinstance(dataset, datasets.Dataset | datasets.IterableDataset):
            dataset = _without_image_decoding(dataset, image_column)
        rows: Iterable[Mapping[str, Any]] = dataset
        if conversational:
            source = _describe(dataset) if source is None else source
            rows = ConversationRows(
                dataset, turns=turns, prompt_column=prompt_column, answer_column=answer_column
            )
        return cls(
            rows,
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
            store_rejected_images=store_rejected_images,
            num_shards=num_shards,
            shard_index=shard_index,
            workers=workers,
            shard_limits=shard_limits,
            source=source,
            ray_address=ray_address,
            turns=turns,
            pair_mode=pair_mode,
            mix=mix,
            drop_duplicates=drop_duplicates,
        )

    # -- identity -----------------------------------------------------------------------------

    def configuration(self) -> dict[str, Any]:
        """What determines this build's output, as recorded in ``povidgen-build.json`` and
        ``summary.json``: a folder built with another configuration is not resumed."""
        return {
            "source": self.source,
            "columns": {
                "image": self.image_column,
                "prompt": self.prompt_column,
                "answer": self.answer_column,
                "id": self.id_column,
            },
            "seed": self.seed,
            "hallucinator": {"name": self.hallucinator.name, "params": self.hallucinator.params()},
            "distorter": (
                None
                if self.distorter is None
                else {"name": self.distorter.name, "params": self.distorter.params()}
            ),
            "rejected_images": self._stores_rejected_images(),
            "png_compress_level": PNG_COMPRESS_LEVEL,
            "num_shards": self.num_shards,
            "shard_index": self.shard_index,
            "shards": self.shard_limits.as_dict(),
            "image_limits": {
                "max_bytes": self.image_limits.max_bytes,
                "max_pixels": self.image_limits.max_pixels,
                "confine": self.image_limits.confine,
            },
            "turns": self.turns,
            # only when set: a build without pair modes or drops keeps its earlier configuration
            **(
                {
                    "pairs": {
                        "modes": self.pair_modes.as_dict(),
                        "drop_duplicates": self.drop_duplicates,
                    }
                }
                if self._record_modes or self.drop_duplicates
                else {}
            ),
        }

    def features(self) -> datasets.Features:
        """The columns this build writes."""
        return pair_features(
            with_rejected_images=self._stores_rejected_images(),
            with_pair_mode=self._record_modes,
        )

    def _stores_rejected_images(self) -> bool:
        """Whether the output has a ``rejected_images`` column (a text-only build has none)."""
        return (
            self.distorter is not None
            and self.store_rejected_images
            and self.pair_modes.single != "text"
        )

    # -- running ------------------------------------------------------------------------------

    def run(
        self,
        out_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        allow_empty: bool = False,
        progress: bool | Callable[[int], object] | None = None,
        inputs: Sequence[str | os.PathLike[str]] = (),
    ) -> BuildReport:
        """Stream every row's pair (or failure) into ``out_dir`` and return the report.

        Pairs go to size-bounded parquet shards as they finish (:mod:`povidgen.pairs.shards`),
        so memory does not grow with the dataset. Running again into the same folder after a
        crash, a kill or Ctrl-C resumes: finished shards are kept, no row is written twice and
        the result equals an uninterrupted run's, byte for byte. A finished folder with the
        same configuration is left alone (``report.already_complete``); another configuration
        there is an :class:`OutputFolderError` naming the difference unless ``overwrite``,
        which builds anew beside the old output and swaps it in at the end.

        Args:
            out_dir: the output folder (created; the rules of :mod:`povidgen.pairs.output`).
            overwrite: replace an earlier povidgen output there.
            allow_empty: with ``overwrite``, replace it even when no pair was built.
            progress: ``True`` for a tqdm bar (rows/s, failures, cost, ETA), or a callable
                given the number of rows finished since its last call.
            inputs: paths the build reads, which the output must not be, hold or lie in.

        Raises:
            OutputFolderError: the folder cannot be used (the message says why).
            KeyboardInterrupt: after writing what was finished; the next run resumes.
        """
        folder = OutputFolder(out_dir, overwrite=overwrite, inputs=[Path(p) for p in inputs])
        folder.check()
        configuration = self.configuration()
        self.errors = []
        self.report = BuildReport()
        with folder.lock():
            state = folder.state(configuration)
            if state == "complete" and not overwrite:
                self.report = _report_from_summary(folder.path)
                self.report.already_complete = True
                logger.info("%s already holds this build; nothing to do", folder.path)
                return self.report
            if state in ("new", "resume"):
                work = folder.begin(configuration)
                staged = False
            else:  # an earlier output, replaced at the end
                work = folder.staging(configuration)
                staged = True
            try:
                self._run_into(work, configuration, progress)
            except BaseException:
                if staged:
                    shutil.rmtree(work, ignore_errors=True)
                raise
            if staged:
                if self.report.pairs == 0 and not allow_empty and self.report.stopped is None:
                    shutil.rmtree(work, ignore_errors=True)
                    self.report.kept_earlier = True
                elif self.report.complete:
                    folder.commit(work)
                else:  # stopped early: the earlier output stays; the new one is not finished
                    shutil.rmtree(work, ignore_errors=True)
                    self.report.kept_earlier = True
        return self.report

    def build(
        self,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = False,
        progress: bool | Callable[[int], object] | None = None,
    ) -> datasets.Dataset:
        """Run over every row and return the pairs as a ``datasets.Dataset`` backed by the
        shard files on disk (memory-mapped), not held in RAM.

        ``out_dir`` is where the shards go (resumable, as in :meth:`run`); when ``None``, a
        new temporary folder that is removed when the Python process exits (or at once if
        the run fails). The columns are those of
        :func:`povidgen.pairs.trl_format.pair_features`. Rows that failed are in
        :attr:`errors`; :attr:`report` has the counts and the time taken.
        """
        if out_dir is None:
            root = Path(tempfile.mkdtemp(prefix="povidgen-build-"))
            # the returned dataset maps files in here, so they live until the interpreter
            # exits; a run that fails leaves nothing a user could resume from, so it goes now
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            out_dir = root / "pairs"
            try:
                self.run(out_dir, overwrite=overwrite, allow_empty=True, progress=progress)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
        else:
            self.run(out_dir, overwrite=overwrite, allow_empty=True, progress=progress)
        # the memory-mapped Arrow copy stays inside the folder povidgen owns (hidden, so
        # load_dataset(DIR) does not read it as data)
        return load_pairs(out_dir, cache_dir=Path(out_dir) / ".cache")

    def _run_into(
        self,
        work: Path,
        configuration: dict[str, Any],
        progress: bool | Callable[[int], object] | None,
    ) -> None:
        started = time.perf_counter()
        writer = ShardWriter(work, self.features(), self.shard_limits)
        previous = _earlier_errors(work, writer)
        self.errors = list(previous)
        report = self.report
        report.resumed_rows = writer.pairs + writer.failed
        for error in previous:
            _count_error(report, error)
        tally = self._cost_tally()
        spent_before = 0.0 if tally is None else tally
        bar = _progress_bar(progress, self._total_rows(), report.resumed_rows)
        withheld: list[RowError] = []
        last_tick = time.perf_counter()
        last_cost = spent_before
        interrupted = False
        try:
            for index, outcome, resumable in self._outcomes(writer.next_index):
                report.rows += 1
                if withheld or (resumable and isinstance(outcome, RowError)):
                    # from the first stopped row on, nothing is written: the next run resumes
                    if isinstance(outcome, RowError):
                        withheld.append(outcome)
                        report.not_attempted += 1
                    else:
                        report.withheld += 1
                elif isinstance(outcome, RowError):
                    self.errors.append(outcome)
                    _count_error(report, outcome)
                    writer.add_error(outcome)
                else:
                    writer.add_pair(index, outcome.id, outcome.row, outcome.size)
                now = time.perf_counter()
                cost = self._cost_tally()
                writer.account(
                    seconds=now - last_tick,
                    cost_usd=None if cost is None else cost - last_cost,
                )
                last_tick, last_cost = now, (cost if cost is not None else last_cost)
                bar.advance(failed=report.failed + report.not_attempted, cost=cost)
        except BaseException:
            interrupted = True
            raise
        finally:
            bar.close()
            if interrupted or withheld or report.withheld:
                writer.suspend()
            else:
                writer.finish()
            report.pairs = writer.pairs
            report.complete = not interrupted and not withheld and not report.withheld
            report.seconds = time.perf_counter() - started
            cost = self._cost_tally()
            report.cost_usd = None if cost is None else cost - spent_before
            report.stopped = None if self._stopped is None else str(self._stopped)
            if interrupted:
                report.stopped = report.stopped or "interrupted"
            report.pair_modes = self._count_modes(writer)
            _write_summary(work, configuration, report, writer, self.errors)
            self.errors.extend(withheld)
            if withheld:
                _append_errors(work, withheld)  # visible now; truncated and redone on resume
            logger.info(
                "%s %d pairs from %d rows (%d failed, %d dropped) in %.1fs",
                "built" if report.complete else "stopped after",
                report.pairs,
                report.rows + report.resumed_rows,
                report.failed,
                sum(report.dropped.values()),
                report.seconds,
            )

    def _count_modes(self, writer: ShardWriter) -> dict[str, int]:
        """The pairs written so far by pair mode (a pure function of the seed and each id, so
        it is counted again from the ids rather than kept)."""
        ids = [row_id for segment in writer.segments for row_id in segment.ids]
        ids.extend(row_id for _, row_id in writer.taken_back()[0])
        return self.pair_modes.count(self.seed, ids)

    def _cost_tally(self) -> float | None:
        # None: the hallucinator has no cost, or no price is known (unknown, not zero)
        return self.hallucinator.cost_usd

    def _total_rows(self) -> int | None:
        try:
            total = len(self._rows)  # type: ignore[arg-type]
        except TypeError:
            return None
        if self.num_shards > 1:
            return None  # which rows are this shard's is known only as they are read
        return total

    def _in_shard(self, row_id: str) -> bool:
        if self.num_shards == 1:
            return True
        digest = hashlib.sha256(row_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.num_shards == self.shard_index

    # -- the pipeline -------------------------------------------------------------------------

    def _outcomes(self, start: int) -> Iterator[tuple[int, _Done | RowError, bool]]:
        """``(position, outcome, resumable)`` for each row of this shard from ``start`` on,
        in input order; ``resumable`` marks rows not done because the run stopped."""
        self._params = (
            self.hallucinator.params(),
            None if self.distorter is None else self.distorter.params(),
            _version(),
        )
        if self.ray_address is not None:
            from povidgen.pairs.ray_engine import ray_outcomes

            yield from ray_outcomes(self, start)
            return
        self._loop = _LoopThread()
        self._stopped = None
        self._closing = False
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="povidgen-rows")
        try:
            if self.hallucinator.streams:
                yield from self._stream(start)
            else:
                yield from self._batches(start)
        finally:
            self._closing = True
            self._pool.shutdown(wait=True, cancel_futures=True)
            try:
                self._loop.run(_cancel_pending())  # calls of rows an interrupt left behind
                self._loop.run(_within(self.hallucinator.aclose(), 10.0))
            finally:
                self._loop.close()
                self._loop = None

    def _rows_from(self, start: int) -> Iterator[tuple[int, Mapping[str, Any], str | RowError]]:
        """This shard's rows from ``start`` on, each with its id or its input error (ids of
        earlier rows are still read, so a duplicate of a finished row is caught; with
        ``drop_duplicates``, so is a repeat of any earlier row's content, in any share)."""
        seen: dict[str, int] = {}
        repeats = RepeatedRows() if self.drop_duplicates else None
        for index, row in enumerate(self._rows):
            identity = self._identify(index, row, seen)
            row_id = identity if isinstance(identity, str) else identity.id
            if repeats is not None and isinstance(identity, str):
                key = self._content_key(row)
                earlier = None if key is None else repeats.first(key, index, row_id)
                if earlier is not None:
                    identity = repeated_row(row_id, index, earlier)
            if not self._in_shard(row_id) or index < start:
                continue
            yield index, row, identity

    def _content_key(self, row: Mapping[str, Any]) -> bytes | None:
        """The row's content key for repeated-row detection, or ``None`` for a row that fails
        its checks anyway (a failing row must not make a good one a repeat)."""
        turn = turn_of(row)
        if turn is not None and turn.error is not None:
            return None
        prompt, answer = row.get(self.prompt_column), row.get(self.answer_column)
        if not (isinstance(prompt, str) and prompt.strip()):
            return None
        if not (isinstance(answer, str) and answer.strip()):
            return None
        context = () if turn is None else turn.context
        return content_key(row.get(self.image_column), prompt, answer, context)

    def _stream(self, start: int) -> Iterator[tuple[int, _Done | RowError, bool]]:
        """A sliding window: each row is decoded, sent and distorted on the worker pool as
        soon as it is read (the event loop keeps up to ``concurrency`` calls in flight, with
        no batch barrier); outcomes leave in input order, and at most
        ``4 x concurrency + 2 x workers`` rows wait in the window."""
        assert self._loop is not None
        assert self._pool is not None
        self._closing = False
        slots = self._loop.run(_semaphore(self.concurrency))
        window: deque[tuple[int, Future[_Prepared | RowError]]] = deque()
        limit = 4 * self.concurrency + 2 * self.workers

        def finish() -> tuple[int, _Done | RowError, bool]:
            index, future = window[0]  # popped only once done: an interrupt cancels it below
            prepared = future.result()
            if isinstance(prepared, RowError):
                window.popleft()
                return index, prepared, prepared.error_type == "RunStoppedError"
            result = prepared.call.result() if prepared.call is not None else None
            window.popleft()
            return index, *self._complete(prepared, result)

        try:
            for index, row, identity in self._rows_from(start):
                if isinstance(identity, RowError):
                    done: Future[_Prepared | RowError] = Future()
                    done.set_result(identity)
                    window.append((index, done))
                else:
                    window.append(
                        (index, self._pool.submit(self._prepare, index, row, identity, slots))
                    )
                while window and _ready(window[0][1]):
                    yield self._logged(finish())
                while len(window) >= limit:
                    yield self._logged(finish())  # the read-ahead stays bounded
            while window:
                yield self._logged(finish())
        except BaseException:  # an interrupt, or the consumer stopped: start no new call
            self._closing = True
            raise
        finally:
            for _, future in window:  # interrupted: no call outlives the run
                future.cancel()
                if future.done() and not future.cancelled():
                    prepared = future.result()
                    if not isinstance(prepared, RowError) and prepared.call is not None:
                        prepared.call.cancel()

    def _batches(self, start: int) -> Iterator[tuple[int, _Done | RowError, bool]]:
        """Batches of ``batch_size`` rows, for hallucinators that take rows together."""
        assert self._loop is not None
        assert self._pool is not None
        batch: list[tuple[int, Mapping[str, Any], str | RowError]] = []

        def process() -> Iterator[tuple[int, _Done | RowError, bool]]:
            assert self._loop is not None
            assert self._pool is not None
            prepared = list(
                self._pool.map(lambda item: self._prepare(item[0], item[1], item[2], None), batch)
            )
            pending = [p for p in prepared if isinstance(p, _Prepared)]
            # image-contrast rows keep their answer: no call
            called = [p for p in pending if p.pending.mode != "image"]
            results = (
                self._loop.run(
                    self.hallucinator.ahallucinate_many(
                        [p.pending.example for p in called], concurrency=self.concurrency
                    )
                )
                if called
                else []
            )
            by_index: dict[int, object] = {
                p.pending.index: r for p, r in zip(called, results, strict=True)
            }
            # images are distorted and encoded only now, a window at a time, so a batch of
            # thousands of rows never holds all their encoded images at once
            encoded: deque[Future[_Prepared]] = deque()
            upcoming = iter(pending)
            for (index, _, _), item in zip(batch, prepared, strict=True):
                if isinstance(item, RowError):
                    yield self._logged((index, item, item.error_type == "RunStoppedError"))
                    continue
                while len(encoded) < 2 * self.workers:
                    following = next(upcoming, None)
                    if following is None:
                        break
                    encoded.append(self._pool.submit(self._encode, following))
                done = encoded.popleft().result()
                yield self._logged((index, *self._complete(done, by_index.get(index))))

        for item in self._rows_from(start):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from process()
                batch = []
        if batch:
            yield from process()

    def _logged(
        self, outcome: tuple[int, _Done | RowError, bool]
    ) -> tuple[int, _Done | RowError, bool]:
        _, item, _ = outcome
        if isinstance(item, RowError):
            verb = "dropped" if drop_kind(item) is not None else "failed"
            logger.info(
                "row %d (%s) %s at %s: %s", item.index, item.id, verb, item.stage, item.reason
            )
        return outcome

    def _identify(self, index: int, row: Mapping[str, Any], seen: dict[str, int]) -> str | RowError:
        """The row's id, or its input error (a missing column, an empty or repeated id)."""
        row_id = f"row-{index}"
        for column in (self.image_column, self.prompt_column, self.answer_column, self.id_column):
            if column is not None and column not in row:
                return _row_error(row_id, index, "input", MissingColumnError("a", column, row))
        if self.id_column is not None:
            raw_id = row[self.id_column]
            if raw_id is None or not str(raw_id).strip():
                error = InvalidExampleError(f"empty id in column {self.id_column!r}")
                return _row_error(row_id, index, "input", error)
            row_id = str(raw_id)
        turn = turn_of(row)
        if turn is not None:  # a conversation's exchange: the record's id, and the turn
            base = row_id if self.id_column is not None else f"row-{turn.record}"
            row_id = turn_id(base, turn.turn)
        if row_id in seen:
            error = InvalidExampleError(
                f"duplicate id {row_id!r} (first seen at row {seen[row_id]})"
            )
            return _row_error(row_id, index, "input", error)
        seen[row_id] = index
        return row_id

    def _prepare(
        self,
        index: int,
        row: Mapping[str, Any],
        row_id: str,
        slots: asyncio.Semaphore | None,
    ) -> _Prepared | RowError:
        """On a worker: check and decode the row and, when ``slots`` is given, start its call
        and distort and encode its images while the call is in flight (batches encode after
        their results, see :meth:`_batches`)."""
        if self._stopped is not None:
            stopped = RunStoppedError(f"not attempted: {self._stopped}")
            return _row_error(row_id, index, "hallucinate", stopped)
        read = self._read(index, row, row_id)
        if isinstance(read, RowError):
            return read
        call = None
        if slots is not None:
            assert self._loop is not None
            if self._closing:
                interrupted = RunStoppedError("not attempted: interrupted")
                return _row_error(row_id, index, "hallucinate", interrupted)  # resumable
            if read.mode != "image":  # an image-contrast row keeps its answer: no call
                coroutine = _bounded_call(self.hallucinator, read.example, slots)
                call = asyncio.run_coroutine_threadsafe(coroutine, self._loop.loop)
        prepared = _Prepared(read, call)
        if slots is not None:
            self._encode(prepared)
        return prepared

    def _encode(self, prepared: _Prepared) -> _Prepared:
        """Distort the row's image and encode both images (PNG; the clean one as its source
        bytes where it needed no conversion)."""
        image = prepared.pending.example.image
        distorted_row = prepared.pending.mode != "text"  # a text-contrast row keeps its image
        if self.distorter is not None and self.store_rejected_images and distorted_row:
            try:
                distorted = self.distorter(image, seed=prepared.pending.example.seed)
                prepared.rejected_bytes = png_bytes(distorted)
            except Exception as error:  # noqa: BLE001 - a third-party distorter may raise anything
                prepared.distort_error = error
        prepared.image_bytes = prepared.pending.source.encoded or png_bytes(image)
        return prepared

    def _read(self, index: int, row: Mapping[str, Any], row_id: str) -> _Pending | RowError:
        def fail(stage: Stage, error: BaseException | str) -> RowError:
            return _row_error(row_id, index, stage, error)

        turn = turn_of(row)
        if turn is not None and turn.error is not None:
            return fail("input", InvalidExampleError(turn.error))
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
            context=[] if turn is None else list(turn.context),
        )
        return _Pending(index, example, source, self.pair_modes.mode_of(self.seed, row_id))

    def _complete(self, prepared: _Prepared, result: object) -> tuple[_Done | RowError, bool]:
        """The row's pair from its prepared images and its call's result, or its failure
        (and whether it failed because the run stopped, so a later run makes it)."""
        example = prepared.pending.example
        index = prepared.pending.index
        if prepared.pending.mode == "image":  # no call: the answer stays, the image differs
            if prepared.distort_error is not None:
                return _row_error(example.id, index, "distort", prepared.distort_error), False
            return self._pair(prepared, example.answer, []), False
        if isinstance(result, RunStoppedError):
            self._note_stop(result)
            return _row_error(example.id, index, "hallucinate", result), True
        if isinstance(result, Exception):
            return _row_error(example.id, index, "hallucinate", result), False
        if not isinstance(result, Hallucination):
            return _row_error(
                example.id,
                index,
                "hallucinate",
                f"{type(self.hallucinator).__name__}.ahallucinate returned "
                f"{type(result).__name__}, not a Hallucination",
            ), False
        if prepared.distort_error is not None:
            return _row_error(example.id, index, "distort", prepared.distort_error), False
        if self.drop_duplicates and near_duplicate(example.answer, result.rejected):
            return near_duplicate_pair(example.id, index), False
        return self._pair(prepared, result.rejected, result.edits), False

    def _pair(self, prepared: _Prepared, rejected: str, edits: list[Edit]) -> _Done | RowError:
        """The output row of a finished pair, or its ``pair`` failure."""
        example = prepared.pending.example
        mode = prepared.pending.mode
        try:
            provenance = Provenance(
                hallucinator=self.hallucinator.name,
                hallucinator_params=self._params[0],
                distorter=None if self.distorter is None else self.distorter.name,
                distorter_params=self._params[1],
                seed=self.seed,
                example_seed=example.seed,
                edits=edits,
                povidgen_version=self._params[2],
                turn=len(example.context) if self._conversations else None,
            )
            fields: dict[str, Any] = {
                "id": example.id,
                "image": example.image,
                "prompt": example.prompt,
                "chosen": example.answer,
                "rejected": rejected,
                "rejected_image": None,
                "provenance": provenance,
                "context": example.context,
            }
            # an image-contrast pair repeats its answer by design (the contrast is in the
            # image), which PreferencePair's own check, meant for text pairs, refuses
            pair = (
                PreferencePair.model_construct(**fields)
                if mode == "image"
                else PreferencePair(**fields)
            )
        except ValidationError as error:
            reason = "; ".join(e["msg"] for e in error.errors())
            return _row_error(example.id, prepared.pending.index, "pair", f"invalid pair: {reason}")
        row = pair_to_row(
            pair,
            image_bytes=prepared.image_bytes,
            rejected_image_bytes=prepared.rejected_bytes,
            pair_mode=mode if self._record_modes else None,
        )
        return _Done(example.id, row, row_size(row))

    def _note_stop(self, result: RunStoppedError) -> None:
        if self._stopped is None:
            # the hallucinator keeps the first cause; in-flight rows only say "not attempted"
            cause = self.hallucinator.stopped
            self._stopped = cause if cause is not None else result


@dataclass
class _Prepared:
    """A row read and decoded, its call started, its images encoded."""

    pending: _Pending
    call: Future[HallucinationResult] | None
    image_bytes: bytes = b""
    rejected_bytes: bytes | None = None
    distort_error: Exception | None = None


@dataclass
class _Done:
    """A finished pair: its id, its row in the output columns and its size in bytes."""

    id: str
    row: dict[str, Any]
    size: int


def _ready(future: Future[_Prepared | RowError]) -> bool:
    if not future.done():
        return False
    prepared = future.result()
    return isinstance(prepared, RowError) or prepared.call is None or prepared.call.done()


class _ProgressBar:
    """A tqdm bar (rows/s and ETA by tqdm; failures and cost in its postfix), or a callback."""

    def __init__(self, bar: tqdm[Any] | None, callback: Callable[[int], object] | None) -> None:
        self.bar = bar
        self.callback = callback

    def advance(self, *, failed: int, cost: float | None) -> None:
        if self.callback is not None:
            self.callback(1)
        if self.bar is not None:
            self.bar.update(1)
            postfix = f"failed={failed}" + ("" if cost is None else f", cost=${cost:.4f}")
            self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(
    progress: bool | Callable[[int], object] | None, total: int | None, done: int
) -> _ProgressBar:
    if progress is True:
        bar = tqdm(total=total, initial=done, unit="row", desc="building pairs", smoothing=0.05)
        return _ProgressBar(bar, None)
    if callable(progress):
        return _ProgressBar(None, progress)
    return _ProgressBar(None, None)


def _earlier_errors(folder: Path, writer: ShardWriter) -> list[RowError]:
    """The failures already written (finished segments, then the open one's)."""
    errors: list[RowError] = []
    path = folder / ERRORS
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                errors.append(RowError.model_validate_json(line))
    errors.extend(writer.taken_back()[1])
    return errors


def _append_errors(folder: Path, errors: Sequence[RowError]) -> None:
    with (folder / ERRORS).open("a", encoding="utf-8") as handle:
        for error in errors:
            handle.write(json.dumps(error.model_dump(mode="json"), ensure_ascii=False) + "\n")


def _write_summary(
    folder: Path,
    configuration: dict[str, Any],
    report: BuildReport,
    writer: ShardWriter,
    errors: Sequence[RowError],
) -> None:
    """``summary.json``: counts, failures by stage and reason, dropped rows by kind, pairs by
    mode, cost, time and configuration (time and cost added up over every run that wrote the
    folder)."""
    failures: dict[str, dict[str, int]] = {}
    dropped = {kind: 0 for kind in DROP_KINDS.values()}
    for error in errors:
        kind = drop_kind(error)
        if kind is not None:
            dropped[kind] += 1
            continue
        by_reason = failures.setdefault(error.stage, {})
        by_reason[error.reason] = by_reason.get(error.reason, 0) + 1
    seconds = sum(s.seconds for s in writer.segments)
    costs = [s.cost_usd for s in writer.segments if s.cost_usd is not None]
    previous = read_json_object(folder / SUMMARY)
    runs = int(previous.get("runs", 0)) + 1 if isinstance(previous, dict) else 1
    total_seconds = float(previous.get("seconds_all_runs", 0.0)) if previous else 0.0
    total_seconds += report.seconds
    total_cost = float(previous.get("cost_usd_all_runs") or 0.0) if previous else 0.0
    total_cost += report.cost_usd or 0.0
    rows = writer.pairs + writer.failed
    summary = {
        "complete": report.complete,
        "stopped": report.stopped,
        "rows": rows,
        "pairs": writer.pairs,
        "failed": writer.failed - sum(dropped.values()),
        "not_attempted": report.not_attempted + report.withheld,
        "failures": {stage: dict(sorted(r.items())) for stage, r in sorted(failures.items())},
        "dropped": dropped,
        "pair_modes": dict(report.pair_modes),
        "shards": len(writer.segments),
        "cost_usd": sum(costs) if costs else None,
        "cost_usd_all_runs": total_cost if report.cost_usd is not None or costs else None,
        "seconds": round(seconds, 3),
        "seconds_all_runs": round(total_seconds, 3),
        "rows_per_second": round(rows / seconds, 3) if seconds > 0 else None,
        "runs": runs,
        "povidgen_version": _version(),
        "configuration": configuration,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    temporary = folder / f".{SUMMARY}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, folder / SUMMARY)


def _report_from_summary(folder: Path) -> BuildReport:
    summary = read_json_object(folder / SUMMARY) or {}
    report = BuildReport(
        rows=0,
        pairs=int(summary.get("pairs", 0)),
        complete=bool(summary.get("complete", False)),
    )
    report.resumed_rows = int(summary.get("rows", 0))
    for stage, reasons in (summary.get("failures") or {}).items():
        report.errors_by_stage[stage] += sum(reasons.values())
    for kind, count in (summary.get("dropped") or {}).items():
        if count:
            report.dropped[kind] += int(count)
    report.pair_modes = {k: int(v) for k, v in (summary.get("pair_modes") or {}).items()}
    return report


def _count_error(report: BuildReport, error: RowError) -> None:
    """Count a row's record in ``report``: a dropped row by kind, a failure by stage."""
    kind = drop_kind(error)
    if kind is not None:
        report.dropped[kind] += 1
    else:
        report.errors_by_stage[error.stage] += 1


def _legacy_modes(distorter: Distorter | None) -> PairModes:
    """What a build made before pair modes: both contrasts with a distorter, text without."""
    return PairModes.only("both" if distorter is not None else "text")


def _pair_modes(
    pair_mode: BuildMode | None, mix: Mapping[str, float] | None, distorter: Distorter | None
) -> PairModes:
    """The builder's :class:`PairModes`, checked against its distorter."""
    if pair_mode is not None and pair_mode not in BUILD_MODES:
        raise ValueError(f"pair_mode must be one of {', '.join(BUILD_MODES)}; got {pair_mode!r}")
    if mix is not None and pair_mode != "mix":
        raise ValueError(f"mix= goes with pair_mode='mix' (got pair_mode={pair_mode!r})")
    if pair_mode is None:
        return _legacy_modes(distorter)
    if pair_mode == "mix":
        modes = PairModes.mix({"text": 1.0, "image": 1.0} if mix is None else mix)
    else:
        modes = PairModes.only(pair_mode)
    if distorter is None and (modes.uses("image") or modes.uses("both")):
        needing = "image" if modes.uses("image") else "both"
        raise ValueError(
            f"pair mode {needing!r} needs a distorter to make the rejected image; give one "
            "(povidgen.DiffusionNoise(step=500), say) or use pair_mode='text'"
        )
    return modes


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


async def _cancel_pending(timeout: float = 5.0) -> None:
    """Cancel every other task of the run's loop and wait for them to end, at most
    ``timeout`` seconds (a task that ignores its cancellation must not hang the exit)."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


async def _within(coroutine: Coroutine[Any, Any, None], timeout: float) -> None:
    """``coroutine``, given up after ``timeout`` seconds (closing connections at exit)."""
    try:
        await asyncio.wait_for(coroutine, timeout)
    except TimeoutError:
        logger.warning("closing the hallucinator took over %.0fs; left to the exit", timeout)


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


def _describe(rows: Iterable[Mapping[str, Any]]) -> str:
    """A default ``source`` for the configuration: what identifies the input without reading
    it all."""
    if isinstance(rows, datasets.Dataset):
        return f"datasets.Dataset {rows._fingerprint} ({rows.num_rows} rows)"
    if isinstance(rows, datasets.IterableDataset):
        return f"datasets.IterableDataset {rows.info.dataset_name or ''}".strip()
    try:
        return f"{len(rows)} rows in memory"  # type: ignore[arg-type]
    except TypeError:
        return "rows from an iterable"


def _version() -> str:
    from povidgen import __version__

    return __version__
