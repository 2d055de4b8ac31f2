"""Percentile bootstrap confidence intervals for figures that are ratios of sums over images.

Every figure of :mod:`povidgen.eval` is a ratio of two sums over the evaluated images (or
other independent units):

.. math::

    F = \\frac{\\sum_i a_i}{\\sum_i b_i}

CHAIR_S has ``a_i`` = 1 if caption ``i`` hallucinates and ``b_i = 1``; CHAIR_I has ``a_i`` the
hallucinated mentions and ``b_i`` all mentions of caption ``i``; POPE's F1 has ``a_i = 2 TP_i``
and ``b_i = 2 TP_i + FP_i + FN_i`` over the questions about image ``i``. A ratio whose
denominator is zero is taken as 0 (a caption set with no mention has CHAIR_I 0).

The interval resamples the units with replacement ``resamples`` times (``B``), computes ``F``
on each resample and takes the ``(1 - c) / 2`` and ``(1 + c) / 2`` quantiles of the ``B``
values (the percentile method, linear interpolation). The resamples depend only on ``seed``
and the number of units, so the figures of one result, computed with one seed, share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_RESAMPLES", "Interval", "bootstrap_interval", "ratio"]

DEFAULT_RESAMPLES = 1000
"""Bootstrap resamples per interval."""
DEFAULT_CONFIDENCE = 0.95
"""The intervals' confidence level."""

_CELLS_PER_CHUNK = 1 << 22  # resamples x units drawn at once: 32 MiB of int64 indices


class Interval(NamedTuple):
    """A confidence interval ``[low, high]``."""

    low: float
    high: float

    def covers(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or 0 when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else 0.0


def bootstrap_interval(
    numerators: Sequence[float] | npt.ArrayLike,
    denominators: Sequence[float] | npt.ArrayLike | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The percentile bootstrap interval of ``sum(numerators) / sum(denominators)``.

    Args:
        numerators: ``a_i``, one per unit (image), shape ``(n,)``.
        denominators: ``b_i``, shape ``(n,)``; ``None`` for all ones (the figure is then the
            mean of ``numerators``).
        resamples: ``B``, the number of resamples (at least 1).
        confidence: ``c`` in ``(0, 1)``.
        seed: seeds ``numpy.random.default_rng``; the same inputs and seed give the same
            interval.

    Raises:
        ValueError: no units, shapes that differ, ``resamples < 1`` or ``confidence`` outside
            ``(0, 1)``.
    """
    top = np.asarray(numerators, dtype=np.float64).reshape(-1)
    bottom = (
        np.ones_like(top)
        if denominators is None
        else np.asarray(denominators, dtype=np.float64).reshape(-1)
    )
    n = top.shape[0]
    if n == 0:
        raise ValueError("a bootstrap interval needs at least one unit")
    if bottom.shape != top.shape:
        raise ValueError(f"{n} numerators but {bottom.shape[0]} denominators")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    values = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _CELLS_PER_CHUNK // n)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        picks = rng.integers(0, n, size=(size, n))  # (size, n) unit indices
        a, b = top[picks].sum(axis=1), bottom[picks].sum(axis=1)
        values[start : start + size] = np.divide(a, b, out=np.zeros(size), where=b != 0)
    low, high = np.quantile(values, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return Interval(float(low), float(high))
