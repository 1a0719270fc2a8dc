"""How many recorded runs were in flight at once (pure): the pace a replay can keep to.

A proposal's replay compares latency (``processors.replay.stats``). Fold mode folds every
sampled run at once by default (its throughput, ADR 0036), so fifty runs that reached a live
dependency eight at a time are replayed fifty at a time -- and a candidate that runs a run's
independent calls together (the optimizer's ``parallelise``) sends four times that. On a shared
machine the re-executed calls then queue behind each other (event loop, connection pools, the
dependency itself) and the candidate is measured slower than it is, by its own load. With
``EffectPolicy.pace == "recorded"`` the replay admits at most as many runs at once as the
originals had in flight (:func:`peak_in_flight`), so both sides meet the same load per run.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final, Literal

__all__ = ["PACES", "Pace", "peak_in_flight"]

Pace = Literal["free", "recorded"]
PACES: Final[tuple[Pace, ...]] = ("free", "recorded")


def peak_in_flight(intervals: Iterable[tuple[datetime, datetime | None]]) -> int:
    """The most intervals ``[start, end)`` open at one instant (an end of ``None``: open to the
    last start); 0 for none. A run that ended exactly when another started does not overlap it.
    """
    points: list[tuple[datetime, int]] = []
    starts: list[datetime] = []
    for start, end in intervals:
        starts.append(start)
        if end is not None:
            points.append((end, -1))
        points.append((start, 1))
    # Ends sort before starts at the same instant (-1 < 1).
    points.sort()
    peak = current = 0
    for _, step in points:
        current += step
        peak = max(peak, current)
    return peak
