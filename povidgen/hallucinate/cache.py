"""A content-addressed cache of model replies, so that no reply is paid for twice.

Every reply an API hallucinator receives is committed to an SQLite file (WAL mode, one
transaction per reply) before it is used, under a key that hashes everything that decides what
the provider answers::

    key = BLAKE2b(provider, model, prompt version, prompt fingerprint, request parameters,
                  the exact request content: system and user text, the image bytes sent,
                  the example's seed)

A rerun (after a crash, Ctrl-C, or into a new output folder) finds the reply under the same key
and sends nothing. A changed prompt, model, parameter, image or text is another key. The cache
holds reply texts and token counts only: never an API key, a header or a URL.

Where: ``cache_dir`` when given, else ``$POVIDGEN_CACHE_DIR``, else the user cache directory
(``platformdirs.user_cache_dir("povidgen")``), in ``replies.sqlite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from povidgen.hallucinate.pricing import Usage

__all__ = ["CACHE_ENV", "ReplyCache", "default_cache_dir"]

CACHE_ENV = "POVIDGEN_CACHE_DIR"
"""The environment variable that moves the default cache folder."""

_FILE = "replies.sqlite"


def default_cache_dir() -> Path:
    """``$POVIDGEN_CACHE_DIR``, else the user cache directory of povidgen."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("povidgen"))


class ReplyCache:
    """Replies on disk, keyed by the content of their request.

    Args:
        folder: where ``replies.sqlite`` lives (created); default :func:`default_cache_dir`.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / _FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "usage TEXT NOT NULL)"
        )
        self._db.commit()
        self.hits = 0
        """Lookups answered from the cache in this process."""

    @staticmethod
    def key(**parts: Any) -> str:
        """The cache key of a request: a hash of its named parts (JSON-encoded, sorted)."""
        material = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.blake2b(material.encode("utf-8"), digest_size=20).hexdigest()

    def get(self, key: str) -> tuple[str, Usage] | None:
        """The cached reply text and usage for ``key``, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT text, usage FROM replies WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        self.hits += 1
        return row[0], Usage.model_validate_json(row[1])

    def put(self, key: str, text: str, usage: Usage) -> None:
        """Commit one reply (durable when this returns)."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?)",
                (key, text, usage.model_dump_json()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()
