"""Which node version a run gets: constraint, catalog status and rollout weight, by run id.

Pure: no clock, no randomness, no I/O. The scheduler's resolver
(:mod:`processors.node_catalog.runtime_view`) feeds it the catalog it has read from ``nodes``.

Rules (docs/nodes.md, "Catalog, versions and rollout"):

- An **exact pin** (``echo@1.0.0``) gets that version whatever its weight, if it is draft,
  staging or production: pinning is how a workflow opts in to a version under test. A
  deprecated pin is refused.
- A **range** (``^1``, ``~1.2``, ``>=1``, ``*``) chooses among the *production* versions it
  allows (pre-releases never match a range). Draft, staging and deprecated versions are never
  chosen by a range.
- **Weights**: the allowed production versions, newest first, each claim ``rollout_weight`` of
  the share left by the newer ones; the oldest allowed version (the baseline) takes whatever is
  left, so the choice is total. With v1 (baseline) and v2 at weight 0.1, v2 gets 10 % of runs.
  A weight of 1 moves everything to that version; 0 keeps it dark (unless it is the only one).
- **Deterministic by run id**: the point ``u = hash(node, run_id)`` in [0, 1) picks the
  interval, so a run always gets the same version while the weights stay, and the steps of one
  run that use the same node and constraint agree.
- Nothing allowed -> :class:`NodeVersionUnavailableError` (non-retryable), naming the constraint
  and what the catalog has: the scheduler fails the step, and so the run, with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from foundation.errors import NonRetryableError
from schemas.models import NodeStatus
from workflows.semver import Version, VersionConstraint

__all__ = [
    "CatalogVersion",
    "NodeVersionUnavailableError",
    "choose_version",
    "describe_versions",
    "rollout_point",
    "shares",
]

_SCALE: Final = float(1 << 64)


class NodeVersionUnavailableError(NonRetryableError):
    """No catalog version may serve the step: retrying the same run cannot change that."""

    error_class = "NodeVersionUnavailable"


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    """One node version as the catalog knows it."""

    version: str
    status: NodeStatus
    rollout_weight: float

    @property
    def parsed(self) -> Version:
        return Version.parse(self.version)


def rollout_point(node: str, run_id: str) -> float:
    """``hash(node, run_id)`` as a point in [0, 1): uniform, stable across processes.

    sha256 rather than ``hash()``: Python's string hash is salted per process, and every
    scheduler instance (and a replay next year) must route a run the same way.
    """
    digest = hashlib.sha256(f"{node}\x00{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def describe_versions(versions: Iterable[CatalogVersion]) -> str:
    """``"1.0.0 (production), 2.0.0 (deprecated)"`` in version order; ``"no versions"``."""
    ordered = sorted(versions, key=_sort_key)
    if not ordered:
        return "no versions"
    return ", ".join(f"{v.version} ({v.status.value})" for v in ordered)


def _sort_key(entry: CatalogVersion) -> tuple[int, Version | None, str]:
    try:
        return (1, entry.parsed, entry.version)
    except ValueError:
        return (0, None, entry.version)


def _parsed(versions: Iterable[CatalogVersion]) -> list[tuple[Version, CatalogVersion]]:
    out: list[tuple[Version, CatalogVersion]] = []
    for entry in versions:
        try:
            out.append((entry.parsed, entry))
        except ValueError:
            continue  # the projector dead-letters these; routing just cannot use them
    return out


def shares(constraint: str, versions: Iterable[CatalogVersion]) -> list[tuple[str, float]]:
    """The expected share of runs per version, newest first (the rollout plan, for docs/APIs).

    Empty when nothing is allowed; an exact pin yields ``[(version, 1.0)]`` if it is usable.
    """
    parsed = VersionConstraint.parse(constraint)
    candidates = _candidates(parsed, versions)
    plan: list[tuple[str, float]] = []
    remaining = 1.0
    for index, entry in enumerate(candidates):
        last = index == len(candidates) - 1
        share = remaining if last else remaining * _clamp(entry.rollout_weight)
        plan.append((entry.version, share))
        remaining -= share
    return plan


def _clamp(weight: float) -> float:
    return min(1.0, max(0.0, weight))


def _candidates(
    constraint: VersionConstraint, versions: Iterable[CatalogVersion]
) -> list[CatalogVersion]:
    """Usable versions for ``constraint``, newest first."""
    parsed = _parsed(versions)
    if constraint.exact is not None:
        return [
            entry
            for version, entry in parsed
            if version == constraint.exact and entry.status is not NodeStatus.DEPRECATED
        ]
    allowed = [
        (version, entry)
        for version, entry in parsed
        if entry.status is NodeStatus.PRODUCTION and constraint.allows(version)
    ]
    allowed.sort(key=lambda pair: pair[0], reverse=True)
    return [entry for _, entry in allowed]


def choose_version(
    node: str, constraint: str, versions: Sequence[CatalogVersion], run_id: str
) -> str:
    """The version of ``node`` that run ``run_id`` gets under ``constraint``; see the module doc.

    Raises :class:`NodeVersionUnavailableError` when no version may serve it.
    """
    parsed = VersionConstraint.parse(constraint)
    candidates = _candidates(parsed, versions)
    if not candidates:
        raise NodeVersionUnavailableError(_unavailable(node, parsed, versions))
    u = rollout_point(node, run_id)
    accumulated = 0.0
    remaining = 1.0
    for entry in candidates[:-1]:
        share = remaining * _clamp(entry.rollout_weight)
        if u < accumulated + share:
            return entry.version
        accumulated += share
        remaining -= share
    return candidates[-1].version


def _unavailable(
    node: str, constraint: VersionConstraint, versions: Sequence[CatalogVersion]
) -> str:
    have = describe_versions(versions)
    if constraint.exact is not None:
        pinned = next((v for v in versions if v.version == str(constraint.exact)), None)
        if pinned is not None and pinned.status is NodeStatus.DEPRECATED:
            return (
                f"Expected {node}@{constraint.exact} to accept new runs, but it is deprecated "
                f"(the catalog has {have}); pin a supported version or use a range"
            )
        return f"Expected {node}@{constraint.exact} in the node catalog, but the catalog has {have}"
    return (
        f"Expected a production version of {node} matching {constraint.raw}, "
        f"but the catalog has {have}"
    )
