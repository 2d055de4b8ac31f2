"""``povidgen eval``: measure a local VLM's hallucinations with CHAIR or POPE.

::

    povidgen eval --model PATH --data DIR --metric chair|pope [--out REPORT.json] [--seed N]
                  [--max-new-tokens N] [--limit N] ...

``--model`` is a local Hugging Face VLM folder as ``povidgen train`` reads and writes them (a
whole model, or a LoRA adapter folder such as a run's ``final/`` whose base model is a local
folder). The model answers greedily (:func:`povidgen.eval.hf_generate`).

``--data`` is a folder of images with their ground truth::

    DIR/
      ground_truth.jsonl   one JSON object a line (required)
      vocabulary.json      {"word": "category", ...} (optional)
      images/...           the images, anywhere under DIR

Each line of ``ground_truth.jsonl`` names an image and the objects present in it::

    {"id": "scene-0000", "image": "images/scene-0000.png", "objects": ["apple", "ball"]}

``image`` is relative to the folder; ``objects`` (a list of strings, may be empty) are COCO
categories or synonyms, or words of ``vocabulary.json`` when there is one; ``id`` is optional;
other keys are ignored; lines naming the same image are one image. A ``save_to_disk`` folder
with ``image`` and ``objects`` columns (``povidgen scenes``' output) serves too, its ``test``
split by default (``--split``). ``vocabulary.json`` makes
CHAIR score with that vocabulary instead of COCO's and gives POPE the objects it may ask about
as absent (default: every object named in ``ground_truth.jsonl``). ``--data`` may also name
the ``.jsonl`` file itself. (Details: :mod:`povidgen.eval.ground_truth`, ``docs/eval.md``.)

``--metric chair`` captions every image ("Describe this image in detail.") and scores
CHAIR_S, CHAIR_I and object recall; ``--metric pope`` asks POPE's yes/no questions (3 present
and 3 absent objects per image, ``--strategy`` random, popular or adversarial) and scores
accuracy, precision, recall, F1 and the yes ratio. Every figure gets a 95% percentile
bootstrap interval over images (1000 resamples, seeded by ``--seed``).

Output: the JSON report at ``--out`` (default ``eval-<metric>.json``): ``figures``,
``intervals``, ``counts``, ``settings``, and ``items`` (per image for CHAIR: caption, present,
mentioned and hallucinated objects; per question for POPE: question, answer, label), and a
bar chart of the figures beside it (same name, ``.png``; needs matplotlib). Exit codes: 0
done, 2 bad input (one line on stderr: a missing folder, a missing key, a model folder that
is not a model...), 130 interrupted.

transformers is imported only when the model is loaded, so ``povidgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from povidgen.errors import InputError, PovidgenError
from povidgen.eval.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from povidgen.eval.chair import CHAIR_FIGURES, ChairResult, resolve_vocabulary
from povidgen.eval.evaluate import CHAIR_PROMPT, evaluate_chair, evaluate_pope
from povidgen.eval.generate import Generate, check_model_folder, hf_generate
from povidgen.eval.ground_truth import GroundTruth, load_ground_truth, read_vocabulary
from povidgen.eval.pope import POPE_FIGURES, STRATEGIES, PopeResult, pope_questions
from povidgen.eval.report import plot_figures, write_report
from povidgen.eval.vocabulary import SCENE_VOCABULARY

__all__ = ["add_parser", "run"]

_MAX_NEW_TOKENS = {"chair": 512, "pope": 32}
_SEED_LIMIT = 2**63


def add_parser(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Register ``eval`` on the CLI's subcommands."""
    parser = subcommands.add_parser(
        "eval",
        help="measure a local VLM's hallucinations (CHAIR or POPE)",
        description="Caption images (CHAIR) or ask yes/no object questions (POPE) with a local "
        "Hugging Face vision-language model and score its hallucinations against ground "
        "truth, with bootstrap confidence intervals. Writes a JSON report and a plot. "
        "Exit codes: 0 done, 2 bad input, 130 interrupted.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="PATH",
        help="a local model folder, or a LoRA adapter folder (povidgen train's final/)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="a folder with ground_truth.jsonl (image, objects) and the images; optional "
        "vocabulary.json (see docs/eval.md)",
    )
    parser.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="of a save_to_disk DatasetDict given as --data (default: test, or the only split)",
    )
    parser.add_argument("--metric", choices=["chair", "pope"], required=True)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="REPORT.json",
        help="the JSON report (default eval-<metric>.json); the plot goes beside it as .png",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="POPE's sampling and the bootstrap"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="the longest answer (default 512 for chair, 32 for pope)",
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="first N images")
    parser.add_argument(
        "--prompt", default=CHAIR_PROMPT, help=f"chair: the caption prompt ('{CHAIR_PROMPT}')"
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="random",
        help="pope: how absent objects are chosen (default random)",
    )
    parser.add_argument(
        "--n-per-image",
        type=int,
        default=3,
        metavar="K",
        help="pope: questions per image about present objects, and as many about absent ones",
    )
    parser.add_argument(
        "--vocabulary",
        default=None,
        metavar="coco|scenes|FILE.json",
        help="CHAIR's objects and POPE's absent candidates: coco (CHAIR's COCO synonyms), "
        "scenes (the demo scenes' eight objects) or a {word: category} JSON file (default: "
        "the data's vocabulary.json, else coco)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="prompts per generate call"
    )
    parser.add_argument(
        "--resamples", type=int, default=DEFAULT_RESAMPLES, metavar="B", help="bootstrap resamples"
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        metavar="C",
        help="the intervals' confidence level (default 0.95)",
    )
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu... (default: cuda if available)"
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="weights' dtype (default auto: bfloat16 on CUDA, else float32)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write the JSON report only")
    parser.set_defaults(run=run)


def _check_settings(args: argparse.Namespace) -> None:
    def at_least(flag: str, value: int | None, low: int) -> None:
        if value is not None and value < low:
            raise PovidgenError(f"{flag} must be at least {low}, not {value}")

    at_least("--max-new-tokens", args.max_new_tokens, 1)
    at_least("--limit", args.limit, 1)
    at_least("--n-per-image", args.n_per_image, 1)
    at_least("--batch-size", args.batch_size, 1)
    at_least("--resamples", args.resamples, 1)
    if not 0 <= args.seed < _SEED_LIMIT:
        raise PovidgenError(f"--seed must be in [0, 2**63), not {args.seed}")
    if not (math.isfinite(args.confidence) and 0 < args.confidence < 1):
        raise PovidgenError(f"--confidence must be between 0 and 1, not {args.confidence}")
    if not args.prompt.strip():
        raise PovidgenError("--prompt is empty")


def _load_data(args: argparse.Namespace) -> tuple[GroundTruth, dict[str, str] | None, str]:
    """The ground truth (all of it: ``--limit`` is applied later), the vocabulary table and
    its name."""
    try:
        data = load_ground_truth(args.data, split=args.split)
    except InputError as error:
        raise PovidgenError(f"--data {error}") from error
    table, name = data.vocabulary, ("vocabulary.json" if data.vocabulary else "coco")
    if args.vocabulary == "coco":
        table, name = None, "coco"
    elif args.vocabulary == "scenes":
        table, name = dict(SCENE_VOCABULARY), "scenes"
    elif args.vocabulary is not None:
        file = Path(args.vocabulary)
        try:
            table = read_vocabulary(file) if file.is_file() else None
        except InputError as error:
            raise PovidgenError(f"--vocabulary {error}") from error
        if table is None:
            raise PovidgenError(f"--vocabulary {file}: no such file (or use coco or scenes)")
        name = str(file)
    return data, table, name


def _where(image: Path | bytes) -> str | None:
    """An image's file for the report (``None`` for an image stored in a dataset)."""
    return str(image) if isinstance(image, Path) else None


def _check_out(args: argparse.Namespace) -> Path:
    out: Path = args.out if args.out is not None else Path(f"eval-{args.metric}.json")
    if out.is_dir():
        raise PovidgenError(f"--out {out} is a folder; give the report's file name")
    parent = out.parent if str(out.parent) else Path()
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path())
    if not existing.is_dir():
        raise PovidgenError(f"--out {out}: {existing} is not a folder")
    if out.suffix.lower() == ".png":
        raise PovidgenError(f"--out {out}: the report is JSON (its plot goes beside it as .png)")
    # povidgen replaces only what it wrote: an earlier report of ours (and its plot)
    ours = _is_our_report(out)
    if out.exists() and not ours:
        raise PovidgenError(
            f"--out {out} exists and is not a povidgen eval report; povidgen does not "
            "replace files it did not write: give another --out"
        )
    plot = out.with_suffix(".png")
    if not args.no_plot and plot.exists() and not ours:
        raise PovidgenError(
            f"--out {out}: its plot {plot} exists and povidgen did not write it: give another "
            "--out, or --no-plot"
        )
    return out


def _is_our_report(path: Path) -> bool:
    """Whether ``path`` is a regular file holding a report ``povidgen eval`` wrote."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            report = json.loads(handle.read(64 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"povidgen_version", "metric", "figures"} <= set(report)


def _check_model(path: Path) -> None:
    if importlib.util.find_spec("transformers") is None:
        raise PovidgenError("povidgen eval needs transformers: pip install 'povidgen[eval]'")
    try:
        check_model_folder(path)
    except InputError as error:
        raise PovidgenError(f"--model {error}") from error


class _Counting:
    """A :data:`Generate` that moves a progress bar (shown on a terminal only)."""

    def __init__(self, generate: Generate, total: int, what: str) -> None:
        from tqdm.auto import tqdm

        self._generate = generate
        self._bar = tqdm(total=total, unit=what, disable=not sys.stderr.isatty(), leave=False)

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        texts = self._generate(images, prompts)
        self._bar.update(len(prompts))
        return texts

    def close(self) -> None:
        self._bar.close()


def run(args: argparse.Namespace) -> int:
    """Run ``povidgen eval``; returns the exit code (0 done).

    Bad input raises :class:`PovidgenError` (the CLI prints it on one line, exit code 2).
    """
    _check_settings(args)
    full, table, vocabulary_name = _load_data(args)
    # POPE's questions come from all the annotations (popularity, co-occurrence), so that
    # --limit N asks the first N images what the whole run would ask them
    questions = None
    if args.metric == "pope":
        questions = pope_questions(
            [item.objects for item in full.images],
            vocabulary=sorted(set(table.values())) if table is not None else None,
            n_per_image=args.n_per_image,
            strategy=args.strategy,
            seed=args.seed,
        )
    data = full
    if args.limit is not None:
        data = GroundTruth(full.source, full.images[: args.limit], full.vocabulary)
        if questions is not None:
            questions = [q for q in questions if q.image_index < args.limit]
    objects = [list(item.objects) for item in data.images]
    vocabulary = resolve_vocabulary(table) if table is not None else None
    if args.metric == "chair":
        vocab = resolve_vocabulary(vocabulary)
        try:
            for item in data.images:
                vocab.categories_of(item.objects)
        except ValueError as error:
            raise PovidgenError(f"--data {data.source}: {error}") from error
    elif not questions:
        raise PovidgenError(f"--data {data.source}: no image has an object to ask POPE about")
    out = _check_out(args)
    _check_model(args.model)
    max_new_tokens = args.max_new_tokens or _MAX_NEW_TOKENS[args.metric]

    try:
        generate = hf_generate(
            args.model,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=max_new_tokens,
            batch_size=args.batch_size,
        )
    except InputError as error:
        raise PovidgenError(f"--model {error}") from error
    images = [item.image for item in data.images]
    started = time.monotonic()
    result: ChairResult | PopeResult
    if args.metric == "chair":
        counting = _Counting(generate, len(images), "caption")
        try:
            result = evaluate_chair(
                counting,
                images,
                objects,
                prompt=args.prompt,
                vocabulary=vocabulary,
                chunk_size=args.batch_size,
                resamples=args.resamples,
                confidence=args.confidence,
                seed=args.seed,
            )
        finally:
            counting.close()
        items = [
            {"id": item.id, "image": _where(item.image), **detail.to_dict()}
            for item, detail in zip(data.images, result.captions, strict=True)
        ]
    else:
        assert questions is not None
        counting = _Counting(generate, len(questions), "question")
        try:
            result = evaluate_pope(
                counting,
                images,
                objects,
                questions=questions,
                chunk_size=args.batch_size,
                resamples=args.resamples,
                confidence=args.confidence,
                seed=args.seed,
            )
        finally:
            counting.close()
        items = [
            {
                "id": data.images[answer["image_index"]].id,
                "image": _where(data.images[answer["image_index"]].image),
                **answer,
            }
            for answer in result.to_dict()["answers"]
        ]
    seconds = time.monotonic() - started

    from povidgen import __version__

    body = result.to_dict()
    body.pop("captions", None)
    body.pop("answers", None)
    report: dict[str, Any] = {
        "povidgen_version": __version__,
        "metric": args.metric,
        "model": str(args.model.resolve()),
        "data": str(data.source.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "seed": args.seed,
            "max_new_tokens": max_new_tokens,
            "limit": args.limit,
            "images": len(images),
            "prompt": args.prompt if args.metric == "chair" else None,
            "strategy": args.strategy if args.metric == "pope" else None,
            "n_per_image": args.n_per_image if args.metric == "pope" else None,
            "vocabulary": vocabulary_name,
            "batch_size": args.batch_size,
            "device": args.device,
            "dtype": args.dtype,
            "decoding": "greedy",
        },
        **body,
        "seconds": round(seconds, 3),
        "items": items,
    }
    write_report(out, report)
    plot = None
    if not args.no_plot:
        plot = _plot(out, args, result)
    names = CHAIR_FIGURES if args.metric == "chair" else POPE_FIGURES
    for name in names:
        low, high = result.intervals[name]
        value = getattr(result, name)
        print(f"{name:<10} {100 * value:6.1f}   [{100 * low:5.1f}, {100 * high:5.1f}]")
    print(f"report:    {out}")
    if plot is not None:
        print(f"plot:      {plot}")
    return 0


def _plot(out: Path, args: argparse.Namespace, result: ChairResult | PopeResult) -> Path | None:
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "povidgen: warning: no plot: matplotlib is not installed (pip install "
            "'povidgen[eval]')",
            file=sys.stderr,
        )
        return None
    title = f"{args.metric.upper()}: {args.model.name}"
    if args.metric == "pope":
        title += f" ({args.strategy})"
    return plot_figures(
        out.with_suffix(".png"),
        result.figures(),
        result.intervals,
        title=title,
        confidence=result.confidence,
    )
