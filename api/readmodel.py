"""The API's view of the projections: async look-ups for waiting routes and the explicit mapping
from read-model rows to Public models (rows never reach a response as they are)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from api.db import with_conn
from api.models.runs import ChildRunPublic, RunDetail, RunEventPublic, RunPublic, StepPublic
from api.models.workflows import WorkflowVersionPublic
from projections.postgres import queries
from projections.postgres.queries import RunEventRow, RunRow, StepRow, WorkflowRow
from schemas.run_log import TERMINAL_RUN_EVENT_TYPES
from workflows.meta import MAP_NODE
from workflows.meta_children import CHILD_RUN_NODES

__all__ = [
    "TERMINAL_EVENTS",
    "ReadModel",
    "event_public",
    "run_detail",
    "run_public",
    "step_public",
    "workflow_version_public",
]

TERMINAL_EVENTS = frozenset(event.__name__ for event in TERMINAL_RUN_EVENT_TYPES)
"""``run_events.event_type`` of the events that end a run (:mod:`schemas.run_log`)."""


def run_public(row: RunRow) -> RunPublic:
    return RunPublic.model_validate(row, from_attributes=True)


def step_public(row: StepRow) -> StepPublic:
    return StepPublic.model_validate(row, from_attributes=True)


def run_detail(row: RunRow, steps: list[StepRow], children: Sequence[RunRow] = ()) -> RunDetail:
    return RunDetail(
        **run_public(row).model_dump(),
        steps=[step_public(step) for step in steps],
        children=[child_public(child) for child in children],
    )


def child_public(row: RunRow) -> ChildRunPublic:
    return ChildRunPublic(
        run_id=row.run_id,
        workflow_id=row.workflow_id,
        workflow_version=row.workflow_version,
        status=row.status,  # type: ignore[arg-type]
        step_id=row.parent_step_id,
        attempt=row.parent_attempt,
        iteration=row.parent_iteration,
    )


def event_public(row: RunEventRow) -> RunEventPublic:
    return RunEventPublic.model_validate(row, from_attributes=True)


def workflow_version_public(row: WorkflowRow) -> WorkflowVersionPublic:
    return WorkflowVersionPublic.model_validate(row, from_attributes=True)


def load_run_detail(conn: psycopg.Connection[Any], run_id: str, *, schema: str) -> RunDetail | None:
    row = queries.get_run(conn, run_id, schema=schema)
    if row is None:
        return None
    steps = queries.get_steps(conn, run_id, schema=schema)
    # Only a run with a child-run step (or a map, whose items may be child runs) can have
    # children: others skip the look-up.
    has_children = any(step.node in CHILD_RUN_NODES or step.node == MAP_NODE for step in steps)
    children = queries.get_children(conn, run_id, schema=schema) if has_children else []
    return run_detail(row, steps, children)


class ReadModel:
    """Async access to the read models for routes that poll them."""

    def __init__(self, pool: ConnectionPool[Any], schema: str, timeout: float) -> None:
        self.pool = pool
        self.schema = schema
        self.timeout = timeout

    async def run(self, run_id: str) -> RunRow | None:
        return await with_conn(self.pool, self.timeout, queries.get_run, run_id, schema=self.schema)

    async def run_detail(self, run_id: str) -> RunDetail | None:
        return await with_conn(self.pool, self.timeout, load_run_detail, run_id, schema=self.schema)

    async def events(self, run_id: str, after_seq: int, limit: int = 1000) -> list[RunEventRow]:
        return await with_conn(
            self.pool,
            self.timeout,
            queries.get_events,
            run_id,
            after_seq,
            limit,
            schema=self.schema,
        )

    async def workflow(self, workflow_id: str, version: int | None = None) -> WorkflowRow | None:
        return await with_conn(
            self.pool, self.timeout, queries.get_workflow, workflow_id, version, schema=self.schema
        )
