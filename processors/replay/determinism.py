"""Determinism check: a recorded run replayed against its own version (side effects from the
record) must yield the same events and outputs, excluding timestamps, ids and durations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foundation.settings import Settings


@dataclass(frozen=True)
class DeterminismReport:
    run_id: str
    deterministic: bool
    # {"seq": n, "expected": {...}, "actual": {...}} of the first event that differs.
    first_divergence: dict[str, Any] | None


def check_determinism(settings: Settings, run_id: str) -> DeterminismReport:
    raise NotImplementedError
