"""One process of the small distributed training runs of ``test_distributed.py``.

Run from the repository root as::

    RANK=r WORLD_SIZE=2 INIT_METHOD=file:///tmp/store python -m tests.train.ddp_worker OUT RUN...

``INIT_METHOD`` is a ``file://`` rendezvous (no port to pick, so no race for a free port).
Each process joins a gloo process group, then for each ``RUN`` builds the same tiny LLaVA and
the same rows, trains :data:`STEPS` optimiser steps with :class:`povidgen.train.DPOTrainer`
and writes ``OUT/RUN/rank-R.json`` (metrics and facts about the parameters) and
``OUT/RUN/rank-R.pt`` (the trainable weights, gathered to full tensors, by name). A run that
raises writes its error to the JSON file instead, and the next run goes on.

Runs (``MODE`` or ``MODE-VARIANT``):

* ``text`` / ``povid``: the trainer's default under ``torchrun``, ``DistributedDataParallel``;
* ``text-fsdp`` / ``povid-fsdp``: ``DPOConfig(distributed="fsdp")``, FSDP2's ``fully_shard``
  on every decoder layer and on the policy module as the root;
* ``text-fsdp-resume``: the same, stopped after step 2 (a checkpoint of sharded weights and
  optimiser state), resumed by a new trainer, then saved with ``DPOTrainer.save`` to
  ``OUT/RUN/final``.

:func:`train` also runs in a single process (no process group) for the reference run.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from povidgen.train.config import Mode

ROWS = 8
STEPS = 3
LEARNING_RATE = 1e-2  # large, so that three AdamW steps move every LoRA weight by ~1e-2
RUNS = ("text", "povid", "text-fsdp", "povid-fsdp", "text-fsdp-resume")


def train(out: Path, run: str, *, batch_size: int) -> dict[str, Any]:
    """Train one run on this process's share of every global batch; write and return it."""
    from povidgen.train import DPOConfig, DPOTrainer
    from povidgen.train.tiny import tiny_vlm
    from tests.train.rows import make_rows

    mode, _, variant = run.partition("-")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    config = DPOConfig(
        mode=cast("Mode", mode),
        batch_size=batch_size,
        max_steps=STEPS,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=LEARNING_RATE,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        seed=0,
        distributed="fsdp" if variant.startswith("fsdp") else "ddp",
    )
    folder = out / "run"
    if variant == "fsdp-resume":
        model, processor = tiny_vlm("llava", seed=0)
        first = DPOTrainer(model, processor, make_rows(ROWS), config, output_dir=folder)
        first.train(stop=lambda: first.global_step >= 2)
    model, processor = tiny_vlm("llava", seed=0)
    trainer = DPOTrainer(model, processor, make_rows(ROWS), config, output_dir=folder)
    result = trainer.train(resume=variant == "fsdp-resume")
    metrics = result.metrics
    if variant == "fsdp-resume":
        trainer.save(out / "final")
        lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        metrics = [json.loads(line) for line in lines]
    trainable = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    state = {name: _full(param.detach()).cpu().clone() for name, param in trainable}
    record = {
        "rank": rank,
        "global_step": result.global_step,
        "metrics": metrics,
        "trainable": len(trainable),
        "sharded": sum(1 for _, p in trainable if hasattr(p, "full_tensor")),
        "local_numel": sum(_local(p).numel() for _, p in trainable),
        "full_numel": sum(t.numel() for t in state.values()),
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / f"rank-{rank}.pt")
    (out / f"rank-{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    return record


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered on every rank; a plain tensor as it is."""
    full = getattr(tensor, "full_tensor", None)
    return full() if full is not None else tensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    local = getattr(tensor, "to_local", None)
    return local() if local is not None else tensor


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out, runs = Path(args[0]), args[1:]
    unknown = [run for run in runs if run not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; known: {RUNS}")
    world_size = int(os.environ["WORLD_SIZE"])
    torch.distributed.init_process_group(
        "gloo",
        init_method=os.environ["INIT_METHOD"],
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        timeout=timedelta(seconds=120),  # a rank that dies early fails the other, not hangs it
    )
    try:
        rank = torch.distributed.get_rank()
        for run in runs:
            try:
                train(out / run, run, batch_size=int(os.environ["BATCH_SIZE"]))
            except Exception as error:  # noqa: BLE001 - recorded; the test decides
                (out / run).mkdir(parents=True, exist_ok=True)
                failure = {
                    "rank": rank,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                }
                (out / run / f"rank-{rank}.json").write_text(json.dumps(failure), encoding="utf-8")
    finally:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
