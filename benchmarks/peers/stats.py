"""Summary statistics shared by the peer benchmarks (pure, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as numpy's default (``method="linear"``), so numbers compare with
    REFLUX's own benchmark whichever of the two computed them. With n samples, p99 interpolates
    between the two largest values once n < 100: read it as "near the worst case".
    """
    if not samples:
        raise ValueError("Expected at least one sample, but got none")
    if not 0 <= q <= 100:
        raise ValueError(f"Expected a percentile between 0 and 100, but got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def p50_p99(samples: Sequence[float]) -> tuple[float, float]:
    return percentile(samples, 50), percentile(samples, 99)


def rate(count: int, seconds: float) -> float:
    """Items per second; refuses a non-positive duration instead of returning inf."""
    if seconds <= 0:
        raise ValueError(f"Expected a positive duration, but got {seconds}s")
    return count / seconds
