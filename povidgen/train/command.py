"""``povidgen train``: DPO / POVID training of a local Hugging Face VLM on built pairs.

::

    povidgen train --model PATH --data DIR --out DIR [--mode text|image|povid|auto] ...

Everything that can be checked cheaply is checked before the model is loaded: every flag's
range, the model folder and its family, the output folder, the dataset's columns and, with
``--resume``, that the checkpoint was made with the same settings. A mistake is one line on
stderr and exit code 2, never a traceback.

The output folder (``--out``)::

    povidgen-train.json     the marker: povidgen version, model, data and settings of the run
    metrics.jsonl           one line of metrics per optimiser step (TRL's names)
    checkpoints/step-N/     the newest two checkpoints, for --resume
    final/                  the trained adapter (or with --merge / --full, the whole model)

``--out`` is used only when it is new, empty, or holds the marker; a folder of anything else
is refused and nothing in it is touched. Ctrl-C lets the step in flight finish, writes a
checkpoint and exits with 130 (``--resume`` then continues exactly there); a second Ctrl-C
leaves at once.

This module imports transformers, peft and datasets only inside :func:`run`, so that
``povidgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from povidgen.errors import PovidgenError
from povidgen.train.config import DPOConfig, required_columns
from povidgen.train.run_folder import (
    CHECKPOINTS,
    METRICS_FILE,
    STATE_FILE,
    checkpoints,
    resume_key,
)

if TYPE_CHECKING:
    import datasets

__all__ = ["MARKER", "add_parser", "run"]

MARKER = "povidgen-train.json"
"""The file that marks a folder as a ``povidgen train`` output folder."""

_FINAL = "final"
_SEED_LIMIT = 2**63
_DTYPES = ("auto", "float32", "bfloat16", "float16")

# DPOConfig field -> the flag that sets it (for messages)
_FLAGS = {
    "mode": "--mode",
    "loss_type": "--loss-type",
    "loss_weights": "--loss-weights",
    "beta": "--beta",
    "rpo_alpha": "--rpo-alpha",
    "learning_rate": "--learning-rate",
    "max_steps": "--max-steps",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "grad_accum": "--grad-accum",
    "lora_r": "--lora-r",
    "lora_alpha": "--lora-alpha",
    "full": "--full",
    "ref": "--ref",
    "distorter": "--distorter",
    "seed": "--seed",
    "max_length": "--max-length",
    "save_steps": "--save-steps",
    "packing": "--no-packing",
    "gradient_checkpointing": "--gradient-checkpointing",
    "report_to": "--report-to",
}


def _default(name: str) -> Any:
    return DPOConfig.model_fields[name].default


def add_parser(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Register ``train`` on the CLI's subcommands."""
    parser = subcommands.add_parser(
        "train",
        help="DPO/POVID-train a local VLM on built pairs",
        description="Train a local Hugging Face vision-language model with DPO (or POVID's "
        "two stages) on preference pairs written by 'povidgen build'. Exit codes: 0 done, "
        "2 bad input, 130 interrupted (rerun with --resume).",
    )
    paths = parser.add_argument_group("what to train, on what, where")
    paths.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="PATH",
        help="a local model folder (config.json, weights, processor); downloads are not made",
    )
    paths.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="pairs from 'povidgen build': a save_to_disk folder, a folder of .parquet files "
        "or one .parquet file (TRL's vision preference format)",
    )
    paths.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="the split of a saved DatasetDict (default: train, or the only split)",
    )
    paths.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder: metrics.jsonl, checkpoints/, final/ (new, empty, or an earlier "
        "run's folder with --resume)",
    )
    paths.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )

    objective = parser.add_argument_group("objective")
    objective.add_argument(
        "--mode",
        choices=["text", "image", "povid", "auto"],
        default="text",
        help="text: chosen vs hallucinated answer (POVID stage 1); image: chosen answer under "
        "the clean vs the distorted image; povid: POVID stage 2; auto: each row by its "
        "provenance.pair_mode (text, image or both), for a --pair-mode mix build (default: text)",
    )
    objective.add_argument(
        "--loss-type",
        nargs="+",
        default=None,
        metavar="T",
        help="one or more of TRL's DPO loss types, mixed with --loss-weights (default: sigmoid)",
    )
    objective.add_argument(
        "--loss-weights",
        nargs="+",
        type=float,
        default=None,
        metavar="W",
        help="one weight per --loss-type",
    )
    objective.add_argument(
        "--beta", type=float, default=None, metavar="B", help=f"default {_default('beta')}"
    )
    objective.add_argument(
        "--rpo-alpha",
        type=float,
        default=None,
        metavar="A",
        help="add A times the chosen answers' mean token NLL to the loss (TRL's rpo_alpha; "
        f"default {_default('rpo_alpha')})",
    )
    objective.add_argument(
        "--ref",
        choices=["adapter", "copy", "precomputed"],
        default=None,
        help="reference log-probs: the policy with its adapter off (default with LoRA), a "
        "frozen copy (default with --full) or computed once before training",
    )
    objective.add_argument(
        "--distorter",
        default=None,
        metavar="NAME",
        help="registered distorter that makes the rejected image (--mode image/povid; "
        "default: the data's rejected_images, else diffusion noise for povid)",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        metavar="LR",
        help=f"default {_default('learning_rate')}",
    )
    optim.add_argument(
        "--max-steps", type=int, default=None, metavar="N", help="optimiser steps (not --epochs)"
    )
    optim.add_argument(
        "--epochs",
        type=float,
        default=None,
        metavar="E",
        help=f"passes over the data (default {_default('epochs')}; not with --max-steps)",
    )
    optim.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help=f"pairs per micro-step (default {_default('batch_size')})",
    )
    optim.add_argument(
        "--grad-accum",
        type=int,
        default=None,
        metavar="N",
        help=f"micro-steps per optimiser step (default {_default('grad_accum')})",
    )
    optim.add_argument(
        "--lora-r",
        type=int,
        default=None,
        metavar="R",
        help=f"LoRA rank (default {_default('lora_r')})",
    )
    optim.add_argument(
        "--lora-alpha",
        type=int,
        default=None,
        metavar="A",
        help=f"LoRA alpha (default {_default('lora_alpha')})",
    )
    optim.add_argument(
        "--full", action="store_true", help="train every weight instead of a LoRA adapter"
    )
    optim.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="N",
        help="longest [prompt | response] in tokens; longer responses are cut",
    )
    optim.add_argument(
        "--no-packing",
        action="store_true",
        help="score chosen and rejected in separate forwards (the model's own)",
    )
    optim.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations in backward"
    )
    optim.add_argument("--seed", type=int, default=None, metavar="N", help="default 0")

    machine = parser.add_argument_group("machine and output")
    machine.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="auto",
        help="weights' dtype (default auto: bfloat16 on CUDA, else float32)",
    )
    machine.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu... (default: cuda if available)"
    )
    machine.add_argument(
        "--save-steps",
        type=int,
        default=None,
        metavar="N",
        help="checkpoint every N steps (always at the end)",
    )
    machine.add_argument(
        "--report-to",
        action="append",
        choices=["tensorboard", "wandb"],
        default=None,
        help="also log there (repeatable; the package must be installed)",
    )
    machine.add_argument(
        "--distributed",
        choices=["ddp", "fsdp"],
        default=None,
        help="under torchrun: replicate (ddp, default) or shard (fsdp) the model",
    )
    machine.add_argument(
        "--merge",
        action="store_true",
        help="save final/ as the whole model with the adapter merged in",
    )
    parser.set_defaults(run=run)


# -- running ---------------------------------------------------------------------------------


@dataclass
class _Session:
    """What the interrupt handler needs to see of a run in progress."""

    out: Path | None = None
    joined: bool = False  # this command joined the process group (and leaves it)


def run(args: argparse.Namespace) -> int:
    """Run ``povidgen train``; returns the exit code (0 done, 130 interrupted).

    Bad input raises :class:`PovidgenError` (the CLI prints it on one line, exit code 2).
    """
    session = _Session()
    try:
        return _train(args, session)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C
        return _interrupted(session.out)
    finally:
        if session.joined:
            import torch

            torch.distributed.destroy_process_group()


def _train(args: argparse.Namespace, session: _Session) -> int:
    from povidgen.train.trainer import DPOTrainer  # torch: only once training

    config = _settings(args)
    device, dtype_name = _machine(args)
    model_path = _check_model(args.model)
    out = _check_out(args.out, args.data, resume=args.resume)
    if args.resume:
        _check_resumable(out, config)
    data = _load_data(args.data, args.split)
    _check_columns(data, config)
    session.out = out
    rank = _join_process_group(device, session)

    import torch

    dtype = getattr(torch, dtype_name)
    model, processor = _load_model(model_path, dtype, device)
    trainer = DPOTrainer(model, processor, data, config, output_dir=out)
    _barrier()  # every process has checked --out before the first one writes into it
    if rank == 0:
        _start_run(out, args, config, model_path, dtype_name, device)
    _barrier()
    with _FirstInterrupt() as interrupt:
        try:
            result = trainer.train(resume=args.resume, progress=True, stop=interrupt.pending)
        except FileNotFoundError as error:  # resume found no checkpoint after all
            raise PovidgenError(_one_line(error)) from error
        except ValueError as error:
            if str(error).startswith("cannot resume"):
                raise PovidgenError(_one_line(error)) from error
            raise
    if result.stopped:
        return _interrupted(out)
    final = trainer.save(out / _FINAL, merge=args.merge)
    if rank != 0:
        return 0

    what = (
        "the whole model"
        if config.full
        else "the model, adapter merged in"
        if args.merge
        else "a LoRA adapter: load it with peft.PeftModel.from_pretrained(base_model, path)"
    )
    last = result.metrics[-1]["loss"] if result.metrics else None
    print(f"steps:        {result.global_step}")
    print(f"final loss:   {'-' if last is None else f'{last:.4f}'}")
    print(f"model:        {final} ({what})")
    print(f"metrics:      {out / METRICS_FILE}")
    print(f"checkpoints:  {out / CHECKPOINTS}")
    return 0


class _FirstInterrupt:
    """While active, the first Ctrl-C only asks the trainer to stop after the step in flight
    (it then writes a checkpoint); a second one raises ``KeyboardInterrupt`` as usual."""

    def __init__(self) -> None:
        self._hit = False
        self._previous: Any = None

    def pending(self) -> bool:
        return self._hit

    def _handle(self, signum: int, frame: Any) -> None:
        if self._hit:
            raise KeyboardInterrupt
        self._hit = True
        print(
            "\npovidgen: stopping after this step (Ctrl-C again to leave at once)",
            file=sys.stderr,
        )

    def __enter__(self) -> _FirstInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _interrupted(out: Path | None) -> int:
    """Say how to go on after Ctrl-C."""
    if out is not None and checkpoints(out / CHECKPOINTS):
        print(
            "povidgen: interrupted; rerun with --resume to continue from the last checkpoint",
            file=sys.stderr,
        )
    else:
        print("povidgen: interrupted before any checkpoint was written", file=sys.stderr)
    return 130


# -- checks before any heavy work ------------------------------------------------------------


def _fail(message: str) -> PovidgenError:
    return PovidgenError(message)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _settings(args: argparse.Namespace) -> DPOConfig:
    """Check every flag's range and combination, then build the :class:`DPOConfig`."""
    from pydantic import ValidationError

    from povidgen.train.config import LOSS_TYPES

    def positive(flag: str, value: float | None) -> None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise _fail(f"{flag} must be a positive number, not {value}")

    def at_least(flag: str, value: int | None, low: int) -> None:
        if value is not None and value < low:
            raise _fail(f"{flag} must be at least {low}, not {value}")

    positive("--beta", args.beta)
    if args.rpo_alpha is not None and not (math.isfinite(args.rpo_alpha) and args.rpo_alpha >= 0):
        raise _fail(f"--rpo-alpha must be a number of at least 0, not {args.rpo_alpha}")
    positive("--learning-rate", args.learning_rate)
    positive("--epochs", args.epochs)
    at_least("--max-steps", args.max_steps, 1)
    at_least("--batch-size", args.batch_size, 1)
    at_least("--grad-accum", args.grad_accum, 1)
    at_least("--lora-r", args.lora_r, 1)
    at_least("--lora-alpha", args.lora_alpha, 1)
    at_least("--max-length", args.max_length, 2)
    at_least("--save-steps", args.save_steps, 1)
    if args.seed is not None and not 0 <= args.seed < _SEED_LIMIT:
        raise _fail(f"--seed must be in [0, 2**63), not {args.seed}")
    if args.max_steps is not None and args.epochs is not None:
        raise _fail("--max-steps and --epochs are mutually exclusive; give one")
    if args.full and args.ref == "adapter":
        raise _fail("--ref adapter needs a LoRA adapter; with --full use --ref copy")
    if args.full and (args.lora_r is not None or args.lora_alpha is not None):
        raise _fail("--lora-r/--lora-alpha set up a LoRA adapter; --full trains every weight")

    loss_types: list[str] = args.loss_type or ["sigmoid"]
    unknown = [t for t in loss_types if t not in LOSS_TYPES]
    if unknown:
        raise _fail(f"unknown --loss-type {', '.join(unknown)}; valid: {', '.join(LOSS_TYPES)}")
    if args.loss_weights is not None:
        if len(args.loss_weights) != len(loss_types):
            raise _fail(
                f"--loss-weights has {len(args.loss_weights)} values for "
                f"{len(loss_types)} --loss-type names"
            )
        if not all(math.isfinite(w) for w in args.loss_weights):
            raise _fail("--loss-weights must be finite numbers")
    if args.mode in ("povid", "auto") and loss_types != ["sigmoid"]:
        raise _fail(f"--mode {args.mode} uses POVID's own loss; drop --loss-type")
    if args.distorter is not None:
        from povidgen.registry import available_distorters

        names = available_distorters()
        if args.distorter not in names:
            raise _fail(
                f"unknown --distorter {args.distorter!r}; available: {', '.join(names) or '(none)'}"
            )
        if args.mode == "text":
            raise _fail("--distorter makes rejected images: only for --mode image or povid")
    for target in args.report_to or []:
        if importlib.util.find_spec(target) is None:
            raise _fail(f"--report-to {target} needs the {target} package (pip install {target})")

    fields: dict[str, Any] = {
        "mode": args.mode,
        "loss_type": loss_types[0] if len(loss_types) == 1 else loss_types,
        "full": args.full,
        "packing": not args.no_packing,
        "gradient_checkpointing": args.gradient_checkpointing,
        "report_to": sorted(set(args.report_to or [])),
    }
    optional = {
        "loss_weights": args.loss_weights,
        "beta": args.beta,
        "rpo_alpha": args.rpo_alpha,
        "learning_rate": args.learning_rate,
        "max_steps": args.max_steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "ref": args.ref,
        "distorter": args.distorter,
        "seed": args.seed,
        "max_length": args.max_length,
        "save_steps": args.save_steps,
        "distributed": args.distributed,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    try:
        return DPOConfig(**fields)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            flag = _FLAGS.get(where, where)
            message = str(item["msg"]).removeprefix("Value error, ")
            problems.append(f"{flag}: {message}" if flag else message)
        raise _fail("invalid training settings: " + "; ".join(problems)) from error


def _join_process_group(device: str, session: _Session) -> int:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (NCCL on CUDA, gloo
    on CPU) unless the caller already has; returns this process's rank."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        session.joined = True
    return int(torch.distributed.get_rank())


def _barrier() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _machine(args: argparse.Namespace) -> tuple[str, str]:
    """The device (under ``torchrun`` on CUDA, the process's own GPU) and the dtype's name,
    checked."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    default = f"cuda:{local}" if local is not None else "cuda"
    name = args.device or (default if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise _fail(f"--device {name!r} is not a device: {_one_line(error)}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _fail(f"--device {name}: CUDA is not available on this machine")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    return str(device), dtype


def _check_model(path: Path) -> Path:
    """A local model folder whose ``config.json`` names a supported family."""
    from povidgen.train.families import FAMILIES, UnsupportedModelError

    if not path.exists():
        raise _fail(
            f"--model {path}: no such folder (--model must be a local model folder; "
            "download the model first)"
        )
    if not path.is_dir():
        raise _fail(f"--model {path} is a file; give the model's folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise _fail(f"--model {path} is not a Hugging Face model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(f"--model {path}: cannot read config.json: {_one_line(error)}") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    supported = [t for family in FAMILIES.values() for t in family.model_types]
    if model_type not in supported:
        raise UnsupportedModelError(
            f"povidgen.train has no adapter for model_type {model_type!r} ({path}); "
            f"supported: {', '.join(supported)}"
        )
    return path.resolve()


def _latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out / CHECKPOINTS)
    return found[-1] if found else None


def _check_out(out: Path, data: Path, *, resume: bool) -> Path:
    """Refuse an output folder that is not safe to write into; never delete anything.

    ``out`` may be new, empty, or a folder that holds :data:`MARKER`: then without
    ``--resume`` only if it holds no checkpoint or final model yet (a run that failed before
    its first checkpoint starts over), with ``--resume`` only if it holds a checkpoint.
    """
    if out.is_symlink():
        raise _fail(f"--out {out} is a symbolic link; give a real folder")
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out} is a file, not a folder")
    resolved, data_resolved = out.resolve(), data.resolve()
    if resolved == data_resolved or data_resolved in resolved.parents:
        raise _fail(f"--out {out} is the --data folder or inside it; choose another folder")
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise _fail(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _fail(f"--out {out}: {existing} is not writable")
    empty = not resolved.exists() or not any(resolved.iterdir())
    if empty:
        if resume:
            raise _fail(f"--resume: {out} holds no training run to continue")
        return resolved
    if not (resolved / MARKER).is_file():
        raise _fail(
            f"--out {out} exists, is not empty and is not a povidgen training folder "
            f"(no {MARKER}); choose a new or empty folder"
        )
    checkpoint = _latest_checkpoint(resolved)
    if resume and checkpoint is None:
        raise _fail(f"--resume: {out} has no checkpoint to continue from")
    if not resume and (checkpoint is not None or (resolved / _FINAL).exists()):
        raise _fail(
            f"--out {out} already holds a training run; pass --resume to continue it or "
            "choose another folder"
        )
    return resolved


def _check_resumable(out: Path, config: DPOConfig) -> None:
    """With ``--resume``: the newest checkpoint was made with the same settings."""
    checkpoint = _latest_checkpoint(out)
    assert checkpoint is not None
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        saved = DPOConfig.model_validate(state["config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        state_file = checkpoint / STATE_FILE
        raise _fail(f"--resume: cannot read {state_file}: {_one_line(error)}") from error
    before, now = resume_key(saved), resume_key(config)
    changed = [
        f"{_FLAGS.get(k, k)} {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]
    if changed:
        raise _fail(
            f"--resume: {out} was trained with other settings ({'; '.join(changed)}); "
            "give the same flags (--max-steps, --save-steps and --report-to may change)"
        )


def _read_marker(out: Path) -> dict[str, Any]:
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _load_data(path: Path, split: str | None) -> datasets.Dataset:
    """The pairs at ``path``: a save_to_disk folder, a folder of parquet files or one file."""
    import datasets
    import datasets.exceptions

    from povidgen.convert import read_pairs
    from povidgen.pairs.shards import MANIFEST, load_pairs

    if not path.exists():
        raise _fail(f"--data {path}: no such file or folder")
    try:
        if path.is_file() or (path / "povidgen-export.json").is_file():
            if path.is_file() and path.suffix.lower() not in (".parquet", ".json", ".jsonl"):
                raise _fail(
                    f"--data {path}: expected a povidgen build or export folder, a save_to_disk "
                    "folder, a folder of .parquet files, a .parquet file (TRL or VLFeedback "
                    "layout) or a LLaVA/POVID .json file"
                )
            # TRL, LLaVA/POVID (images beside the file) or VLFeedback pairs (docs/formats.md)
            loaded: Any = read_pairs(path)
        elif (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        elif (path / MANIFEST).is_file():  # a povidgen build: its finished shards, in order
            loaded = load_pairs(path, cache_dir=path / ".cache")
        else:
            files = sorted(str(p) for p in path.rglob("*.parquet"))
            if not files:
                raise _fail(
                    f"--data {path} is neither a save_to_disk folder nor a folder of .parquet files"
                )
            loaded = datasets.load_dataset("parquet", data_files=files)
    except PovidgenError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise _fail(f"--data {path}: cannot read it: {_one_line(error)}") from error
    if isinstance(loaded, datasets.DatasetDict):
        names = sorted(loaded)
        if split is None:
            split = "train" if "train" in loaded or len(loaded) != 1 else names[0]
        if split not in loaded:
            raise _fail(f"--split {split!r} is not in {path}; it holds: {', '.join(names)}")
        return loaded[split]
    if split is not None:
        raise _fail(f"--split: {path} holds a single dataset, not splits; drop --split")
    assert isinstance(loaded, datasets.Dataset)
    return loaded


def _check_columns(data: datasets.Dataset, config: DPOConfig) -> None:
    columns = list(data.column_names)
    # povid mode without rejected images falls back to diffusion noise (see DPOConfig)
    has_distorter = config.distorter is not None or config.mode in ("povid", "auto")
    missing = [c for c in required_columns(config.mode, has_distorter) if c not in columns]
    if missing:
        hint = (
            " (give --distorter NAME to make rejected images)"
            if "rejected_images" in missing
            else ""
        )
        raise _fail(
            f"--mode {config.mode} needs the column(s) {', '.join(missing)}; the data has "
            f"{', '.join(columns)}{hint}"
        )
    if len(data) < config.batch_size:
        raise _fail(
            f"the data has {len(data)} rows, fewer than one batch (--batch-size "
            f"{config.batch_size})"
        )


# -- loading and starting --------------------------------------------------------------------


def _load_model(path: Path, dtype: Any, device: str) -> tuple[Any, Any]:
    """``AutoModelForImageTextToText`` and ``AutoProcessor`` from a local folder."""
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("peft") is None:
        raise _fail("povidgen train needs transformers and peft: pip install 'povidgen[train]'")
    import transformers

    auto_model: Any = transformers.AutoModelForImageTextToText
    auto_processor: Any = transformers.AutoProcessor
    try:
        model = auto_model.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        processor = auto_processor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as error:
        raise _fail(f"--model {path}: cannot load it: {_one_line(error)}") from error
    return model.to(device), processor


def _start_run(
    out: Path,
    args: argparse.Namespace,
    config: DPOConfig,
    model_path: Path,
    dtype: str,
    device: str,
) -> None:
    """Write the marker (first thing in the folder) and tidy what a fresh start replaces."""
    from povidgen import __version__

    out.mkdir(parents=True, exist_ok=True)
    data_path = str(args.data.resolve())
    earlier = _read_marker(out)
    for key, now, flag in (("model", str(model_path), "--model"), ("data", data_path, "--data")):
        if args.resume and earlier.get(key) not in (None, now):
            print(
                f"povidgen: warning: {flag} {now} differs from the run's {earlier[key]}",
                file=sys.stderr,
            )
    marker = {
        "povidgen_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed": bool(args.resume),
        "model": str(model_path),
        "data": data_path,
        "split": args.split,
        "dtype": dtype,
        "device": device,
        "merge": bool(args.merge),
        "config": config.model_dump(mode="json"),
    }
    tmp = out / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MARKER)
    if not args.resume:
        # a marked folder without checkpoints: a run that failed early; start its log afresh
        (out / METRICS_FILE).unlink(missing_ok=True)
