"""Secrets in use never reach a file, a log line or the terminal.

An API key is registered when a provider is built (:func:`register_secret`); from then on
:func:`scrub` replaces it with ``***`` in any text. povidgen applies it where text leaves the
process: every :class:`povidgen.RowError` reason (so ``errors.jsonl`` and the CLI's summaries),
every record of the ``povidgen`` logger, and the CLI's error line. A server that echoes the key
in an error message therefore leaks it nowhere.

Values shorter than :data:`MIN_LENGTH` characters are not registered: they are no credential,
and scrubbing them would mangle ordinary text.
"""

from __future__ import annotations

import logging
import threading

from pydantic import SecretStr

__all__ = ["MIN_LENGTH", "register_secret", "scrub"]

MIN_LENGTH = 8
"""The shortest value :func:`register_secret` accepts."""

_MASK = "***"
_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: str | SecretStr | None) -> None:
    """Scrub ``value`` from every text povidgen writes from now on (process-wide)."""
    global _secrets
    if value is None:
        return
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    text = text.strip()
    if len(text) < MIN_LENGTH:
        return
    with _lock:
        if text not in _secrets:
            # longest first, so a key that contains another is masked whole
            _secrets = tuple(sorted({*_secrets, text}, key=len, reverse=True))


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


class _ScrubFilter(logging.Filter):
    """Formats a record's message once and scrubs it (its arguments may hold the secret)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = scrub(record.getMessage())
            record.msg, record.args = message, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = scrub(record.exc_text)
        return True


_filter = _ScrubFilter()
logging.getLogger("povidgen").addFilter(_filter)
