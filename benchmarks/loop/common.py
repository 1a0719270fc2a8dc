"""Helpers shared by the loop scenarios and their harness (:mod:`benchmarks.loop_bench`)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["percentile", "progress", "summarize", "summarize_per_seed"]


def progress(scenario: str, message: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] {scenario}: {message}", flush=True)


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100): with few seeds, a value that was measured."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """``{"n", "median", "p95", "min", "max"}`` of one metric over seeds."""
    items = [float(v) for v in values]
    return {
        "n": len(items),
        "median": statistics.median(items),
        "p95": percentile(items, 95),
        "min": min(items),
        "max": max(items),
    }


def summarize_per_seed(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric (each numeric key of the per-seed results; nested objects as ``a.b``), its
    :func:`summarize` over the seeds that have it."""
    columns: dict[str, list[float]] = {}

    def collect(prefix: str, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            name = f"{prefix}{key}"
            # bool is an int: a yes/no per seed summarizes as a share.
            if isinstance(value, int | float) and math.isfinite(value):
                columns.setdefault(name, []).append(float(value))
            elif isinstance(value, Mapping):
                collect(f"{name}.", value)

    for result in per_seed.values():
        collect("", result)
    return {name: summarize(values) for name, values in sorted(columns.items())}
