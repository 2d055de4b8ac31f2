"""Batch mode: half-price provider batch APIs, submitted once and resumed after interruption.

For a set of examples, :func:`run_batch`:

1. builds one request per example (the same request the live path sends) with a ``custom_id``
   derived from the example id;
2. looks for a state file named after a hash of the provider, model, prompt and requests in
   ``batch_dir``; if one exists, the batch was already submitted, and the run resumes polling
   that batch instead of submitting again;
3. otherwise submits the batch and writes the state file (atomically) before polling;
4. polls until the provider reports the batch finished, downloads the results, joins them to
   the examples on ``custom_id``, and verifies every reply exactly as a live reply is verified.

A reply that fails verification, or a request the provider reports as errored or expired,
becomes that example's :class:`~povidgen.HallucinationError` / :class:`~povidgen.ProviderError`
(and so a per-row error record): a batch is not retried row by row.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from povidgen.errors import ProviderError
from povidgen.hallucinate.pricing import Usage
from povidgen.schema import Example

__all__ = ["BatchBackend", "BatchItem", "run_batch"]

logger = logging.getLogger("povidgen")


class BatchItem:
    """One request of a batch: its ``custom_id``, example and provider request parameters."""

    __slots__ = ("custom_id", "example", "request")

    def __init__(self, custom_id: str, example: Example, request: dict[str, Any]) -> None:
        self.custom_id = custom_id
        self.example = example
        self.request = request


class BatchBackend(ABC):
    """What a provider's batch API must offer (see the providers' ``_batch_backend``)."""

    provider: str

    @abstractmethod
    async def submit(self, items: Sequence[BatchItem]) -> str:
        """Submit the requests; return the batch id."""

    @abstractmethod
    async def poll(self, batch_id: str) -> bool:
        """Whether the batch has finished (completed, ended, expired or cancelled)."""

    @abstractmethod
    async def results(self, batch_id: str) -> dict[str, tuple[str, Usage] | ProviderError]:
        """``custom_id`` -> (reply text, usage), or the error of that request."""


def custom_id_for(example_id: str) -> str:
    """A provider-safe id (``[A-Za-z0-9_-]{1,64}``) for an example id."""
    return "r" + hashlib.sha256(example_id.encode("utf-8")).hexdigest()[:40]


def batch_key(provider: str, model: str, fingerprint: str, items: Sequence[BatchItem]) -> str:
    """A stable name for a set of requests: the same rows and settings give the same key."""
    digest = hashlib.sha256()
    for part in (provider, model, fingerprint):
        digest.update(part.encode("utf-8") + b"\x00")
    for item in sorted(items, key=lambda i: i.custom_id):
        digest.update(item.custom_id.encode("utf-8"))
        digest.update(json.dumps(item.request, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:32]


async def run_batch(
    backend: BatchBackend,
    items: Sequence[BatchItem],
    *,
    state_dir: Path,
    key: str,
    poll_interval: float,
) -> dict[str, tuple[str, Usage] | ProviderError]:
    """Submit (or resume) the batch for ``items`` and return its results by ``custom_id``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / f"{backend.provider}-{key}.json"
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        batch_id = str(state["batch_id"])
        logger.info("resuming %s batch %s (state %s)", backend.provider, batch_id, state_path)
    else:
        batch_id = await backend.submit(items)
        _write_atomically(
            state_path,
            {"batch_id": batch_id, "provider": backend.provider, "requests": len(items)},
        )
        logger.info(
            "submitted %s batch %s with %d requests", backend.provider, batch_id, len(items)
        )
    while not await backend.poll(batch_id):
        await asyncio.sleep(poll_interval)
    return await backend.results(batch_id)


def _write_atomically(path: Path, payload: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(payload, stream)
    os.replace(temporary, path)
