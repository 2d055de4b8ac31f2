"""The povidgen exception tree.

Every error povidgen raises on purpose derives from :class:`PovidgenError`, so callers can catch
one class. Input problems also derive from :class:`ValueError` so that generic code that already
guards against bad values keeps working::

    PovidgenError
    ├── InputError (ValueError)             bad user input, found before or while reading rows
    │   ├── MissingColumnError              a named column is not in the dataset
    │   ├── DatasetFormatError              a dataset file or folder cannot be read
    │   ├── ImageError                      an image is corrupt, missing or of an unusable mode
    │   └── InvalidExampleError             an example has an empty prompt or answer, or a bad id
    ├── HallucinationError                  a hallucinator could not corrupt an answer
    │   └── VerificationError               a model's reply failed verification (has .reason)
    ├── ProviderError                       a model provider call failed for this row
    │   └── RunStoppedError                 the run must stop: no further rows are submitted
    │       ├── ProviderFatalError          authentication failed or the quota is exhausted
    │       └── BudgetExceededError         the next call would pass max_cost_usd
    ├── DistortionError                     a distorter could not corrupt an image
    └── PluginError                         no hallucinator / distorter registered under a name

Row-level failures during :meth:`povidgen.PairBuilder.build` are not raised: they become
:class:`povidgen.RowError` records, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BudgetExceededError",
    "DatasetFormatError",
    "DistortionError",
    "HallucinationError",
    "ImageError",
    "InputError",
    "InvalidExampleError",
    "MissingColumnError",
    "PluginError",
    "PovidgenError",
    "ProviderError",
    "ProviderFatalError",
    "RunStoppedError",
    "VerificationError",
]


class PovidgenError(Exception):
    """Base class of every error povidgen raises on purpose."""


class InputError(PovidgenError, ValueError):
    """The user's input (dataset, file, image, example) cannot be used."""


class MissingColumnError(InputError):
    """A column named by the caller is not in the dataset.

    The message names the missing column and lists the columns that exist.
    """

    def __init__(self, role: str, column: str, available: Iterable[str]) -> None:
        self.role = role
        self.column = column
        self.available = sorted(available)
        listed = ", ".join(repr(c) for c in self.available) or "(none)"
        super().__init__(
            f"{role} column {column!r} is not in the dataset; the dataset has columns: {listed}"
        )


class DatasetFormatError(InputError):
    """A dataset path cannot be read: unknown format, malformed file, or missing folder."""


class ImageError(InputError):
    """An image cannot be opened or converted: corrupt bytes, missing file, unusable mode."""


class InvalidExampleError(InputError):
    """An example is unusable: empty prompt or answer, empty id, duplicate id."""


class HallucinationError(PovidgenError):
    """A hallucinator could not produce a valid corrupted answer for an example."""


class ProviderError(PovidgenError):
    """A call to a model provider failed for one row (after any retries)."""


class RunStoppedError(ProviderError):
    """The run cannot go on: rows not yet submitted are recorded as not attempted, and what
    was done is kept."""


class ProviderFatalError(RunStoppedError):
    """The provider refused the credentials or the account has no quota left."""


class BudgetExceededError(RunStoppedError):
    """Submitting another call could pass the run's ``max_cost_usd``."""


class VerificationError(HallucinationError):
    """A model's reply failed verification (not JSON for the schema, a refusal, identical to the
    answer, an edit not found in the rewrite...).

    Attributes:
        reason: a human-readable explanation addressed to the model, fed back on retry.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DistortionError(PovidgenError):
    """A distorter could not corrupt an image (for example an unsupported image mode)."""


class PluginError(PovidgenError, LookupError):
    """No hallucinator or distorter is registered under the requested name."""
