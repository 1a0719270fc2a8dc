"""One applier per event type: what the event does to the read models, as SQL statements.

Appliers are pure: they read the event and return a :class:`Plan`; executing it is the writer's
job (:mod:`projections.postgres.writer`). A plan has a *guard* and *updates*:

- for run-log events the guard inserts the ``run_events`` row with ``ON CONFLICT (run_id, seq)
  DO NOTHING``; the updates run only if that insert inserted. A redelivered event (lost offset
  commit, duplicate produce, replay after an offsets reset) therefore changes nothing, even though
  the row updates themselves (status flips, upserts) are not idempotent in general;
- for ``WorkflowRegistered`` the guard is the ``workflows`` insert itself (versions are
  immutable: the first registration of ``(workflow_id, version)`` wins);
- for ``NodeCatalogEntry`` the guard inserts its ``event_id`` into ``node_catalog_events``; the
  updates replace the version's ``node_versions`` row (later entries win, as on the compacted
  topic) and recompute ``nodes.latest_version``.

Because ``seq`` is gap-free and per-run order is preserved by the partitioning, updates can
simply overwrite with the event's values; ``last_seq`` says how far a run's row has got.

Status rules that are not obvious from the event names:

- ``StepScheduled`` / ``StepDispatched`` / ``StepRetryScheduled`` on a finished run (a re-driven
  step) move it back to ``running`` and clear ``finished_at``/``error``/``failed_step``/``outputs``
  (a paused run stays paused); ``RunResumed`` does the same, including after ``RunFailed``;
- ``RunCancelled`` also marks every step still in flight (scheduled, dispatched, running,
  retry_wait) as ``cancelled``: there is no per-step event for that;
- ``StepDispatched`` sets ``dispatched_at`` and clears ``started_at``; ``StepStarted`` (a worker
  started the attempt) makes the step ``running`` and sets ``started_at`` (the worker's clock) and
  ``worker``; ``StepTimeoutExtended`` (a heartbeat moved the scheduler's timer) only advances the
  run;
- ``StepTimedOut`` stores an error ``{"error_class": "StepTimedOut", ...}`` so a timed-out step
  has an error like a failed one (the event itself carries only the timeout);
- ``GraphMutated`` appends a ``run_mutations`` row (type, step, data, who and why) and rewrites
  ``runs.definition`` (set from ``RunStarted``) with ``reflux_apply_graph_mutation``, the SQL twin
  of ``workflows.mutations.apply_mutation`` (migration 004); ``remove_step`` deletes the step's
  row if it had one. Other step rows appear and change with the step events, which carry the
  (possibly replaced) node and version: an added step, like every pending step, has no row until
  it is scheduled;
- ``StepsReset`` (a re-drive from a step) deletes the reset steps' rows: a pending step has no
  row (as before its first ``StepScheduled``), and the run log keeps the old attempts;
- ``RunRebound`` sets the run's ``workflow_version`` and ``definition`` (later mutations apply to
  it); the steps it removes were pending (no row);
- ``CommandRejected`` changes no state: it advances ``last_seq`` but not ``updated_at``;
- ``ChildRunRequested`` (a meta.workflow / meta.loop step starts a child run) makes the step
  ``running`` with ``invocation_id`` = the child's run id; ``ChildRunEnded`` (a loop iteration
  ended) only advances the run. A child's ``RunStarted`` fills ``parent_*`` on its row.
- ``MapStarted`` makes a ``meta.map`` step ``running`` (a re-drive reopens the run);
  ``MapChunkDispatched`` / ``MapChunkFinished`` / ``MapChildEnded`` (a map over a sub-workflow:
  one item's child run ended) only advance the run (their rows are in
  ``run_events``).
- ``StepWaitStarted`` makes a ``meta.wait`` / ``meta.signal`` step ``running`` with no invocation
  and no worker (the scheduler waits; ADR 0057); a re-drive reopens the run. The wait ends with
  the usual ``StepSucceeded`` / ``StepFailed``.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import singledispatch
from typing import Any, Final

from psycopg.types.json import Jsonb

from foundation.errors import NonRetryableError
from projections.postgres.identifiers import table
from projections.postgres.statements import RunUpdate, Statement, StepUpsert, Update
from schemas.base import RefluxRecord
from schemas.models import (
    ChildRunEnded,
    ChildRunRequested,
    CommandRejected,
    GraphMutated,
    GraphMutationType,
    MapChildEnded,
    MapChunkDispatched,
    MapChunkFinished,
    MapStarted,
    NodeCatalogEntry,
    RunCancelled,
    RunFailed,
    RunPaused,
    RunRebound,
    RunResumed,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepFailed,
    StepRef,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepsReset,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    StepTimeoutExtended,
    StepWaitStarted,
    WorkflowRegistered,
)
from schemas.run_log import RUN_EVENT_TYPES
from schemas.statuses import ACTIVE_STEP_STATUSES, RunStatus, StepStatus

__all__ = [
    "NODE_EVENT_TYPES",
    "RUN_EVENT_TYPES",
    "WORKFLOW_EVENT_TYPES",
    "Plan",
    "Statement",
    "UnsupportedEventError",
    "Update",
    "jsonb",
    "plan",
]


WORKFLOW_EVENT_TYPES: Final[tuple[type[RefluxRecord], ...]] = (WorkflowRegistered,)

NODE_EVENT_TYPES: Final[tuple[type[RefluxRecord], ...]] = (NodeCatalogEntry,)
"""What the ``nodes`` topic carries (the node catalog)."""


def _sql_list(statuses: Iterable[str]) -> str:
    """``('a', 'b')``: statuses are our own identifiers, never input, so they are inlined."""
    return "(" + ", ".join(f"'{status}'" for status in statuses) + ")"


_IN_FLIGHT: Final = _sql_list(s for s in StepStatus if s in ACTIVE_STEP_STATUSES)


class UnsupportedEventError(NonRetryableError):
    """A decodable record this projection has no applier for (dead-lettered)."""

    error_class = "UnsupportedEvent"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one record does to the read models; see the module docstring."""

    guard: Statement
    """Claims the record: inserts one row on its first delivery, none on a redelivery."""
    updates: tuple[Update, ...] = ()
    """Run only when the guard claimed the record."""
    run_event: bool = False
    """The guard inserts the ``run_events`` row of ``guard.params``: the writer claims a batch's
    run events in one statement."""


def jsonb(value: Any) -> Jsonb | None:
    """A JSON value for a ``jsonb`` column; Python ``None`` (absent) becomes SQL NULL."""
    return None if value is None else Jsonb(value)


def _dump(model: RefluxRecord | None) -> Jsonb | None:
    return None if model is None else Jsonb(model.model_dump(mode="json"))


@singledispatch
def plan(event: RefluxRecord, schema: str) -> Plan:
    """The plan of one record; raises :class:`UnsupportedEventError` for unknown types."""
    projected = RUN_EVENT_TYPES + WORKFLOW_EVENT_TYPES + NODE_EVENT_TYPES
    raise UnsupportedEventError(
        f"Expected one of the projected event types "
        f"({', '.join(t.__name__ for t in projected)}), "
        f"but got {type(event).__name__}"
    )


# -- building blocks -------------------------------------------------------------------------


def _run_plan(event: Any, schema: str, *updates: Update) -> Plan:
    guard = Statement(
        f"INSERT INTO {table(schema, 'run_events')} "
        "(run_id, seq, event_type, event_id, occurred_at, payload) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, seq) DO NOTHING",
        (
            event.run_id,
            event.seq,
            type(event).__name__,
            event.event_id,
            event.occurred_at,
            Jsonb(event.model_dump(mode="json")),
        ),
    )
    return Plan(guard, updates, run_event=True)


def _update_run(event: Any, schema: str, **columns: Any) -> RunUpdate:
    """Set ``columns`` on the run's row and advance it to this event."""
    return RunUpdate(schema, event.run_id, event.seq, event.occurred_at, tuple(columns.items()))


def _reopen_run(event: Any, schema: str) -> RunUpdate:
    """Advance the run; a finished run becomes running again (re-drive), a paused one stays."""
    return RunUpdate(schema, event.run_id, event.seq, event.occurred_at, reopen=True)


def _upsert_step(
    event: Any,
    schema: str,
    step: StepRef,
    status: str,
    *,
    attempt: int | None,
    set_node: bool = False,
    **columns: Any,
) -> StepUpsert:
    """Insert the step's row or overwrite ``columns`` (plus status and attempt) on it.

    Columns not named keep their value on update and are NULL on insert, so an event that does
    not know a value (``invocation_id`` of a cache hit, ``attempt`` of a skip) passes nothing.
    ``node``/``node_version`` are overwritten only with ``set_node``: outcome events carry the
    version pinned by the definition, while the row shows the concrete version dispatched.
    A step is normally inserted by ``StepScheduled``; the insert path also makes the projection
    tolerate a log whose beginning was deleted.
    """
    insert: dict[str, Any] = {
        "node": step.node,
        "node_version": step.node_version,
        "status": status,
        "attempt": 0 if attempt is None else attempt,
        **columns,
        "updated_at": event.occurred_at,
    }
    overwrite = _overwritten(tuple(insert), set_node, attempt is not None)
    return StepUpsert(schema, event.run_id, step.step_id, tuple(insert.items()), overwrite)


@functools.lru_cache(maxsize=1024)
def _overwritten(names: tuple[str, ...], set_node: bool, attempt: bool) -> frozenset[str]:
    """The columns an upsert overwrites (one set per event type: cached, it is on the hot path)."""
    return frozenset(
        name
        for name in names
        if (set_node or name not in ("node", "node_version")) and (attempt or name != "attempt")
    )


# -- run lifecycle ---------------------------------------------------------------------------


@plan.register
def _(event: RunStarted, schema: str) -> Plan:
    insert = Statement(
        f"INSERT INTO {table(schema, 'runs')} (run_id, workflow_id, workflow_version, status, "
        "inputs, source, source_key, idempotency_key, deadline, started_at, updated_at, last_seq, "
        "parent_run_id, parent_step_id, parent_attempt, parent_iteration, definition, tenant) "
        f"VALUES (%s, %s, %s, '{RunStatus.RUNNING}', %s, %s, %s, %s, %s, %s, %s, %s, "
        "%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
        (
            event.run_id,
            event.workflow_id,
            event.workflow_version,
            jsonb(event.inputs),
            event.source,
            event.source_key,
            event.idempotency_key,
            event.deadline,
            event.occurred_at,
            event.occurred_at,
            event.seq,
            event.parent.run_id if event.parent else None,
            event.parent.step_id if event.parent else None,
            event.parent.attempt if event.parent else None,
            event.parent.iteration if event.parent else None,
            jsonb(event.definition),
            event.tenant,
        ),
        scope=("runs", event.run_id),
    )
    return _run_plan(event, schema, insert)


@plan.register
def _(event: RunPaused, schema: str) -> Plan:
    return _run_plan(event, schema, _update_run(event, schema, status=RunStatus.PAUSED))


@plan.register
def _(event: RunResumed, schema: str) -> Plan:
    update = _update_run(
        event,
        schema,
        status=RunStatus.RUNNING,
        finished_at=None,
        error=None,
        failed_step=None,
        outputs=None,
    )
    return _run_plan(event, schema, update)


@plan.register
def _(event: RunSucceeded, schema: str) -> Plan:
    update = _update_run(
        event,
        schema,
        status=RunStatus.SUCCEEDED,
        outputs=jsonb(event.outputs),
        error=None,
        failed_step=None,
        finished_at=event.occurred_at,
    )
    return _run_plan(event, schema, update)


@plan.register
def _(event: RunFailed, schema: str) -> Plan:
    update = _update_run(
        event,
        schema,
        status=RunStatus.FAILED,
        error=_dump(event.error),
        failed_step=event.failed_step.step_id if event.failed_step else None,
        finished_at=event.occurred_at,
    )
    return _run_plan(event, schema, update)


@plan.register
def _(event: RunCancelled, schema: str) -> Plan:
    cancel_steps = Statement(
        f"UPDATE {table(schema, 'steps')} SET status = '{StepStatus.CANCELLED}', finished_at = %s, "
        f"next_attempt_at = NULL, updated_at = %s WHERE run_id = %s AND status IN {_IN_FLIGHT}",
        (event.occurred_at, event.occurred_at, event.run_id),
        scope=("steps", event.run_id),
    )
    update = _update_run(event, schema, status=RunStatus.CANCELLED, finished_at=event.occurred_at)
    return _run_plan(event, schema, update, cancel_steps)


@plan.register
def _(event: GraphMutated, schema: str) -> Plan:
    mutation = event.mutation
    data = Jsonb(mutation.data)
    record = Statement(
        f"INSERT INTO {table(schema, 'run_mutations')} (run_id, seq, type, step_id, data, "
        "mutation_id, command_id, requested_by, reason, event_id, at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, seq) DO NOTHING",
        (
            event.run_id,
            event.seq,
            mutation.type.value,
            mutation.step_id,
            data,
            event.mutation_id,
            event.causation_id,
            event.requested_by,
            event.reason,
            event.event_id,
            event.occurred_at,
        ),
        scope=("run_mutations", event.run_id),
    )
    rewrite = Statement(
        f"UPDATE {table(schema, 'runs')} SET definition = "
        f"{table(schema, 'reflux_apply_graph_mutation')}(definition, %s, %s, %s) "
        "WHERE run_id = %s",
        (mutation.type.value, mutation.step_id, data, event.run_id),
        scope=("runs", event.run_id),
    )
    updates: list[Update] = [record, rewrite]
    if mutation.type is GraphMutationType.REMOVE_STEP:
        updates.append(
            Statement(
                f"DELETE FROM {table(schema, 'steps')} WHERE run_id = %s AND step_id = %s",
                (event.run_id, mutation.step_id),
                scope=("steps", event.run_id, mutation.step_id),
            )
        )
    return _run_plan(event, schema, *updates, _update_run(event, schema))


@plan.register
def _(event: StepsReset, schema: str) -> Plan:
    delete = Statement(
        f"DELETE FROM {table(schema, 'steps')} WHERE run_id = %s AND step_id = ANY(%s)",
        (event.run_id, list(event.step_ids)),
        scope=("steps", event.run_id),
    )
    return _run_plan(event, schema, delete, _update_run(event, schema))


@plan.register
def _(event: RunRebound, schema: str) -> Plan:
    update = _update_run(
        event,
        schema,
        workflow_version=event.workflow_version,
        definition=jsonb(event.definition),
    )
    return _run_plan(event, schema, update)


@plan.register
def _(event: CommandRejected, schema: str) -> Plan:
    # Advances last_seq but not updated_at: a rejection changes no state.
    return _run_plan(event, schema, RunUpdate(schema, event.run_id, event.seq, None))


# -- steps -----------------------------------------------------------------------------------


@plan.register
def _(event: StepScheduled, schema: str) -> Plan:
    # Scheduling starts the step afresh (a re-drive re-schedules a finished step).
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.SCHEDULED,
        attempt=event.attempt,
        set_node=True,
        params=jsonb(event.params),
        scheduled_at=event.occurred_at,
        dispatched_at=None,
        started_at=None,
        worker=None,
        next_attempt_at=None,
        finished_at=None,
        invocation_id=None,
        output=None,
        output_ref=None,
        error=None,
        skip_reason=None,
        cache_hit=None,
        duration_ms=None,
    )
    return _run_plan(event, schema, step, _reopen_run(event, schema))


@plan.register
def _(event: StepDispatched, schema: str) -> Plan:
    # Version 3 may schedule the step too (ADR 0075): what StepScheduled would have set.
    scheduling = (
        {"params": jsonb(event.params), "scheduled_at": event.occurred_at, "skip_reason": None}
        if event.scheduled
        else {}
    )
    step = _upsert_step(
        event,
        schema,
        StepRef(step_id=event.step.step_id, node=event.step.node, node_version=event.node_version),
        StepStatus.DISPATCHED,
        attempt=event.attempt,
        set_node=True,
        **scheduling,
        invocation_id=event.invocation_id,
        dispatched_at=event.occurred_at,
        started_at=None,
        worker=None,
        next_attempt_at=None,
        finished_at=None,
        output=None,
        output_ref=None,
        error=None,
        cache_hit=None,
        duration_ms=None,
    )
    return _run_plan(event, schema, step, _reopen_run(event, schema))


@plan.register
def _(event: StepStarted, schema: str) -> Plan:
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.RUNNING,
        attempt=event.attempt,
        invocation_id=event.invocation_id,
        started_at=event.started_at,
        worker=event.worker,
    )
    return _run_plan(event, schema, step, _update_run(event, schema))


_RunPositionOnly = (
    StepTimeoutExtended | ChildRunEnded | MapChunkDispatched | MapChunkFinished | MapChildEnded
)


@plan.register
def _(event: _RunPositionOnly, schema: str) -> Plan:
    # Events that change no step row, only the run's position (they are in run_events): a moved
    # timeout timer; a loop iteration that ended (the step keeps running, the iteration has its
    # own run row); map chunk bookkeeping (the step row changes with MapStarted and its outcome).
    return _run_plan(event, schema, _update_run(event, schema))


@plan.register
def _(event: StepSucceeded, schema: str) -> Plan:
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.SUCCEEDED,
        attempt=event.attempt,
        invocation_id=event.invocation_id,
        output=jsonb(event.output),
        output_ref=_dump(event.output_ref),
        cache_hit=event.cache_hit,
        duration_ms=event.duration_ms,
        error=None,
        next_attempt_at=None,
        finished_at=event.occurred_at,
    )
    return _run_plan(event, schema, step, _update_run(event, schema))


@plan.register
def _(event: StepFailed, schema: str) -> Plan:
    optional: dict[str, Any] = {"invocation_id": event.invocation_id} if event.invocation_id else {}
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.FAILED,
        attempt=event.attempt,
        error=_dump(event.error),
        next_attempt_at=None,
        finished_at=event.occurred_at,
        **optional,
    )
    return _run_plan(event, schema, step, _update_run(event, schema))


@plan.register
def _(event: StepRetryScheduled, schema: str) -> Plan:
    # The error of the failed attempt stays visible while the step waits for the next one.
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.RETRY_WAIT,
        attempt=event.attempt,
        next_attempt_at=event.next_attempt_at,
        finished_at=None,
    )
    return _run_plan(event, schema, step, _reopen_run(event, schema))


@plan.register
def _(event: StepTimedOut, schema: str) -> Plan:
    error = {
        "error_class": "StepTimedOut",
        "message": f"Attempt {event.attempt} exceeded its timeout of {event.timeout_ms} ms",
        "retryable": True,
    }
    optional: dict[str, Any] = {"invocation_id": event.invocation_id} if event.invocation_id else {}
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.TIMED_OUT,
        attempt=event.attempt,
        error=Jsonb(error),
        next_attempt_at=None,
        finished_at=event.occurred_at,
        **optional,
    )
    return _run_plan(event, schema, step, _update_run(event, schema))


@plan.register
def _(event: StepSkipped, schema: str) -> Plan:
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.SKIPPED,
        attempt=None,
        skip_reason=event.reason,
        next_attempt_at=None,
        finished_at=event.occurred_at,
    )
    return _run_plan(event, schema, step, _update_run(event, schema))


@plan.register
def _(event: ChildRunRequested, schema: str) -> Plan:
    # A child-run step (meta.workflow / meta.loop) runs while its child does; invocation_id
    # names the current child (each loop iteration's is its own run, linked by parent_*).
    first = event.iteration is None or event.iteration <= 1
    started: dict[str, Any] = {"started_at": event.occurred_at} if first else {}
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.RUNNING,
        attempt=event.attempt,
        invocation_id=event.child_run_id,
        **started,
    )
    return _run_plan(event, schema, step, _update_run(event, schema))


# -- meta.map (ADR 0024) ---------------------------------------------------------------------


@plan.register
def _(event: MapStarted, schema: str) -> Plan:
    # The map step runs in the scheduler: it is running from its start, with no invocation.
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.RUNNING,
        attempt=event.attempt,
        invocation_id=None,
        dispatched_at=event.occurred_at,
        started_at=event.occurred_at,
        worker=None,
        next_attempt_at=None,
        finished_at=None,
        output=None,
        output_ref=None,
        error=None,
        cache_hit=None,
        duration_ms=None,
    )
    return _run_plan(event, schema, step, _reopen_run(event, schema))


@plan.register
def _(event: StepWaitStarted, schema: str) -> Plan:
    # meta.wait / meta.signal (ADR 0057): running in the scheduler, no invocation, no worker.
    step = _upsert_step(
        event,
        schema,
        event.step,
        StepStatus.RUNNING,
        attempt=event.attempt,
        invocation_id=None,
        dispatched_at=None,
        started_at=event.occurred_at,
        worker=None,
        next_attempt_at=None,
        finished_at=None,
        output=None,
        output_ref=None,
        error=None,
        cache_hit=None,
        duration_ms=None,
    )
    return _run_plan(event, schema, step, _reopen_run(event, schema))


# -- workflows -------------------------------------------------------------------------------


@plan.register
def _(event: WorkflowRegistered, schema: str) -> Plan:
    return Plan(
        Statement(
            f"INSERT INTO {table(schema, 'workflows')} "
            "(workflow_id, version, definition, registered_at, registered_by, tenant) "
            "VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (workflow_id, version) DO NOTHING",
            (
                event.workflow_id,
                event.version,
                Jsonb(event.definition),
                event.registered_at,
                event.registered_by,
                event.tenant,
            ),
        )
    )


# -- node catalog ----------------------------------------------------------------------------
# The guard claims the entry's event_id; the updates replace the version's row with the entry
# (in log order: the compacted topic keeps the last entry per node@version, and these rows are
# that last entry), then recompute the node's latest version. Ids are uuid5, so a rebuild
# reproduces them. An entry that cannot name a version (bad name, semver or weight) is refused
# here and dead-lettered by the projector.

_CATALOG_NAMESPACE: Final = uuid.UUID("6f1c2a8e-3d0b-5c53-9a41-7e2f1b0c9d11")
_NODE_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")
_PG_INT_MAX: Final = 2**31 - 1
_SEMVER: Final = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")
# Semver order in SQL: numeric core, then a release after its pre-releases.
_SEMVER_ORDER: Final = (
    "string_to_array(split_part(version, '-', 1), '.')::int[] DESC, "
    "(strpos(version, '-') = 0) DESC, version DESC"
)


_NODES: Final = ("nodes",)
"""The scope of the catalog's statements: no run or step row."""


class InvalidCatalogEntryError(NonRetryableError):
    error_class = "InvalidCatalogEntry"


def node_id(name: str) -> uuid.UUID:
    return uuid.uuid5(_CATALOG_NAMESPACE, name)


def node_version_id(name: str, version: str) -> uuid.UUID:
    return uuid.uuid5(_CATALOG_NAMESPACE, f"{name}@{version}")


def node_category(name: str, manifest: Any) -> str:
    """The manifest's ``category`` when it has one, else the name's first segment (``http``)."""
    if isinstance(manifest, dict) and isinstance(manifest.get("category"), str):
        category: str = manifest["category"].strip()
        if category:
            return category
    return name.split(".", 1)[0]


def _check_entry(event: NodeCatalogEntry) -> None:
    problems = []
    if not _NODE_NAME.fullmatch(event.name):
        problems.append(f"a dotted lowercase node name, but got {event.name!r}")
    if not _SEMVER.fullmatch(event.version):
        problems.append(f"a semver version, but got {event.version!r}")
    elif any(int(part) > _PG_INT_MAX for part in event.version.split("-", 1)[0].split(".")):
        # _SEMVER_ORDER casts the parts to integer[]: a larger one fails the whole batch.
        problems.append(f"semver parts of at most {_PG_INT_MAX}, but got {event.version!r}")
    if not 0.0 <= event.rollout_weight <= 1.0:
        problems.append(f"a rollout weight between 0 and 1, but got {event.rollout_weight!r}")
    if problems:
        raise InvalidCatalogEntryError("Expected " + "; expected ".join(problems))


@plan.register
def _(event: NodeCatalogEntry, schema: str) -> Plan:
    _check_entry(event)
    nid = node_id(event.name)
    manifest = event.manifest if event.manifest is not None else {}
    guard = Statement(
        f"INSERT INTO {table(schema, 'node_catalog_events')} "
        "(event_id, name, version, occurred_at) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (event_id) DO NOTHING",
        (event.event_id, event.name, event.version, event.occurred_at),
    )
    node = Statement(
        f"INSERT INTO {table(schema, 'nodes')} "
        "(id, name, latest_version, category, created_at, updated_at, tenant) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) "
        # The name keeps the tenant of its first version (the API refuses another's).
        "ON CONFLICT (name) DO UPDATE SET category = EXCLUDED.category, "
        "updated_at = EXCLUDED.updated_at",
        (
            nid,
            event.name,
            event.version,
            node_category(event.name, manifest),
            event.occurred_at,
            event.occurred_at,
            event.tenant,
        ),
        scope=_NODES,
    )
    version = Statement(
        f"INSERT INTO {table(schema, 'node_versions')} "
        "(id, node_id, version, manifest, code_url, status, rollout_weight, created_at, "
        "updated_at, last_event_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (node_id, version) DO UPDATE SET manifest = EXCLUDED.manifest, "
        "code_url = EXCLUDED.code_url, status = EXCLUDED.status, "
        "rollout_weight = EXCLUDED.rollout_weight, updated_at = EXCLUDED.updated_at, "
        "last_event_id = EXCLUDED.last_event_id",
        (
            node_version_id(event.name, event.version),
            nid,
            event.version,
            Jsonb(manifest),
            event.code_uri,
            event.status.value,
            event.rollout_weight,
            event.occurred_at,
            event.occurred_at,
            event.event_id,
        ),
        scope=_NODES,
    )
    latest = Statement(
        f"UPDATE {table(schema, 'nodes')} SET latest_version = ("
        f"SELECT version FROM {table(schema, 'node_versions')} WHERE node_id = %s "
        f"ORDER BY {_SEMVER_ORDER} LIMIT 1) WHERE id = %s",
        (nid, nid),
        scope=_NODES,
    )
    return Plan(guard, (node, version, latest))
