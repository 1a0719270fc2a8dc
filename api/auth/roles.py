"""The roles and the route table: what each /v1 route needs (ADR 0046).

Roles are ordered: each includes every role below it (``admin`` > ``editor`` > ``operator`` >
``viewer``), so a key has exactly one role and a check is one comparison.

:data:`ROUTE_ACCESS` names every /v1 route (method + template) with the role it needs, or
:data:`SIGNED` for the webhook routes, which are authenticated by their HMAC signature instead
of a key. The app refuses to start with a /v1 route missing from it, and a unit test walks the
app's routes, so a new route cannot ship without a declared permission. The table is the one
place to read (and review) who may do what; docs/api.md shows it as a table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

__all__ = [
    "ROLE_RANK",
    "ROUTE_ACCESS",
    "SIGNED",
    "Access",
    "Role",
    "parse_role",
    "satisfies",
]


class Role(StrEnum):
    ADMIN = "admin"
    EDITOR = "editor"
    OPERATOR = "operator"
    VIEWER = "viewer"


ROLE_RANK: Final[dict[Role, int]] = {
    Role.VIEWER: 0,
    Role.OPERATOR: 1,
    Role.EDITOR: 2,
    Role.ADMIN: 3,
}

SIGNED: Final = "signed"
"""A webhook route: no key needed; the HMAC signature authenticates the sender (a key, when
sent, must be valid and at least ``operator``)."""

Access = Role | Literal["signed"]


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValueError(
            f"Expected a role of {[r.value for r in Role]}, but got {value!r}"
        ) from None


def satisfies(have: Role, need: Role) -> bool:
    return ROLE_RANK[have] >= ROLE_RANK[need]


_V, _O, _E, _A = Role.VIEWER, Role.OPERATOR, Role.EDITOR, Role.ADMIN

ROUTE_ACCESS: Final[dict[str, Access]] = {
    # workflows: editors register versions
    "POST /v1/workflows": _E,
    "POST /v1/workflows/validate": _E,
    "GET /v1/workflows": _V,
    "GET /v1/workflows/{workflow_id}": _V,
    "GET /v1/workflows/{workflow_id}/versions": _V,
    "GET /v1/workflows/{workflow_id}/versions/{version}": _V,
    "GET /v1/workflows/{workflow_id}/improvement": _V,
    "PUT /v1/workflows/{workflow_id}/improvement": _A,
    # runs: operators start and control them; editors change a run's graph or import a bundle
    "POST /v1/runs": _O,
    "GET /v1/runs": _V,
    "GET /v1/runs/{run_id}": _V,
    "GET /v1/runs/{run_id}/events": _V,
    "GET /v1/runs/{run_id}/state": _V,
    "GET /v1/runs/{run_id}/stream": _V,
    "GET /v1/runs/{run_id}/graph": _V,
    "GET /v1/runs/{run_id}/export": _V,
    "GET /v1/runs/{run_id}/payload": _V,
    "GET /v1/runs/{run_a}/diff/{run_b}": _V,
    "POST /v1/runs/import": _E,
    "POST /v1/runs/{run_id}/cancel": _O,
    "POST /v1/runs/{run_id}/pause": _O,
    "POST /v1/runs/{run_id}/resume": _O,
    "POST /v1/runs/{run_id}/steps/{step_id}/redrive": _O,
    "POST /v1/runs/{run_id}/rebind": _O,
    "POST /v1/runs/{run_id}/signals/{name}": _O,
    "POST /v1/runs/{run_id}/mutations": _E,
    "POST /v1/runs/{run_id}/feedback": _O,
    "GET /v1/runs/{run_id}/feedback": _V,
    # webhooks: HMAC-signed, see SIGNED
    "POST /v1/hooks/{workflow_id}": SIGNED,
    "POST /v1/hooks/runs/{run_id}/steps/{step_id}": SIGNED,
    # metrics, alerts, diagnoses: reads
    "GET /v1/metrics/nodes": _V,
    "GET /v1/metrics/workflows": _V,
    "GET /v1/metrics/failures": _V,
    "GET /v1/metrics/reliability": _V,
    "GET /v1/metrics/quality": _V,
    "GET /v1/metrics/retries": _V,
    "GET /v1/metrics/ingest": _V,
    "GET /v1/alerts": _V,
    "GET /v1/diagnoses": _V,
    "GET /v1/diagnoses/{diagnosis_id}": _V,
    "GET /v1/diagnoses/{diagnosis_id}/similar": _V,
    # the node catalog: admins
    "GET /v1/nodes": _V,
    "GET /v1/nodes/{name}/versions": _V,
    "GET /v1/nodes/{name}/versions/{version}": _V,
    "POST /v1/nodes": _A,
    "POST /v1/nodes/artifacts": _A,
    "POST /v1/nodes/{name}/versions/{version}/promote": _A,
    "POST /v1/nodes/{name}/versions/{version}/deprecate": _A,
    "PUT /v1/nodes/{name}/versions/{version}/rollout": _A,
    # the forge registers node versions (drafts): admins, like POST /v1/nodes
    "POST /v1/forge/openapi": _A,
    "POST /v1/forge/new": _A,
    # mutation proposals: editors propose, operators decide
    "GET /v1/mutations": _V,
    "GET /v1/mutations/{mutation_id}": _V,
    "POST /v1/mutations": _E,
    "POST /v1/mutations/{mutation_id}/approve": _O,
    "POST /v1/mutations/{mutation_id}/reject": _O,
    "POST /v1/mutations/{mutation_id}/keep": _O,
    "POST /v1/mutations/{mutation_id}/rollback": _O,
    # A/B replays: operators run them
    "POST /v1/replays": _O,
    "GET /v1/replays": _V,
    "GET /v1/replays/{replay_id}": _V,
    "GET /v1/replays/{replay_id}/events": _V,
    # schedules (ADR 0056): editors create and change them, viewers read them
    "POST /v1/schedules": _E,
    "GET /v1/schedules": _V,
    "GET /v1/schedules/{schedule_id}": _V,
    "DELETE /v1/schedules/{schedule_id}": _E,
    "POST /v1/schedules/{schedule_id}/pause": _E,
    "POST /v1/schedules/{schedule_id}/resume": _E,
    # identity and audit: admins
    "POST /v1/api-keys": _A,
    "GET /v1/api-keys": _A,
    "POST /v1/api-keys/{key_id}/rotate": _A,
    "DELETE /v1/api-keys/{key_id}": _A,
    "GET /v1/audit": _A,
    "GET /v1/me": _V,
    # the JSON Schemas of the public records (ADR 0054): the same for every tenant
    "GET /v1/schemas": _V,
    "GET /v1/schemas/{name}": _V,
}
