"""The ``povidgen`` command line: ``build`` pairs, ``preview`` them, ``train`` a VLM on them.

The library logs and never prints; this module is where progress bars and summaries live.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import datasets

from povidgen import __version__
from povidgen.convert import command as export_command
from povidgen.errors import PovidgenError
from povidgen.eval import command as eval_command
from povidgen.hub import command as push_command
from povidgen.pairs.build_config import BuildConfig
from povidgen.pairs.builder import BuildReport, PairBuilder
from povidgen.pairs.duplicates import drop_kind
from povidgen.pairs.output import OutputFolder, unwritable_parent
from povidgen.redact import scrub
from povidgen.registry import (
    available_distorters,
    available_hallucinators,
    get_distorter,
)
from povidgen.sources import command as scenes_command
from povidgen.train import command as train_command

__all__ = ["main"]

logger = logging.getLogger("povidgen")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 no pairs built, 2 bad input,
    3 stopped early: bad credentials, exhausted quota, the cost cap or a dead endpoint;
    130 interrupted with Ctrl-C, 143 a build stopped by SIGTERM; both resume when run
    again)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        print(f"povidgen: error: {error}", file=sys.stderr)
        return 2
    with _logging(verbose=args.verbose):
        try:
            code: int = args.run(args)
        except PovidgenError as error:
            print(f"povidgen: error: {scrub(str(error))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # what was written stays (a build's old output is untouched until the swap)
            print(f"\npovidgen: {args.command} interrupted", file=sys.stderr)
            return 130
    return code


@contextlib.contextmanager
def _logging(*, verbose: bool) -> Iterator[None]:
    """The ``povidgen`` logger to stderr while a command runs: warnings, or with ``-v`` every
    message down to DEBUG. Only the ``povidgen`` logger is raised, never the root logger: the
    SDKs' and httpx's debug logs carry request bodies (images, prompts) and headers."""
    log = logging.getLogger("povidgen")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    level = log.level
    if verbose:
        log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


class _UsageError(Exception):
    """A mistake on the command line, reported by :func:`main` on one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``povidgen: error: ...``), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _bounded(
    kind: type[int] | type[float], low: float | None = None, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` in ``[low, high]``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if not math.isfinite(value) or (low is not None and value < low):
            raise argparse.ArgumentTypeError(f"{text} is less than {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} is more than {high}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number > 0")
    return value


_COUNT = _bounded(int, 1)
_POSITIVE = _positive
_SEED = _bounded(int, 0, 2**63 - 1)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="povidgen", description="Make POVID-style preference pairs for vision-language models."
    )
    parser.add_argument("--version", action="version", version=f"povidgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every failed row")
    commands = parser.add_subparsers(dest="command", required=True)

    # Defaults live in BuildConfig, not here: a flag absent from the namespace was not given,
    # so a flag given with its default value still overrides --config's file.
    build = commands.add_parser(
        "build",
        help="build preference pairs from a dataset",
        argument_default=argparse.SUPPRESS,
    )
    build.add_argument(
        "--config",
        type=Path,
        metavar="FILE.yaml",
        help="read the settings from this YAML file (keys: these flags' names with '_' for "
        "'-'; flags given here override it); see docs/building.md",
    )
    source = build.add_mutually_exclusive_group()  # one of them, here or in --config's file
    source.add_argument("--demo", action="store_true", help="use the bundled synthetic scenes")
    source.add_argument(
        "--dataset",
        type=Path,
        metavar="PATH|HUB_ID",
        help="a save_to_disk folder, a .parquet/.jsonl file, a LLaVA-style .json file, a "
        "folder of data files or a Hub dataset id (owner/name), the last two read by "
        "datasets.load_dataset",
    )
    build.add_argument("--out", type=Path, metavar="DIR", help="output folder (required)")
    build.add_argument("--image-column", metavar="C", help="default: image")
    build.add_argument("--prompt-column", metavar="C", help="default: prompt")
    build.add_argument("--answer-column", metavar="C", help="default: answer")
    build.add_argument("--id-column", metavar="C", help="row ids (default: 'id' for LLaVA files)")
    build.add_argument(
        "--image-folder",
        type=Path,
        metavar="DIR",
        help="where relative image paths point (default: the dataset file's folder)",
    )
    build.add_argument(
        "--split", help="the split to read (default: 'train' if there is one, else the only split)"
    )
    build.add_argument(
        "--dataset-config", metavar="NAME", help="the configuration of a Hub dataset"
    )
    build.add_argument("--revision", metavar="R", help="a Hub dataset's branch, tag or commit")
    build.add_argument(
        "--streaming",
        action="store_true",
        help="stream the dataset instead of downloading it first (no progress total)",
    )
    build.add_argument("--seed", type=_SEED, metavar="N", help="default: 0")
    build.add_argument("--limit", type=_bounded(int, 0), metavar="N", help="first N rows only")
    build.add_argument(
        "--turns",
        choices=["first", "last", "all"],
        help="which exchanges of a multi-turn conversation (LLaVA 'conversations') become "
        "pairs, the earlier ones kept as context (default: first)",
    )
    build.add_argument(
        "--pair-mode",
        choices=["text", "image", "both", "mix"],
        help="the contrast of each pair: text (hallucinated answer), image (distorted image, "
        "same answer), both, or a seeded mix (default: both with a distorter, text without)",
    )
    build.add_argument(
        "--mix",
        type=_mix,
        metavar="TEXT:IMAGE[:BOTH]",
        help="with --pair-mode mix, the weights of the modes (default 1:1)",
    )
    build.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="drop near-duplicate pairs (rejected = chosen up to case and whitespace) and "
        "repeated rows, each recorded in errors.jsonl and counted in summary.json",
    )
    build.add_argument(
        "--provider",
        "--hallucinator",
        dest="provider",
        metavar="NAME",
        help=f"rule (the default), openai, anthropic, transformers or another registered "
        f"hallucinator (installed: {', '.join(available_hallucinators())})",
    )
    build.add_argument("--model", metavar="M", help="the provider's model")
    build.add_argument(
        "--word-lists",
        type=Path,
        action="append",
        metavar="FILE.json",
        help="rule provider: word lists for answers in another language (repeatable; the "
        "format is in docs/method.md)",
    )
    build.add_argument("--base-url", metavar="URL", help="an OpenAI-compatible server")
    build.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="read the API key from this environment variable (default: OPENAI_API_KEY or "
        "ANTHROPIC_API_KEY; a --base-url on localhost needs none)",
    )
    build.add_argument(
        "--price-in",
        type=_bounded(float, 0),
        metavar="USD",
        help="the model's input price in USD per million tokens, over the known prices (with "
        "--price-out)",
    )
    build.add_argument(
        "--price-out",
        type=_bounded(float, 0),
        metavar="USD",
        help="the model's output price in USD per million tokens (with --price-in)",
    )
    build.add_argument(
        "--max-cost", type=_POSITIVE, metavar="USD", help="stop before spending more"
    )
    build.add_argument(
        "--batch",
        action="store_true",
        help="use the provider's batch API (half price; an interrupted run resumes its batch)",
    )
    build.add_argument("--batch-dir", type=Path, metavar="DIR", help="where batch state is kept")
    build.add_argument(
        "--hallucinator-option",
        dest="hallucinator_options",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="a constructor option of the hallucinator, VALUE read as YAML (repeatable)",
    )
    build.add_argument(
        "--allow-empty",
        action="store_true",
        help="with --overwrite, replace an earlier output even when no pair was built",
    )
    build.add_argument(
        "--max-image-bytes",
        type=_COUNT,
        metavar="N",
        help="refuse image files larger than this (default 64 MiB)",
    )
    build.add_argument(
        "--max-image-pixels",
        type=_COUNT,
        metavar="N",
        help="refuse images of more pixels than this (default 64,000,000)",
    )
    build.add_argument(
        "--allow-outside-image-folder",
        action="store_true",
        help="read image paths that resolve outside --image-folder (refused by default)",
    )
    build.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="the reply cache (default: $POVIDGEN_CACHE_DIR or the user cache folder)",
    )
    build.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the reply cache (every request is sent and paid for)",
    )
    build.add_argument("--rpm", type=_POSITIVE, help="requests per minute at most")
    build.add_argument("--tpm", type=_POSITIVE, help="tokens per minute at most")
    build.add_argument(
        "--distorter",
        metavar="NAME",
        help=f"registered distorter (default: diffusion), or 'none' "
        f"(installed: {', '.join(available_distorters())})",
    )
    build.add_argument(
        "--noise-step",
        type=_bounded(int, 0, 999),
        metavar="T",
        help="the distorter's option step (diffusion: default 500)",
    )
    build.add_argument(
        "--overflow",
        choices=["clamp", "wrap"],
        help="the distorter's option overflow (diffusion: default clamp)",
    )
    build.add_argument(
        "--distorter-option",
        dest="distorter_options",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="a constructor option of the distorter, VALUE read as YAML (repeatable)",
    )
    build.add_argument("--demo-size", type=_COUNT, metavar="N", help="default: 64")
    build.add_argument("--concurrency", type=_COUNT, metavar="N", help="default: 8")
    build.add_argument(
        "--workers",
        type=_COUNT,
        metavar="N",
        help="threads decoding, distorting and encoding images (default: CPUs, at most 8)",
    )
    build.add_argument(
        "--no-rejected-images",
        action="store_true",
        help="do not store the distorted images (a trainer remakes them from each row's seed)",
    )
    build.add_argument(
        "--num-shards",
        type=_COUNT,
        metavar="N",
        help="split the input by id into N shares (one per machine; join them with merge)",
    )
    build.add_argument(
        "--shard-index", type=_bounded(int, 0), metavar="I", help="the share to build"
    )
    build.add_argument(
        "--shard-mb",
        type=_POSITIVE,
        metavar="MB",
        help="an output file closes once it holds this many MiB (default 512)",
    )
    build.add_argument(
        "--shard-rows",
        type=_COUNT,
        metavar="N",
        help="...or this many rows (default 10000)",
    )
    build.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run the rows on a Ray cluster (default address 'auto'; needs povidgen[ray])",
    )
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished povidgen output, or one built with another configuration",
    )
    build.set_defaults(run=_build)

    merge = commands.add_parser(
        "merge", help="join the outputs of --num-shards builds into one (equal to one run's)"
    )
    merge.add_argument("out", type=Path, metavar="OUT", help="the merged output folder")
    merge.add_argument("shards", type=Path, nargs="+", metavar="DIR", help="shard outputs")
    merge.add_argument(
        "--overwrite", action="store_true", help="replace an earlier povidgen output at OUT"
    )
    merge.set_defaults(run=_merge)

    preview = commands.add_parser("preview", help="draw a contact sheet of built pairs")
    preview.add_argument("pairs", type=Path, metavar="DIR", help="a folder written by build")
    preview.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    preview.add_argument("-n", type=_COUNT, default=6, help="how many pairs (default 6)")
    preview.set_defaults(run=_preview)

    distort = commands.add_parser("distort", help="distort one image with a registered distorter")
    distort.add_argument("image", type=Path, metavar="IMAGE")
    distort.add_argument(
        "--distorter",
        default="diffusion",
        metavar="NAME",
        help=f"one of: {', '.join(available_distorters())}",
    )
    distort.add_argument("--severity", type=int, default=None, metavar="S", help="1 (mild) to 5")
    distort.add_argument("--seed", type=_SEED, default=0, metavar="N")
    distort.add_argument("--out", type=Path, required=True, metavar="FILE")
    distort.set_defaults(run=_distort)

    train_command.add_parser(commands)
    eval_command.add_parser(commands)
    export_command.add_parser(commands)
    push_command.add_parser(commands)
    scenes_command.add_parser(commands)
    return parser


def _option(text: str) -> tuple[str, Any]:
    """An argparse type: ``KEY=VALUE``, the value read as YAML."""
    from povidgen.pairs.build_config import parse_option

    try:
        return parse_option(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _mix(text: str) -> str:
    """An argparse type: ``--mix``'s ``TEXT:IMAGE[:BOTH]`` weights, checked (kept as text)."""
    from povidgen.pairs.modes import parse_mix

    try:
        parse_mix(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _build_config(args: argparse.Namespace) -> BuildConfig:
    """The build's settings: ``--config``'s file, with the flags given over it."""
    given = {k: v for k, v in vars(args).items() if k in BuildConfig.model_fields}
    for key in ("hallucinator_options", "distorter_options"):
        if key in given:  # KEY=VALUE pairs, the last of a key winning
            given[key] = dict(given[key])
    return BuildConfig.resolve(getattr(args, "config", None), given)


@contextlib.contextmanager
def _torch_threads_shared(workers: int, provider: str) -> Iterator[None]:
    """While a build runs, give torch's intra-op pool only the image workers' share of the
    CPUs: ``max(1, CPUs // workers)`` threads (never more than it had). Restored afterwards.

    The ``workers`` threads already distort and encode rows side by side, one per CPU by
    default, and each worker's noise ops would otherwise start a team of as many threads as
    there are CPUs: the cores are oversubscribed and the idle team threads spin. On 2 cores a
    rule + diffusion build ran about 6% faster with one intra-op thread
    (``benchmarks/build_throughput.py``). Left alone for the ``transformers`` provider, whose
    model runs on that pool, and where torch is not loaded (no distorter needs it).
    """
    torch = sys.modules.get("torch")
    if torch is None or provider == "transformers" or workers < 2:
        yield
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    before = torch.get_num_threads()
    wanted = max(1, min(before, (cpus or 1) // workers))
    if wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """Leave what is alive now out of the garbage collector's full passes while a build runs.

    Everything imported by then (the interpreter, torch, the SDKs: millions of objects) lives
    as long as the process; scanning it, a full pass stops every thread for about 0.25 s
    every few seconds of a run and so holds up the calls in flight. Unfrozen afterwards, so
    that ``main()`` called in a process of its own (tests) leaks nothing.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _build(args: argparse.Namespace) -> int:
    config = _build_config(args)
    inputs = [p for p in (config.dataset, config.image_folder) if p is not None and p.exists()]
    # before any work; checked again under the lock and when a shard is written
    OutputFolder(config.out, overwrite=config.overwrite, inputs=inputs).check()
    if config.demo:
        from povidgen.sources.demo import demo_dataset

        dataset = demo_dataset(n=config.demo_size, seed=config.seed)
        source = f"demo(n={config.demo_size}, seed={config.seed})"
        image_column, prompt_column, answer_column = "image", "question", "answer"
        id_column: str | None = "id"
        image_folder: Path | None = None
    else:
        from povidgen.sources.hub import open_input

        assert config.dataset is not None  # BuildConfig requires demo or dataset
        with _datasets_progress(sys.stderr.isatty()):
            opened = open_input(
                config.dataset,
                config=config.dataset_config,
                split=config.split,
                streaming=config.streaming,
                revision=config.revision,
            )
        dataset, source = opened.dataset, opened.source
        image_column, prompt_column = config.image_column, config.prompt_column
        answer_column, id_column = config.answer_column, config.id_column
        if id_column is None and "conversations" in (dataset.column_names or ()):
            id_column = "id"
        image_folder = config.image_folder
        if image_folder is None:
            image_folder = opened.image_folder
    if config.limit is not None:
        if isinstance(dataset, datasets.IterableDataset):
            dataset = dataset.take(config.limit)
        else:
            dataset = dataset.select(range(min(config.limit, len(dataset))))
        source += f" (first {config.limit} rows)"

    distorter = config.create_distorter()
    hallucinator = config.create_hallucinator()
    batch_size = 64
    # a batch API takes the whole run in one submission (OpenAI allows 50,000)
    if config.batch or config.hallucinator_options.get("mode") == "batch":
        rows = len(dataset) if isinstance(dataset, datasets.Dataset) else 50_000
        batch_size = min(max(rows, 1), 50_000)
    builder = PairBuilder.from_dataset(
        dataset,
        hallucinator=hallucinator,
        distorter=distorter,
        image_column=image_column,
        prompt_column=prompt_column,
        answer_column=answer_column,
        id_column=id_column,
        seed=config.seed,
        image_folder=image_folder,
        concurrency=config.concurrency,
        batch_size=batch_size,
        image_limits=config.image_limits(),
        store_rejected_images=not config.no_rejected_images,
        num_shards=config.num_shards,
        shard_index=config.shard_index,
        workers=config.workers,
        shard_limits=config.shard_limits(),
        source=source,
        ray_address=config.ray,
        turns=config.turns,
        pair_mode=config.pair_mode,
        mix=config.mix_weights(),
        drop_duplicates=config.drop_duplicates,
    )
    out = config.out
    try:
        with (
            _terminate_as_interrupt(),
            _heap_frozen(),
            _torch_threads_shared(builder.workers, config.provider),
        ):
            report = builder.run(
                out,
                overwrite=config.overwrite,
                allow_empty=config.allow_empty,
                progress=True,
                inputs=inputs,
            )
    except KeyboardInterrupt as interrupt:
        # what was finished is this build's: its settings go beside it, for the resume
        config.write_beside(out, builder.configuration())
        print(
            f"\npovidgen: build interrupted; what was finished is in {out}. Run the same "
            "command again to resume (replies already received are not paid for again).",
            file=sys.stderr,
        )
        return 143 if isinstance(interrupt, _Terminated) else 130
    except OSError as error:  # a full disk, a folder removed under the run
        raise PovidgenError(f"cannot write {out}: {error}") from error
    if report.already_complete:
        print(
            f"{out} already holds this build, finished ({report.pairs} pairs); nothing to "
            "do (--overwrite builds it again)"
        )
        return 0
    if not report.kept_earlier:
        config.write_beside(out, builder.configuration())
    _print_report(report, builder, out)
    if report.stopped is not None:
        print(
            f"povidgen: the run stopped early: {report.stopped}. Run the same command again to "
            "resume once the cause is fixed.",
            file=sys.stderr,
        )
        return 3
    return 0 if report.pairs else 1


@contextlib.contextmanager
def _datasets_progress(show: bool) -> Iterator[None]:
    """Within the block, ``datasets``' own progress bars (downloading, preparing a split)
    show only if ``show`` (on a terminal; in a log they are noise)."""
    if show or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's preemption): stopped like Ctrl-C, exit code 143."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM finishes writing what is done, as Ctrl-C does, so a
    preempted build resumes from its last row instead of its last shard."""

    def stop(signum: int, frame: object) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_report(report: BuildReport, builder: PairBuilder, out: Path) -> None:
    """The summary a build prints when it ends."""
    if report.resumed_rows:
        print(f"resumed:      {report.resumed_rows} rows were already done")
    print(f"rows read:    {report.rows + report.resumed_rows}")
    print(f"pairs built:  {report.pairs}")
    print(f"rows failed:  {report.failed}")
    for stage, count in sorted(report.errors_by_stage.items()):
        reasons = sorted(
            {e.reason for e in builder.errors if e.stage == stage and drop_kind(e) is None}
        )
        shown = "; ".join(reasons[:3]) + (
            f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
        )
        print(f"  {stage}: {count} ({shown})")
    if builder.drop_duplicates:
        kinds = ", ".join(f"{k.replace('_', '-')}: {n}" for k, n in sorted(report.dropped.items()))
        print(f"rows dropped: {sum(report.dropped.values())}" + (f" ({kinds})" if kinds else ""))
    if "pairs" in builder.configuration():  # a build with pair modes or drops
        modes = ", ".join(f"{mode} {n}" for mode, n in report.pair_modes.items())
        print(f"pair modes:   {modes}")
    if report.not_attempted or report.withheld:
        print(f"not done:     {report.not_attempted + report.withheld} (left for the next run)")
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    print(f"time taken:   {report.seconds:.1f}s ({rate:.1f} rows/s)")
    if report.cost_usd is not None:
        print(f"cost:         ${report.cost_usd:.4f}")
    elif (usage := builder.hallucinator.usage) is not None:  # counted, but no price known
        tokens = usage.input_tokens, usage.output_tokens
        print(
            f"cost:         unknown ({tokens[0]} input + {tokens[1]} output tokens; no price is "
            "known for the model: --price-in and --price-out give one)"
        )
    if report.kept_earlier:
        print(
            f"no new dataset: {out} keeps its earlier dataset (--allow-empty replaces it with "
            "an empty result; -v lists every failed row)"
        )
    else:
        print(f"written to:   {out} (errors in {out / 'errors.jsonl'}, summary in summary.json)")


def _merge(args: argparse.Namespace) -> int:
    from povidgen.pairs.merge import merge_builds

    report = merge_builds(args.out, args.shards, overwrite=args.overwrite)
    print(f"merged {len(args.shards)} shard outputs into {args.out}")
    print(f"rows:         {report.rows}")
    print(f"pairs:        {report.pairs}")
    print(f"rows failed:  {report.failed}")
    return 0 if report.pairs else 1


def _preview(args: argparse.Namespace) -> int:
    from povidgen.errors import DatasetFormatError
    from povidgen.preview import save_preview

    _check_image_out(args.out)

    from povidgen.pairs.shards import load_pairs

    if not args.pairs.is_dir():
        raise DatasetFormatError(f"{args.pairs} is not a pairs folder")
    pairs = load_pairs(args.pairs, cache_dir=args.pairs / ".cache")
    try:
        path = save_preview(pairs, args.out, n=args.n)
    except ValueError as error:
        raise DatasetFormatError(str(error)) from error
    print(f"preview written to {path}")
    return 0


def _check_image_out(out: Path) -> None:
    """An image file to write: not a folder, a link or a device; its folder writable."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise PovidgenError(f"--out {out} is not a plain file path (a folder or a link?)")
    problem = unwritable_parent(out)
    if problem is not None:
        raise PovidgenError(f"--out {out}: {problem}")


def _distort(args: argparse.Namespace) -> int:
    from povidgen.errors import ImageError
    from povidgen.sources.images import read_image_file

    _check_image_out(args.out)

    options = {} if args.severity is None else {"severity": args.severity}
    try:
        distorter = get_distorter(args.distorter, **options)
    except ValueError as error:
        raise PovidgenError(f"bad settings for {args.distorter!r}: {error}") from error
    try:
        image = read_image_file(args.image)
    except ImageError as error:
        raise ImageError(f"cannot read image {args.image}: {error}") from error
    result = distorter(image, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result.save(args.out)
    except (OSError, ValueError, KeyError) as error:
        raise PovidgenError(f"cannot write {args.out}: {error}") from error
    print(f"{distorter!r} with seed {args.seed}: {args.image} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
