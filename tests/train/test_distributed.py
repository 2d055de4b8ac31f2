"""Data-parallel training on 2 CPU processes (gloo) equals training in 1 process.

Each rank of a 2-process run builds the same tiny LLaVA (same seed) and the same 8 rows, and
trains 3 AdamW steps (lr 1e-2, LoRA r=4, no dropout) with ``batch_size=2``; the single process
trains with ``batch_size=4``. The trainer draws every global batch (batch_size x processes
pairs) from one seeded permutation and rank r reads slice r of it, so both runs see the same
global batches; DDP averages the gradients of the two halves, which equals the gradient of the
mean loss over the whole batch, and the metrics are averaged across ranks. So per-step
metrics and final LoRA weights must agree up to float32 rounding (the ranks pack 2 pairs per
row instead of 4, and gloo sums the gradients in another order).

The ranks are ``python -m tests.train.ddp_worker`` subprocesses (one per rank, a file
rendezvous, ``OMP_NUM_THREADS=1``); they run every run of :data:`RUNS` in one go, while this
process trains the single-process references. All of it takes 15-30 s on 2 cores (most of it
importing transformers and building the model in each process), hence ``slow``.

FSDP2 (``DPOConfig(distributed="fsdp")``: ``fully_shard`` on every decoder layer and on the
policy module as the root) equals one process too, in both modes, and so does a sharded run
stopped after step 2 and resumed from its checkpoint; its saved adapter loads in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from tests.train.ddp_worker import RUNS, train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
PER_RANK = 2
TIMEOUT = 240  # seconds for the 2-process runs; they take 10-30 s

# Tolerances. Metrics (loss ~0.69, summed log-probs ~-90): rtol 1e-5 with atol 1e-5, far above
# the ~1e-7 relative rounding differences seen, far below what a wrong slice or a missing
# gradient average would give (the per-rank halves differ by whole nats). Weights after 3
# AdamW steps of lr 1e-2 (each weight moves by up to 3e-2): rtol 1e-5 with atol 5e-5; the
# differences seen are ~1e-6 (text) and ~9e-6 (povid).
METRIC_TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}
WEIGHT_TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 5e-5}
COMPARED = ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/margins")


def _load(folder: Path, rank: int) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    record = json.loads((folder / f"rank-{rank}.json").read_text(encoding="utf-8"))
    weights = folder / f"rank-{rank}.pt"
    return record, torch.load(weights) if "error" not in record else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run of :data:`RUNS` on 2 processes, and ``single/text``, ``single/povid`` in 1."""
    root = tmp_path_factory.mktemp("distributed")
    env = {
        **os.environ,
        "WORLD_SIZE": str(WORLD_SIZE),
        "BATCH_SIZE": str(PER_RANK),
        "INIT_METHOD": (root / "rendezvous").as_uri(),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    logs = [(root / f"rank-{rank}.log").open("w") for rank in range(WORLD_SIZE)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-m", "tests.train.ddp_worker", str(root), *RUNS],
            cwd=REPO,
            env={**env, "RANK": str(rank)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for rank, log in enumerate(logs)
    ]
    try:
        # the references, while the ranks start
        for mode in ("text", "povid"):
            train(root / "single" / mode, mode, batch_size=PER_RANK * WORLD_SIZE)
        for proc in procs:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    for rank, proc in enumerate(procs):
        output = (root / f"rank-{rank}.log").read_text(encoding="utf-8")
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{output}"
    return root


def _assert_run_equals_single(root: Path, run: str, mode: str) -> list[dict[str, Any]]:
    single, single_weights = _load(root / "single" / mode, 0)
    assert single_weights is not None
    records = []
    for rank in range(WORLD_SIZE):
        record, weights = _load(root / run, rank)
        assert "error" not in record, record.get("traceback")
        assert weights is not None
        assert record["global_step"] == single["global_step"] == 3
        assert len(record["metrics"]) == len(single["metrics"]) == 3
        names = COMPARED + (("logps/noisy", "rewards/noisy") if mode == "povid" else ())
        for step, (got, want) in enumerate(zip(record["metrics"], single["metrics"], strict=True)):
            for name in names:
                torch.testing.assert_close(
                    got[name], want[name], **METRIC_TOL, msg=f"{run} rank {rank} step {step} {name}"
                )
        assert weights.keys() == single_weights.keys()
        for name, value in weights.items():
            torch.testing.assert_close(
                value, single_weights[name], **WEIGHT_TOL, msg=f"{run} rank {rank} {name}"
            )
        records.append((record, weights))
    # the replicas hold the same weights, bit for bit
    for name, value in records[0][1].items():
        assert torch.equal(value, records[1][1][name]), name
    # ... and they moved: LoRA B starts at zero, so this is far above the tolerance
    moved = max(v.abs().max().item() for n, v in single_weights.items() if "lora_B" in n)
    assert moved > 100 * WEIGHT_TOL["atol"]
    return [r for r, _ in records]


@pytest.mark.parametrize("mode", ["text", "povid"])
def test_ddp_on_two_processes_equals_one(runs: Path, mode: str) -> None:
    for record in _assert_run_equals_single(runs, mode, mode):
        assert record["sharded"] == 0


@pytest.mark.parametrize("mode", ["text", "povid"])
def test_fsdp2_on_two_processes_equals_one(runs: Path, mode: str) -> None:
    records = _assert_run_equals_single(runs, f"{mode}-fsdp", mode)
    for record in records:
        # every LoRA weight is a DTensor of which each rank holds about half
        assert record["sharded"] == record["trainable"] > 0
        assert record["local_numel"] < 0.6 * record["full_numel"]
    # FSDP2 and DDP reduce the same gradients: the same metrics
    ddp, _ = _load(runs / mode, 0)
    for got, want in zip(records[0]["metrics"], ddp["metrics"], strict=True):
        for name in COMPARED:
            torch.testing.assert_close(got[name], want[name], **METRIC_TOL)


# peft reads transformers' deprecated is_gradient_checkpointing when it loads an adapter
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_fsdp2_checkpoint_resume_and_save(runs: Path) -> None:
    from peft import PeftModel

    from povidgen.train.tiny import tiny_vlm

    _assert_run_equals_single(runs, "text-fsdp-resume", "text")
    _, weights = _load(runs / "text-fsdp-resume", 0)
    assert weights is not None
    base, _ = tiny_vlm("llava", seed=0)
    loaded = PeftModel.from_pretrained(base, runs / "text-fsdp-resume" / "final")
    saved = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert len(saved) == len(weights)
    for name, value in weights.items():
        torch.testing.assert_close(saved[name], value)
