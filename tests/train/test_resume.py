"""Resume after SIGKILL: the loss curve equals an uninterrupted run's, bit for bit (CPU, fp32).

Each run is a subprocess on the same script, so thread settings and import state are the same;
the killed runs SIGKILL themselves from inside the trainer (after a checkpoint, or in the middle
of writing one), exactly where a crash or ``kill -9`` would stop them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

SCRIPT = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
from povidgen.train import DPOConfig, DPOTrainer
from povidgen.train import trainer as trainer_module
from povidgen.train.tiny import tiny_vlm
from tests.train.rows import make_rows

out, kill, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
if kill.startswith("after-"):
    step = int(kill[6:])
    save = trainer_module.DPOTrainer.save_checkpoint
    def save_then_die(self):
        path = save(self)
        if self.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    trainer_module.DPOTrainer.save_checkpoint = save_then_die
elif kill.startswith("during-"):
    step = int(kill[7:])
    replace = os.replace
    def die_before_rename(src, dst):
        if str(dst).endswith(f"step-{step}"):
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst)
    trainer_module.os.replace = die_before_rename

model, processor = tiny_vlm("llava")
config = DPOConfig(
    mode="povid", batch_size=2, grad_accum=2, max_steps=5, save_steps=1,
    learning_rate=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.1,
)
trainer = DPOTrainer(model, processor, make_rows(6), config, output_dir=out)
trainer.train(resume=resume)
"""


def run(tmp: Path, out: Path, kill: str, mode: str) -> int:
    script = tmp / "train_script.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script), str(out), kill, mode],
        cwd=root,
        env={"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def losses(out: Path) -> list[tuple[int, float, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(int(r["step"]), r["loss"], r["logps/noisy"]) for r in records]


@pytest.mark.slow
def test_resume_after_sigkill_repeats_the_uninterrupted_curve(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    assert run(tmp_path, straight, "none", "fresh") == 0
    expected = losses(straight)
    assert [s for s, _, _ in expected] == [1, 2, 3, 4, 5]

    # killed right after the checkpoint of step 2 / in the middle of writing step 3's
    for kill in ("after-2", "during-3"):
        out = tmp_path / kill
        assert run(tmp_path, out, kill, "fresh") == -signal.SIGKILL
        assert run(tmp_path, out, "none", "resume") == 0
        # dropout and the data order continue from the saved RNG states and position:
        # the curve is bit-identical, and no step is logged twice
        assert losses(out) == expected, kill
        checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert checkpoints == ["step-4", "step-5"], checkpoints  # stale temporaries removed
