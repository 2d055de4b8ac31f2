"""``povidgen scenes``: write synthetic scenes with exact ground truth, split into train and test.

::

    povidgen scenes --n 2000 --seed 0 --out DIR [--held-out 0.2] [--cooccurrence P]
        [--web-noise Q] [--qa-per-scene K] [--size PX] [--group-order random|place]
        [--overwrite]

``DIR`` receives a ``datasets`` ``save_to_disk`` folder with the splits ``train`` and ``test``
(see :mod:`povidgen.sources.scenes` for the rows and columns) and ``povidgen-scenes.json``, the
settings and counts. ``povidgen build --dataset DIR/train --id-column id`` (or ``--dataset DIR
--split train``) makes pairs of the training scenes. ``DIR`` must be new or empty; a folder an
earlier ``povidgen scenes`` wrote is replaced only with ``--overwrite``. Exit codes: 0 written,
2 bad arguments or an unusable ``--out``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from povidgen.errors import PovidgenError

__all__ = ["add_parser", "run"]


def _number(kind: type[int] | type[float], low: float, high: float) -> Any:
    """An argparse type: a number of ``kind`` in ``[low, high]``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not in [{low:g}, {high:g}]")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_parser(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Register ``scenes`` on the CLI's subcommands."""
    parser = subcommands.add_parser(
        "scenes",
        help="write synthetic scenes (train and test splits) with exact ground truth",
        description="Draw N distinct synthetic scenes (objects of known class, colour, count "
        "and position) with exact captions and question/answer rows, split into train and "
        "test, as a save_to_disk folder that 'povidgen build' reads. Exit codes: 0 written, "
        "2 bad arguments or --out unusable.",
    )
    parser.add_argument(
        "--n", type=_number(int, 2, 10_000_000), required=True, metavar="N", help="scenes in all"
    )
    parser.add_argument("--seed", type=_number(int, 0, 2**63 - 1), default=0, metavar="S")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--held-out",
        type=_number(float, 0.0001, 0.9999),
        default=0.2,
        metavar="F",
        help="share of the scenes in the test split (default 0.2)",
    )
    parser.add_argument(
        "--cooccurrence",
        type=_number(float, 0, 1),
        default=0.0,
        metavar="P",
        help="probability that a further object co-occurs with one already in the scene "
        "(cup with book, kite with umbrella...; default 0: the demo scenes)",
    )
    parser.add_argument(
        "--web-noise",
        type=_number(float, 0, 1),
        default=0.0,
        metavar="Q",
        help="probability that a caption's web_answer also names an absent co-occurring "
        "object (answer stays exact; default 0)",
    )
    parser.add_argument(
        "--qa-per-scene",
        type=_number(int, 0, 64),
        default=1,
        metavar="K",
        help="question/answer rows per scene besides its caption (default 1)",
    )
    parser.add_argument(
        "--size", type=_number(int, 64, 1024), default=256, metavar="PX", help="image size"
    )
    parser.add_argument(
        "--group-order",
        choices=("random", "place"),
        default="random",
        help="order of a scene's groups in its captions: random (as drawn, the default) or "
        "place (left, right, top, bottom, center)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace scenes an earlier run wrote to --out"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``povidgen scenes``; returns the exit code (0). Bad input raises
    :class:`PovidgenError` (one line, exit code 2)."""
    from povidgen.sources.scenes import SCENES_MARKER, generate_scenes

    try:
        scenes = generate_scenes(
            args.n,
            seed=args.seed,
            held_out=args.held_out,
            cooccurrence=args.cooccurrence,
            web_noise=args.web_noise,
            qa_per_scene=args.qa_per_scene,
            size=args.size,
            group_order=args.group_order,
            out_dir=args.out,
            overwrite=args.overwrite,
        )
    except OSError as error:  # a full disk, a folder we may not write
        raise PovidgenError(f"cannot write {args.out}: {error}") from error
    for name, split in scenes.items():
        images = len(set(split["scene_id"]))
        print(f"{name + ':':<7} {images} scenes, {len(split)} rows")
    print(f"written to: {args.out} (settings in {SCENES_MARKER})")
    print(f"next:       povidgen build --dataset {args.out / 'train'} --id-column id --out PAIRS")
    return 0
