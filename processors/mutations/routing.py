"""Which workflow version a new run gets when its ``StartRun`` names none (pure).

A proposal's lifecycle moves new runs between workflow versions (docs/mutations.md):

- ``applied`` (canary weight ``w``): the new version gets ``w`` of new runs, the version new
  runs got before (``previous_version``, usually the base) ``1 - w``;
- ``kept``: the new version gets every new run;
- ``rolled_back``: the previous version gets every new run again.

(Records without ``previous_version``, e.g. ``Mutation`` v1, fall back to the base version.)

The latest such transition of a workflow is its :class:`WorkflowRoute`. The split is
deterministic by run id (a sha256 point in [0, 1), as for node rollout,
:func:`processors.node_catalog.rollout.rollout_point`), so a run -- and a replay of it --
always lands on the same version while the route stays.

Versions registered by hand (through ``POST /v1/workflows``) still win, as before this
existed: when the newest version *not* registered by a proposal (``registered_by`` does not
start with ``mutation:``) is newer than every version the route names, the route is stale and
runs get that version. Versions registered by a proposal never become "latest" by themselves:
a scheduler that has read the new version but not yet the ``applied`` record keeps routing to
the base instead of sending everything to an untested version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from processors.node_catalog.rollout import rollout_point
from schemas.models import Mutation, MutationStatus

__all__ = [
    "MUTATION_REGISTRANT",
    "WorkflowRoute",
    "choose_workflow_version",
    "registered_by_mutation",
    "route_after",
    "route_for",
    "routing_point",
]

MUTATION_REGISTRANT: Final = "mutation:"
"""Prefix of ``WorkflowRegistered.registered_by`` for versions a proposal registered."""


@dataclass(frozen=True, slots=True)
class WorkflowRoute:
    """Shares of new runs per workflow version, newest version first; they sum to 1."""

    shares: tuple[tuple[int, float], ...]
    mutation_id: str

    @property
    def newest(self) -> int:
        return max(version for version, _ in self.shares)


def registered_by_mutation(registered_by: str | None) -> bool:
    return registered_by is not None and registered_by.startswith(MUTATION_REGISTRANT)


def route_after(record: Mutation) -> WorkflowRoute | None:
    """The route a lifecycle record sets, or ``None`` when it does not move traffic."""
    return route_for(
        record.mutation_id,
        record.status,
        base_version=record.base_version,
        applied_version=record.applied_version,
        previous_version=record.previous_version,
        canary_weight=record.canary_weight,
    )


def route_for(
    mutation_id: str,
    status: MutationStatus,
    *,
    base_version: int,
    applied_version: int | None,
    previous_version: int | None,
    canary_weight: float | None,
) -> WorkflowRoute | None:
    """:func:`route_after` from a proposal's columns (the API reads them from the read model)."""
    previous = previous_version or base_version
    if status is MutationStatus.APPLIED and applied_version is not None:
        weight = min(1.0, max(0.0, canary_weight or 0.0))
        return WorkflowRoute(((applied_version, weight), (previous, 1.0 - weight)), mutation_id)
    if status is MutationStatus.KEPT and applied_version is not None:
        return WorkflowRoute(((applied_version, 1.0),), mutation_id)
    if status in (MutationStatus.ROLLED_BACK, MutationStatus.REVERTED):
        return WorkflowRoute(((previous, 1.0),), mutation_id)
    return None


def routing_point(workflow_id: str, run_id: str) -> float:
    """``sha256(workflow, run_id)`` as a point in [0, 1), stable across processes."""
    return rollout_point(f"workflow:{workflow_id}", run_id)


def choose_workflow_version(
    workflow_id: str,
    run_id: str,
    route: WorkflowRoute | None,
    registered: Mapping[int, str | None],
) -> int | None:
    """The version run ``run_id`` gets; ``registered`` maps version -> ``registered_by``.

    ``None`` when nothing is registered (the scheduler then rejects the start as before).
    """
    if not registered and route is None:
        return None
    by_hand = [v for v, by in registered.items() if not registered_by_mutation(by)]
    latest = max(by_hand) if by_hand else (max(registered) if registered else None)
    if route is None or (latest is not None and latest > route.newest):
        return latest
    u = routing_point(workflow_id, run_id)
    accumulated = 0.0
    for version, share in route.shares[:-1]:
        accumulated += share
        if u < accumulated:
            return version
    return route.shares[-1][0]
