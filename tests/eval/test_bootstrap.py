"""bootstrap_interval: seeded percentile intervals of ratios of sums."""

from __future__ import annotations

import numpy as np
import pytest

from povidgen.eval import Interval, bootstrap_interval


def test_the_interval_of_a_mean_has_the_textbook_width() -> None:
    # 400 coin flips, half heads: the 95% interval is about +-1.96 * sqrt(0.25 / 400) = +-0.049
    values = [1.0, 0.0] * 200
    low, high = bootstrap_interval(values, seed=0)
    assert low < 0.5 < high
    assert 0.08 < high - low < 0.12
    assert abs((0.5 - low) - (high - 0.5)) < 0.02  # about symmetric


def test_seeded() -> None:
    rng = np.random.default_rng(0)
    top, bottom = rng.integers(0, 5, 50), rng.integers(1, 8, 50)
    first = bootstrap_interval(top, bottom, seed=11)
    assert first == bootstrap_interval(top, bottom, seed=11)
    assert first != bootstrap_interval(top, bottom, seed=12)
    assert isinstance(first, Interval)


def test_contains_the_point_estimate_of_a_ratio() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        top = rng.integers(0, 4, n)
        bottom = top + rng.integers(0, 4, n)
        value = top.sum() / bottom.sum() if bottom.sum() else 0.0
        assert bootstrap_interval(top, bottom, seed=int(rng.integers(1000))).covers(value)


def test_more_confidence_is_wider_and_constants_are_exact() -> None:
    values = list(np.random.default_rng(2).random(100))
    narrow = bootstrap_interval(values, confidence=0.5)
    wide = bootstrap_interval(values, confidence=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high
    assert bootstrap_interval([0.25] * 10) == (0.25, 0.25)
    assert bootstrap_interval([0, 0], [0, 0]) == (0.0, 0.0)  # 0 / 0 is 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one unit"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="2 numerators but 3 denominators"):
        bootstrap_interval([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([1], resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1], confidence=1.0)
