"""The reference model's log-probs: adapter disabled, a frozen copy, or precomputed on disk.

* ``"adapter"``: the policy with its LoRA adapter disabled *is* the reference (no second
  model in memory); the default with LoRA.
* ``"copy"``: a separate frozen copy of the starting model; the default for full fine-tuning.
* ``"precomputed"``: the reference scores of every row are computed once, before training, and
  kept in an SQLite file keyed by ``hash(model fingerprint, scoring settings, row content)``.
  A later run on the same model and rows reads them instead of running the reference at all;
  a changed model, row, image, distorter seed or setting misses the cache and is recomputed.
  (TRL refuses to precompute reference log-probs for vision data.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from povidgen.train.collate import PreferenceBatch
from povidgen.train.families import unwrap_model, unwrap_peft
from povidgen.train.step import Scorer, Scores

__all__ = ["ReferenceCache", "adapter_disabled", "model_fingerprint"]

_SAMPLE = 4096


def model_fingerprint(model: nn.Module) -> str:
    """A content hash of a model: its class, config and every base weight.

    Each tensor contributes its name, shape, dtype and up to 4,096 evenly strided values (LoRA
    weights are skipped: the reference is the base model). Two models that differ in any
    sampled weight or in shape differ in fingerprint; the full 7B weights are not read.
    """
    inner = unwrap_model(model)
    h = hashlib.blake2b(digest_size=16)
    h.update(type(inner).__name__.encode())
    config = getattr(inner, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in inner.state_dict().items():
            if "lora_" in name:
                continue
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLE)
            sample = flat[::step][:_SAMPLE].to("cpu", torch.float64).numpy().tobytes()
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(sample)
    return h.hexdigest()


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` (a PEFT model, possibly wrapped) with its adapters disabled."""
    inner = unwrap_peft(model)
    if not hasattr(inner, "disable_adapter"):
        raise ValueError("ref='adapter' needs a PEFT model; pass full=False or ref='copy'")
    with inner.disable_adapter():
        yield


class ReferenceCache:
    """Reference scores on disk, one SQLite row per pair, committed as they are computed.

    Args:
        path: the SQLite file (its folder is created).
        namespace: what the scores depend on besides the row: the model fingerprint and the
            scoring settings (mode, overlap, max_length...), hashed into every key.
    """

    def __init__(self, path: str | Path, namespace: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.namespace = hashlib.blake2b(
            json.dumps(namespace, sort_keys=True).encode(), digest_size=16
        ).hexdigest()
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS ref (key TEXT PRIMARY KEY, chosen REAL NOT NULL, "
            "rejected REAL NOT NULL, noisy REAL)"
        )
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def _key(self, row_key: str) -> str:
        return hashlib.blake2b(f"{self.namespace}:{row_key}".encode(), digest_size=16).hexdigest()

    def missing(self, batch: PreferenceBatch) -> bool:
        """Whether any row of ``batch`` has no cached scores."""
        keys = [self._key(k) for k in batch.keys]
        marks = ",".join("?" * len(keys))
        found = self._db.execute(f"SELECT COUNT(*) FROM ref WHERE key IN ({marks})", keys)
        return int(found.fetchone()[0]) < len(set(keys))

    def put(self, batch: PreferenceBatch, scores: Scores) -> None:
        """Store the scores of every row of ``batch`` (one transaction)."""
        noisy = scores.noisy.tolist() if scores.noisy is not None else [None] * len(batch)
        rows = [
            (self._key(k), float(c), float(r), None if n is None else float(n))
            for k, c, r, n in zip(
                batch.keys, scores.chosen.tolist(), scores.rejected.tolist(), noisy, strict=True
            )
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO ref VALUES (?, ?, ?, ?)", rows)

    def get(self, batch: PreferenceBatch, device: torch.device) -> Scores:
        """The cached scores of ``batch``.

        Raises:
            KeyError: naming the first row that is not cached.
        """
        values = []
        for row_id, key in zip(batch.ids, batch.keys, strict=True):
            found = self._db.execute(
                "SELECT chosen, rejected, noisy FROM ref WHERE key = ?", (self._key(key),)
            ).fetchone()
            if found is None:
                self.misses += 1
                raise KeyError(f"row {row_id} has no precomputed reference log-probs")
            values.append(found)
        self.hits += len(values)

        def column(i: int) -> torch.Tensor:
            return torch.tensor([v[i] for v in values], dtype=torch.float32, device=device)

        noisy = column(2) if values[0][2] is not None else None
        return Scores(column(0), column(1), noisy, *batch.response_lengths())

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def score_reference(
    scorer: Scorer,
    model: nn.Module,
    batch: PreferenceBatch,
    *,
    ref_model: nn.Module | None,
    features: list[torch.Tensor] | None,
    noisy_features: list[torch.Tensor] | None,
) -> Scores:
    """Reference scores of ``batch`` with ``ref_model``, or ``model`` with adapters disabled."""
    with torch.no_grad():
        if ref_model is not None:
            return scorer.score(
                ref_model, batch, features=features, noisy_features=noisy_features
            ).detach()
        with adapter_disabled(model):
            return scorer.score(
                model, batch, features=features, noisy_features=noisy_features
            ).detach()
