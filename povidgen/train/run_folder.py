"""What a training run keeps in its output folder, and what a resumed run must share with it.

Free of PyTorch, so that ``povidgen train`` checks a folder before it loads the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from povidgen.train.config import DPOConfig

METRICS_FILE = "metrics.jsonl"
"""The metrics the trainer logs, one JSON record per line."""
CHECKPOINTS = "checkpoints"
"""The folder of the checkpoints ``step-N``."""
STATE_FILE = "trainer_state.json"
"""A checkpoint's trainer state (step, data position, the settings)."""


def checkpoints(root: Path) -> list[Path]:
    """The finished checkpoints ``step-N`` under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resume_key(config: DPOConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues."""
    data = config.model_dump(mode="json")
    for free in ("max_steps", "save_steps", "logging_steps", "report_to", "num_workers"):
        data.pop(free, None)
    return data
