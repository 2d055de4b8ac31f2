"""The Ray Data engine of :class:`povidgen.PairBuilder` (``ray_address=...``, ``povidgen build
--ray [ADDRESS]``): the rows' work runs on the workers of a Ray cluster, and the output is the
local run's, byte for byte.

The split of the work::

    driver: dataset --_rows_from (ids, duplicates, shard)--> pickled rows --> feed queue
                                                                                  |
    Ray Data:   pull (one task, in order) --> map_batches(_RowWorker actors) -----+
                                                                                  |
    driver: <--- outcomes in input order (preserve_order) <------------------------+
            merged with the rows that failed in the driver, then written as a local run's

* The driver reads the dataset and checks ids, duplicates and the shard (:meth:`PairBuilder.
  _rows_from` needs the rows in order). It pickles the three columns a row needs and puts them,
  a few rows at a time, on a bounded :class:`ray.util.queue.Queue`: it blocks when the queue is
  full, so the dataset is streamed, never held.
* One Ray Data task pulls the rows off the queue in order; ``map_batches`` hands them, a batch
  of ``batch_size`` rows at a time, to a pool of :class:`_RowWorker` actors (one per CPU of the
  cluster). Each actor holds its own copy of the builder (hallucinator and distorter included,
  sent pickled), its own event loop and one thread, and runs the local pipeline on its batch
  (:meth:`PairBuilder._stream`, or :meth:`PairBuilder._batches` for a batch-API hallucinator):
  decoding, the hallucinator's calls (up to ``concurrency`` in flight per actor), distortion,
  PNG encoding and :meth:`PairBuilder._complete`.
* Ray Data returns the outcomes in input order (``preserve_order``); the driver yields them
  with the rows that failed its own checks, as the local path does. Ray Data's backpressure and
  the bounded queue keep memory flat.

What differs from a local run: ``concurrency`` and a hallucinator's rate and cost limits hold
per actor (each has its own hallucinator), so a cluster of ``n`` CPUs may have ``n x
concurrency`` calls in flight and spend up to ``n x max_cost_usd``; the cost the actors report
is added to the driver's tally as batches come back. A stop (bad credentials, an exhausted
quota) stops the actor that met it; the rows after it are left for the next run, as locally.
Image paths are opened by the workers, so they must be readable there (a shared file system);
image bytes travel with the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import pickle
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from povidgen.errors import InvalidExampleError, PovidgenError, RunStoppedError
from povidgen.pairs.builder import (
    BuildReport,
    PairBuilder,
    _Done,
    _LoopThread,
    _row_error,
)
from povidgen.schema import RowError
from povidgen.sources.conversations import TURN_KEY

__all__ = ["ray_outcomes"]

logger = logging.getLogger("povidgen")

_INSTALL = "pip install 'povidgen[ray]'"

_ROWS_PER_PUT = 8
"""Rows the driver puts on the feed queue at once."""
_QUEUED_PUTS = 8
"""Puts the feed queue holds before the driver waits (so at most 64 rows wait there)."""
_PUT_TIMEOUT = 0.5
"""Seconds a blocked put waits before it checks whether the run was stopped."""
_CLOSE_TIMEOUT = 10.0
"""Seconds an actor leaving waits for its hallucinator to close, and for its loop to stop."""

_Outcome = tuple[int, _Done | RowError, bool]


def ray_outcomes(builder: PairBuilder, start: int) -> Iterator[_Outcome]:
    """``(position, outcome, resumable)`` for each row of ``builder``'s shard from ``start`` on,
    in input order, made on Ray: what :meth:`PairBuilder._outcomes` yields for a local run.

    ``builder.ray_address`` says where: ``"local"`` starts a Ray instance on this machine with
    ``builder.workers`` CPUs; ``"auto"`` joins the cluster Ray finds (``RAY_ADDRESS``, or one
    started on this machine with ``ray start``) or else starts a local one; anything else is a
    cluster address for ``ray.init``. When Ray is already initialised in this process, that
    instance is used. An instance started here is shut down at the end (one joined is left
    running).

    Raises:
        PovidgenError: Ray is not installed, the cluster cannot be reached, or the
            hallucinator or distorter cannot be sent to the workers (pickled).
    """
    ray = _import_ray()
    address = builder.ray_address
    assert address is not None
    builder._stopped = None
    spec = _worker_spec(builder, ray)
    started = _connect(ray, address, builder.workers)
    try:
        yield from _run(ray, builder, start, spec)
    finally:
        if started:
            ray.shutdown()


# -- the driver -------------------------------------------------------------------------------


def _import_ray() -> ModuleType:
    try:
        import ray
        import ray.data
        import ray.util.queue
    except ImportError as error:
        raise PovidgenError(
            f"building on Ray needs Ray Data, which is not installed ({error}); {_INSTALL}"
        ) from error
    return ray


def _connect(ray: ModuleType, address: str, workers: int) -> bool:
    """Initialise Ray for ``address``; whether this call did (and so must shut it down)."""
    if ray.is_initialized():
        logger.info("building on the Ray instance this process already uses")
        return False
    try:
        if address == "local":
            ray.init(address="local", num_cpus=workers, include_dashboard=False)
        elif address == "auto":
            ray.init()
        else:
            ray.init(address=address)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise PovidgenError(f"cannot start or reach Ray at {address!r}: {error}") from error
    return True


def _worker_spec(builder: PairBuilder, ray: ModuleType) -> bytes:
    """The builder the actors run, pickled: its settings, hallucinator and distorter without
    the dataset or this run's state."""
    worker = _WorkerBuilder.__new__(_WorkerBuilder)
    worker.__dict__.update(vars(builder))
    worker._rows = ()
    worker._items = []
    worker._stopped = None
    worker._loop = None
    worker._pool = None
    worker.errors = []
    worker.report = BuildReport()
    worker.ray_address = None
    worker.workers = 1  # an actor holds one CPU: one thread decodes, distorts and encodes
    try:
        spec: bytes = ray.cloudpickle.dumps(worker)
    except Exception as error:  # pickling user objects may raise anything
        distorter = type(builder.distorter).__name__ if builder.distorter is not None else None
        raise PovidgenError(
            "cannot send the builder to the Ray workers: the hallucinator "
            f"({type(builder.hallucinator).__name__}) and the distorter ({distorter}) must be "
            f"picklable, and pickling failed with {type(error).__name__}: {error}. Build "
            "without --ray / ray_address, or give the object __getstate__/__setstate__ that "
            "leave out clients, locks and open files."
        ) from error
    return spec


def _run(ray: ModuleType, builder: PairBuilder, start: int, spec: bytes) -> Iterator[_Outcome]:
    """Feed the rows to Ray Data, and merge what comes back with the rows the driver failed."""
    from ray.data import ActorPoolStrategy, DataContext
    from ray.util.queue import Full, Queue

    actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    logger.info(
        "building on Ray: %d actors, batches of %d rows, up to %d calls in flight per actor",
        actors,
        builder.batch_size,
        builder.concurrency,
    )
    queue = Queue(maxsize=_QUEUED_PUTS)
    feeder = _Feeder(builder, start, queue, Full)
    context = DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.target_max_block_size,
        context.enable_progress_bars,
    )
    results: Iterator[dict[str, Any]] | None = None
    # set for this run and put back after it (a Ray version may read them while it runs)
    try:
        feeder.start()
        feeder.first.wait()
        if feeder.sent:  # else nothing to do there (Ray Data warns about an empty input)
            context.execution_options.preserve_order = True  # outcomes leave in input order
            context.target_max_block_size = 1  # a block a row: batches spread over the actors
            context.enable_progress_bars = False  # the build's own bar counts the rows
            dataset = (
                ray.data.from_items([{"feed": 0}])
                .map_batches(
                    _puller(), fn_kwargs={"queue": queue}, batch_format="pyarrow", num_cpus=0
                )
                .map_batches(
                    _RowWorker,
                    fn_constructor_args=(spec,),
                    batch_size=builder.batch_size,
                    batch_format="pyarrow",
                    compute=_actor_pool(ActorPoolStrategy, actors),
                    num_cpus=1,
                )
            )
            results = iter(dataset.iter_rows())
            for shipped in results:
                yield from feeder.through(shipped["outcome"])
        yield from feeder.rest()
    finally:
        if results is not None:
            close = getattr(results, "close", None)
            if callable(close):
                close()  # an interrupted run stops the pipeline
        feeder.stop()
        (
            context.execution_options.preserve_order,
            context.target_max_block_size,
            context.enable_progress_bars,
        ) = saved
        with contextlib.suppress(Exception):
            queue.shutdown()


def _actor_pool(strategy: Any, actors: int) -> Any:
    """A pool of up to ``actors`` actors, all started at once where Ray allows (2.50 on).

    Its minimum is one: Ray Data warns when fewer batches come than the minimum (a small
    input), which must not fail a run where warnings are errors."""
    if "initial_size" in inspect.signature(strategy).parameters:
        return strategy(min_size=1, max_size=actors, initial_size=actors)
    return strategy(min_size=1, max_size=actors)


class _Feeder:
    """The driver's reading thread: this shard's rows in order, checked by the builder. Good
    rows go to the queue (pickled); every row's place is kept, so that the outcomes Ray returns
    are merged with the rows the driver failed, in input order."""

    def __init__(self, builder: PairBuilder, start: int, queue: Any, full: type[Exception]):
        self.builder = builder
        self.start_at = start
        self.queue = queue
        self.full = full
        self.order: deque[tuple[int, RowError | None]] = deque()
        """Rows read and not yet yielded: the driver's failure, or ``None`` for one sent."""
        self.sent = 0
        """Rows sent to Ray."""
        self.first = threading.Event()
        """Set once a row is on its way to Ray, or the rows are over."""
        self.failure: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="povidgen-ray-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def through(self, shipped: bytes) -> Iterator[_Outcome]:
        """The rows the driver failed that come before Ray's next outcome, then that one."""
        builder = self.builder
        outcome: _Shipped = pickle.loads(shipped)
        while self.order and self.order[0][1] is not None:
            index, error = self.order.popleft()
            assert error is not None
            yield builder._logged((index, error, False))
        due = self.order.popleft()[0] if self.order else None
        if due != outcome.index:
            raise PovidgenError(
                f"Ray returned row {outcome.index} where row {due} was due (a Ray worker "
                "failed and its task was retried?); the rows from there on are not written: "
                "run again to resume"
            )
        if outcome.cost:
            add = getattr(getattr(builder.hallucinator, "cost", None), "add", None)
            if callable(add):
                add(outcome.cost)
        if outcome.resumable and builder._stopped is None:
            builder._stopped = RunStoppedError(outcome.stopped or "the run stopped")
        yield builder._logged((outcome.index, outcome.outcome, outcome.resumable))

    def rest(self) -> Iterator[_Outcome]:
        """After Ray's last outcome: the rows the driver failed after it, then the reading
        thread's error, if it had one."""
        self._thread.join()
        while self.order:
            index, error = self.order.popleft()
            if error is None:
                if self.failure is not None:
                    raise self.failure
                raise PovidgenError(
                    f"Ray returned no outcome for row {index}; the rows from there on are not "
                    "written: run again to resume"
                )
            yield self.builder._logged((index, error, False))
        if self.failure is not None:
            raise self.failure

    def _feed(self) -> None:
        chunk: list[bytes] = []
        try:
            for index, row, identity in self.builder._rows_from(self.start_at):
                if self._stopping.is_set():
                    return
                if isinstance(identity, str):
                    sent = self._pickled(index, row, identity)
                    if isinstance(sent, bytes):
                        self.order.append((index, None))
                        chunk.append(sent)
                        self.sent += 1
                        self.first.set()
                        if len(chunk) == _ROWS_PER_PUT:
                            self._put(chunk)
                            chunk = []
                        continue
                    identity = sent
                self.order.append((index, identity))
        except BaseException as error:  # noqa: BLE001 - raised again in the driver's thread
            self.failure = error
        finally:
            if chunk:
                self._put(chunk)  # the rows read before an error are built too
            self._put(None)  # the end of the rows: the pull task returns
            self.first.set()

    def _pickled(self, index: int, row: Mapping[str, Any], row_id: str) -> bytes | RowError:
        builder = self.builder
        columns = (builder.image_column, builder.prompt_column, builder.answer_column)
        cells = {c: row[c] for c in columns}
        if TURN_KEY in row:  # a conversation's exchange: its context goes along
            cells[TURN_KEY] = row[TURN_KEY]
        try:
            return pickle.dumps((index, cells, row_id), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001 - a cell of any type may refuse pickling
            reason = f"the row cannot be sent to the Ray workers (not picklable: {error})"
            return _row_error(row_id, index, "input", InvalidExampleError(reason))

    def _put(self, chunk: list[bytes] | None) -> None:
        while not self._stopping.is_set():
            try:
                self.queue.put(chunk, timeout=_PUT_TIMEOUT)
                return
            except self.full:
                continue


# -- the workers ------------------------------------------------------------------------------


@dataclass
class _Shipped:
    """One outcome on its way back from an actor."""

    index: int
    outcome: _Done | RowError
    resumable: bool
    stopped: str | None
    """Why the actor's run stopped, when it has."""
    cost: float
    """What the actor's hallucinator spent since its previous outcome."""


class _WorkerBuilder(PairBuilder):
    """The builder on an actor: it builds the rows it is handed (the driver checked them)."""

    _items: list[tuple[int, Mapping[str, Any], str | RowError]]

    def _rows_from(self, start: int) -> Iterator[tuple[int, Mapping[str, Any], str | RowError]]:
        yield from self._items


def _puller() -> Callable[[Any, Any], Iterator[Any]]:
    """The function of the one Ray Data task that takes the rows off the driver's queue.

    It is made here, not at module level, so that it is pickled by value and its worker does
    not import povidgen (seconds of start-up: torch, datasets) just to move bytes. Should its
    worker die, Ray runs it again, and the rows the first attempt took are missing: the driver
    notices (a row comes back out of place, or not at all) and stops the run, which resumes."""

    def pull(batch: Any, queue: Any) -> Iterator[Any]:
        import pyarrow as pa

        while True:
            chunk = queue.get()
            if chunk is None:
                return
            yield pa.table({"payload": pa.array(chunk, type=pa.large_binary())})

    return pull


class _RowWorker:
    """A Ray Data actor: its own builder, event loop and thread; builds batches of rows."""

    def __init__(self, spec: bytes) -> None:
        builder = pickle.loads(spec)
        assert isinstance(builder, _WorkerBuilder)
        builder._loop = _LoopThread()
        builder._pool = ThreadPoolExecutor(builder.workers, thread_name_prefix="povidgen-rows")
        self.builder = builder
        self.spent = builder._cost_tally() or 0.0

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        builder = self.builder
        builder._items = [pickle.loads(p) for p in batch.column("payload").to_pylist()]
        try:
            run = builder._stream if builder.hallucinator.streams else builder._batches
            outcomes = list(run(0))
        finally:
            builder._items = []
        shipped = []
        for index, outcome, resumable in outcomes:
            spent = builder._cost_tally() or 0.0
            stopped = None if builder._stopped is None else str(builder._stopped)
            item = _Shipped(index, outcome, resumable, stopped, spent - self.spent)
            self.spent = spent
            shipped.append(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        return pa.table({"outcome": pa.array(shipped, type=pa.large_binary())})

    def __del__(self) -> None:
        """When Ray Data lets the actor go: the hallucinator's connections are closed and the
        loop and thread stopped, as after a local run (bounded waits: this runs at exit)."""
        builder: _WorkerBuilder | None = getattr(self, "builder", None)
        if builder is None or builder._loop is None:
            return
        loop = builder._loop
        with contextlib.suppress(Exception):
            closing = asyncio.run_coroutine_threadsafe(builder.hallucinator.aclose(), loop.loop)
            closing.result(timeout=_CLOSE_TIMEOUT)
        if builder._pool is not None:
            builder._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            loop.loop.call_soon_threadsafe(loop.loop.stop)
            loop.thread.join(timeout=_CLOSE_TIMEOUT)
        builder._loop = builder._pool = None
