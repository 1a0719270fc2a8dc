"""The A/B replay engine: recorded runs' inputs re-run by a candidate on shadow topics and state.

A :class:`ShadowReplay` owns one shadow engine (its own topic prefix ``replay-<id>``, consumer
groups, Postgres schema and Redis cache namespace). Nodes that declare side effects are never
called again: they are answered from the original run's record (:mod:`processors.replay.recorded`)
or by the :class:`EffectPolicy`. docs/replay.md, docs/decisions/0029-shadow-replay.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Protocol

import jmespath
import jmespath.exceptions
import psycopg
import redis
from confluent_kafka import KafkaError, KafkaException

from foundation.errors import NonRetryableError
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from node_workers.registry import NodeRegistry, default_registry
from processors.replay.artifacts import UnservedPinError, pinned_artifacts, unserved_pins
from processors.replay.fold import (
    FoldReplay,
    FoldSink,
    catalog_resolver,
    default_processes,
    fold_partitioned,
    fold_unsupported,
)
from processors.replay.pace import Pace, peak_in_flight
from processors.replay.recorded import RecordedResults, ServedLog, shadow_registry
from processors.scheduler.decide import RegisteredWorkflow
from projections.postgres import queries
from projections.postgres.identifiers import quote_schema, table
from schemas import models, serde
from schemas.models import StartRun, WorkflowRegistered
from streams.admin import admin_client, create_missing_topics
from streams.consumer import Consumer
from streams.producer import TYPE_HEADER, Producer
from streams.topics import TopicCatalog, TopicCatalogError
from workflows import parse_workflow
from workflows.model import WorkflowDefinition
from workflows.node_catalog import default_resolve_node_version

EffectMode = Literal["record", "stub", "skip", "live"]
ReplayMode = Literal["auto", "fold", "engine"]
Served = Literal["executed", "record", "stub", "skip", "live"]


@dataclass(frozen=True)
class Selection:
    """Which recorded runs to replay (read from the production read model)."""

    workflow_id: str
    workflow_version: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None
    # JMESPath on the run's inputs; a truthy result selects the run.
    inputs_filter: str | None = None
    # The newest ``sample_size`` matching runs (deterministic: ordered by start, then run id).
    sample_size: int = 100


@dataclass(frozen=True)
class Candidate:
    """What replays the inputs: a registered version, or a definition (e.g. a proposal's)."""

    workflow_version: int | None = None
    definition: dict[str, Any] | None = None
    mutation_id: str | None = None  # informational, for reports
    node_pins: Mapping[str, str] = field(default_factory=dict)  # node name -> exact version


@dataclass(frozen=True)
class EffectPolicy:
    """How side-effecting nodes are answered; "record" (the default) serves the original's
    result matched by step id + params hash and fails the step (``ReplayNoRecord``) when none
    matches. "stub" answers with ``stubs[node]``, "skip" with a null output, "live" calls it."""

    per_node: Mapping[str, EffectMode] = field(default_factory=dict)
    stubs: Mapping[str, Any] = field(default_factory=dict)
    pace: Pace = "free"
    """Fold mode: ``free`` folds every run at once; ``recorded`` admits at most as many runs at
    once as the originals had in flight, so re-executed calls meet the load they met then
    (:mod:`processors.replay.pace`; what a proposal's latency comparison needs)."""

    def mode(self, node: str) -> EffectMode:
        return self.per_node.get(node, "record")


@dataclass(frozen=True)
class StepOutcome:
    step_id: str
    status: str
    attempts: int
    duration_ms: float | None
    output: Any
    served: Served
    tokens: int | None
    calls: int
    ended_at_ms: float | None = None
    """When the step's successful attempt ended (its ``StepSucceeded``'s time, epoch ms; None
    when it did not succeed): with ``duration_ms``, the interval it ran in, which says which
    steps of a run ran at the same time (:func:`processors.replay.report.work_latencies`)."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str
    outputs: Any
    error_class: str | None
    duration_ms: float | None
    steps: Mapping[str, StepOutcome]


@dataclass(frozen=True)
class ReplayPair:
    original: RunOutcome
    candidate: RunOutcome


# -- outcomes (pure: from a run's event models) -------------------------------------------------

_STEP_END = {
    "StepSucceeded": "succeeded",
    "StepFailed": "failed",
    "StepSkipped": "skipped",
    "StepTimedOut": "timed_out",
}
_RUN_END = {"RunSucceeded": "succeeded", "RunFailed": "failed", "RunCancelled": "cancelled"}


def run_outcome(
    run_id: str,
    events: Sequence[Any],
    *,
    served: Callable[[str], tuple[Served, int]] | None = None,
    tokens: Callable[[str], int | None] | None = None,
) -> RunOutcome:
    """A run's outcome from its event log (event models in seq order).

    ``served(step_id)`` says how a shadow step was answered and how many calls reached a real
    node; without it (an original run) every step was executed and each non-cached attempt was
    a call. ``tokens(step_id)``: the LLM tokens its executed attempts reported (originals: None,
    the read model does not hold them)."""
    status = "running"
    outputs: Any = None
    error_class: str | None = None
    duration_ms: float | None = None
    first_at = events[0].occurred_at if events else None
    steps: dict[str, dict[str, Any]] = {}
    for event in events:
        name = type(event).__name__
        step = getattr(event, "step", None)
        if step is not None and name.startswith("Step"):
            row = steps.setdefault(
                step.step_id,
                {
                    "status": "scheduled",
                    "attempts": 0,
                    "duration_ms": None,
                    "ended_at_ms": None,
                    "output": None,
                    "cache_hit": False,
                    "node": step.node,
                },
            )
            attempt = getattr(event, "attempt", None)
            if isinstance(attempt, int):
                row["attempts"] = max(row["attempts"], attempt)
            if name in _STEP_END:
                row["status"] = _STEP_END[name]
            if name == "StepSucceeded":
                row["output"] = event.output
                row["duration_ms"] = event.duration_ms
                row["ended_at_ms"] = event.occurred_at.timestamp() * 1000
                row["cache_hit"] = bool(event.cache_hit)
            elif name == "StepFailed":
                row["output"] = None
        if name in _RUN_END:
            status = _RUN_END[name]
            if name == "RunSucceeded":
                outputs = event.outputs
                duration_ms = event.duration_ms
            elif name == "RunFailed":
                error_class = event.error.error_class
        if name == "RunPaused":
            status = "paused"
        elif name == "RunResumed":
            status = "running"
    if duration_ms is None and first_at is not None and status != "running":
        duration_ms = (events[-1].occurred_at - first_at).total_seconds() * 1000
    outcomes: dict[str, StepOutcome] = {}
    for step_id, row in steps.items():
        if served is not None:
            how, calls = served(step_id)
        else:
            how, calls = "executed", (0 if row["cache_hit"] else row["attempts"])
        outcomes[step_id] = StepOutcome(
            step_id=step_id,
            status=row["status"],
            attempts=row["attempts"],
            duration_ms=None if row["duration_ms"] is None else float(row["duration_ms"]),
            output=row["output"],
            served=how,
            tokens=None if tokens is None else tokens(step_id),
            calls=calls,
            ended_at_ms=row["ended_at_ms"],
        )
    return RunOutcome(
        run_id=run_id,
        status=status,
        outputs=outputs,
        error_class=error_class,
        duration_ms=None if duration_ms is None else float(duration_ms),
        steps=outcomes,
    )


def pin_nodes(definition: dict[str, Any], pins: Mapping[str, str]) -> dict[str, Any]:
    """The definition with every reference to a pinned node replaced by its exact version
    (``"http.request@^1"`` -> ``"http.request@1.2.0"``), nested steps included."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: walk(v) for k, v in value.items()}
            node = out.get("node")
            if isinstance(node, str) and node.partition("@")[0] in pins:
                out["node"] = f"{node.partition('@')[0]}@{pins[node.partition('@')[0]]}"
            return out
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    result = walk(definition)
    assert isinstance(result, dict)
    return result


# -- the engine ---------------------------------------------------------------------------------

OUTCOME_UNUSED: Final = ("StepDispatched",)
"""Event types neither :func:`run_outcome` nor the records need (a dispatch repeats its
StepScheduled's step and attempt): a third of a recorded log, not read in fold mode. A
``StepDispatched`` that schedules its step (version 3, ADR 0075) is read all the same."""

_REPLAY_ID = re.compile(r"^[a-z0-9][a-z0-9_]{0,30}$")
_TERMINAL = ("succeeded", "failed", "cancelled")


class ReplayError(NonRetryableError):
    """Bad replay input; the message names the field."""

    error_class = "InvalidReplay"


class ShadowEngine(Protocol):
    """What the replay needs of an engine (``reflux.dev.DevEngine`` is one)."""

    catalog: TopicCatalog

    def start(self) -> Any: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def errors(self) -> dict[str, list[BaseException]]: ...


EngineFactory = Callable[[Settings, NodeRegistry, str, bool], ShadowEngine]
"""(shadow settings, nodes, read-model schema, register nodes in the catalog) -> an engine."""


def dev_engine(
    settings: Settings, nodes: NodeRegistry, schema: str, register_nodes: bool
) -> ShadowEngine:
    """The project's own engine, every component in this process (no trigger router and no
    mutation processor: nothing in a replay fires triggers or proposes mutations).

    Bound at run time: ``reflux`` (the edge that composes the engine) sits above ``processors``
    in the package layers, and the replay package is shared with lower-level modules; the
    engine is the one thing it takes from the edge (docs/decisions/0029-shadow-replay.md)."""
    engine_class = importlib.import_module("reflux.dev").DevEngine
    switches: dict[str, Any] = {
        "trigger_router": False,
        "mutation_processor": False,
        # Outcomes are read from the shadow run log itself: no read model to write.
        "projector": False,
    }
    if "replay_runner" in inspect.signature(engine_class).parameters:
        switches["replay_runner"] = False  # a shadow never starts replays of its own
    engine: ShadowEngine = engine_class(
        settings, nodes=nodes, schema=schema, register_nodes=register_nodes, **switches
    )
    return engine


def load_runs_events(
    conn: psycopg.Connection[Any],
    schema: str,
    run_ids: Sequence[str],
    page: int = 500,
    *,
    skip: Sequence[str] = (),
) -> dict[str, list[Any]]:
    """Several runs' projected logs as event models in seq order, keyed by run id (every id
    given has an entry, empty when the read model has no log). One query per ``page`` runs:
    a query per run cost 1,000 round trips for a 1,000-run replay. ``skip``: event types not
    read (their rows are neither fetched nor parsed)."""
    out: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
    wanted = list(out)
    by_type: dict[str, Any] = {}  # event type name -> its model class
    for start in range(0, len(wanted), page):
        chunk = wanted[start : start + page]
        rows = conn.execute(
            # As text: pydantic parses the JSON itself (in Rust), much faster than psycopg's
            # json.loads followed by validating the resulting dicts.
            f"SELECT run_id, event_type, payload::text FROM {table(schema, 'run_events')} "
            "WHERE run_id = ANY(%s) AND (event_type <> ALL(%s) "
            # A dispatch that schedules its step (ADR 0075) is a StepScheduled too: kept.
            "OR (event_type = 'StepDispatched' AND payload->>'scheduled' = 'true')) "
            "ORDER BY run_id, seq",
            (chunk, list(skip)),
        ).fetchall()
        for run_id, event_type, payload in rows:
            model = by_type.get(event_type)
            if model is None:
                model = by_type[event_type] = getattr(models, event_type)
            out[str(run_id)].append(model.model_validate_json(payload))
    return out


@dataclass(frozen=True)
class RunHead:
    """What a replay needs of a recorded run before its log: its RunStarted's fields but the
    definition (parsed only where it is needed), and whether its log holds a run end."""

    run_id: str
    workflow_id: str
    workflow_version: int
    inputs: Any
    idempotency_key: str | None
    source: str
    source_key: str | None
    finished: bool
    tenant: str = DEFAULT_TENANT


def load_run_heads(
    conn: psycopg.Connection[Any], schema: str, run_ids: Sequence[str]
) -> dict[str, RunHead | None]:
    """Each run's head (None: its log does not start with a RunStarted); one query, without
    reading the rest of the logs nor parsing a definition per run."""
    out: dict[str, RunHead | None] = dict.fromkeys(run_ids)
    events = table(schema, "run_events")
    rows = conn.execute(
        "SELECT e.run_id, e.payload->>'workflow_id', (e.payload->>'workflow_version')::int, "
        "e.payload->'inputs', e.payload->>'idempotency_key', e.payload->>'source', "
        f"e.payload->>'source_key', COALESCE(e.payload->>'tenant', '{DEFAULT_TENANT}'), "
        f"EXISTS (SELECT 1 FROM {events} f "
        "WHERE f.run_id = e.run_id AND f.event_type = ANY(%s)) "
        f"FROM {events} e WHERE e.run_id = ANY(%s) AND e.seq = 0 "
        "AND e.event_type = 'RunStarted'",
        (list(_RUN_END), list(out)),
    ).fetchall()
    for run_id, workflow_id, version, inputs, key, source, source_key, tenant, finished in rows:
        out[str(run_id)] = RunHead(
            run_id=str(run_id),
            workflow_id=workflow_id,
            workflow_version=int(version),
            inputs=inputs,
            idempotency_key=key,
            source=source,
            source_key=source_key,
            finished=bool(finished),
            tenant=str(tenant),
        )
    return out


def load_started_definition(
    conn: psycopg.Connection[Any], schema: str, run_id: str
) -> dict[str, Any]:
    """The definition a recorded run started with (its RunStarted's)."""
    row = conn.execute(
        f"SELECT payload::text FROM {table(schema, 'run_events')} WHERE run_id = %s AND seq = 0",
        (run_id,),
    ).fetchone()
    if row is None:
        raise ReplayError(f"run_ids: run {run_id!r} has no recorded log in {schema}")
    return dict(models.RunStarted.model_validate_json(row[0]).definition)


def load_events(conn: psycopg.Connection[Any], schema: str, run_id: str) -> list[Any]:
    """A run's projected log as event models, in seq order."""
    rows: list[Any] = []
    after = -1
    while True:
        page = queries.get_events(conn, run_id, after, schema=schema)
        for row in page:
            rows.append(getattr(models, row.event_type).model_validate(row.payload))
        if len(page) < 1000:
            return rows
        after = page[-1].seq


class ShadowLogSink:
    """Fold mode's shadow run log: every event Avro-encoded once and produced to the shadow
    ``runs`` topic keyed by run id (the producer batches them); ``keep`` also keeps the bytes
    per run (a fold process hands them back instead of the models)."""

    def __init__(self, settings: Settings, topic: str, client_id: str, *, keep: bool) -> None:
        self.producer = Producer(
            settings,
            client_id=client_id,
            config={"linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4"},
        )
        self.topic = topic
        self.keep = keep
        self.encoded: dict[str, list[bytes]] = {}

    def write(self, events: Sequence[Any]) -> None:
        for event in events:
            data = serde.encode(event)
            self.producer.send(self.topic, event.run_id, data, {TYPE_HEADER: event.AVRO_NAME})
            if self.keep:
                self.encoded.setdefault(event.run_id, []).append(data)

    def close(self) -> None:
        try:
            self.producer.flush(60)
        finally:
            self.producer.close()


@dataclass
class _FoldedPart:
    """What one fold process hands back: outcomes, and the logs as models (this process) or
    as the Avro records written (a child), with how its steps were served (a child's copy)."""

    outcomes: dict[str, RunOutcome]
    originals: dict[str, RunOutcome]
    models: dict[str, list[Any]] = field(default_factory=dict)
    encoded: dict[str, list[bytes]] = field(default_factory=dict)
    served: tuple[dict[Any, Any], dict[Any, Any], dict[Any, Any]] | None = None


class ShadowReplay:
    """Context manager; :meth:`close` removes the shadow topics, groups, schema, cache keys.

    ``schema``: the production read models' Postgres schema (where recorded runs are read);
    ``nodes``: the node versions the shadow workers serve (default: the built-in ones); a
    candidate's pins to catalogued artifact versions are served besides them, per round
    (:mod:`processors.replay.artifacts`)."""

    def __init__(
        self,
        settings: Settings,
        replay_id: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        schema: str = "reflux",
        nodes: NodeRegistry | None = None,
        timeout_s: float | None = None,
        engine_factory: EngineFactory = dev_engine,
        mode: ReplayMode = "auto",
        processes: int | None = None,
    ) -> None:
        if not _REPLAY_ID.fullmatch(replay_id):
            raise ReplayError(
                f"replay_id: expected 1-31 lowercase letters, digits or '_', but got {replay_id!r}"
            )
        self.settings = settings
        self.replay_id = replay_id
        self.progress = progress
        self.schema = schema
        self.nodes = nodes or default_registry()
        self.timeout_s = timeout_s
        self.engine_factory = engine_factory
        if mode not in ("auto", "fold", "engine"):
            raise ReplayError(f"mode: expected auto, fold or engine, but got {mode!r}")
        # "auto": fold in-process when the candidate allows it and no engine_factory was given,
        # else the shadow engine (docs/decisions/0036-replay-fold-mode.md).
        self.mode = mode
        self.last_mode: ReplayMode | None = None
        # The recorded runs' tenant (set per round from their RunStarted).
        self._tenant: str = DEFAULT_TENANT
        # Fold mode: processes folding the runs (None: one per core, at least 100 runs each).
        self.processes = processes
        self.last_processes = 0  # how many fold processes the last round used (0: engine mode)
        # Fold mode: the runs folded at once per process in the last round (None: all).
        self.last_runs_in_flight: int | None = None
        # Every shadow prefix/schema starts with these; close() removes all of them.
        self.prefix_root = f"{settings.topic_prefix}-replay-{replay_id}"
        self.schema_root = f"replay_{replay_id}"
        self._rounds = 0
        self._prefixes: list[str] = []
        self._schemas: list[str] = []
        self._engine: ShadowEngine | None = None
        self.served = ServedLog()
        # The last round's shadow settings/schema (for events of candidate runs).
        self.shadow_settings: Settings | None = None
        self.shadow_schema: str | None = None
        self._candidate_logs: dict[str, list[Any]] = {}
        self._candidate_encoded: dict[str, list[bytes]] = {}
        self.timings: dict[str, float] = {}
        # Fold mode, the last round: fork_s, and the slowest part's prepare_s (its original
        # logs), fold_s and finish_s (outcomes), then merge_s (the parts' answers combined).
        self.fold_timings: dict[str, float] = {}

    # -- selection --------------------------------------------------------------------------

    def select(self, selection: Selection) -> list[str]:
        """Original run ids, newest first, at most ``selection.sample_size`` (deterministic:
        ordered by start time, then run id)."""
        if selection.sample_size < 1:
            raise ReplayError(
                f"selection.sample_size: expected at least 1, but got {selection.sample_size}"
            )
        expression = None
        if selection.inputs_filter:
            try:
                expression = jmespath.compile(selection.inputs_filter)
            except jmespath.exceptions.JMESPathError as exc:
                raise ReplayError(f"selection.inputs_filter: {exc}") from exc
        args: list[Any] = [selection.workflow_id]
        where = ["workflow_id = %s"]
        if selection.workflow_version is not None:
            where.append("workflow_version = %s")
            args.append(selection.workflow_version)
        if selection.since is not None:
            where.append("started_at >= %s")
            args.append(selection.since)
        if selection.until is not None:
            where.append("started_at < %s")
            args.append(selection.until)
        if selection.status is not None:
            where.append("status = %s")
            args.append(selection.status)
        else:
            where.append("status = ANY(%s)")
            args.append(list(_TERMINAL))
        sql = (
            f"SELECT run_id, inputs FROM {table(self.schema, 'runs')} "
            f"WHERE {' AND '.join(where)} ORDER BY started_at DESC, run_id DESC"
        )
        chosen: list[str] = []
        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            for run_id, inputs in conn.execute(sql, args):
                if expression is not None and not expression.search(inputs or {}):
                    continue
                chosen.append(str(run_id))
                if len(chosen) >= selection.sample_size:
                    break
        return chosen

    # -- running ----------------------------------------------------------------------------

    def run(
        self,
        run_ids: Sequence[str],
        candidate: Candidate,
        policy: EffectPolicy = EffectPolicy(),
    ) -> list[ReplayPair]:
        """Replay each run's inputs with the candidate; one pair per run id, in order.
        ``progress(done, total)`` is called as candidate runs finish."""
        self._check(candidate, policy)
        began = time.monotonic()
        # Pins no compiled node serves: catalogued artifact versions (a forge draft), served by
        # the artifact worker's code path for this round (processors/replay/artifacts.py).
        tenant = None
        if run_ids and unserved_pins(self.nodes, candidate.node_pins):
            # Served only from the recorded runs' tenant's artifacts and the platform's.
            with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
                head = load_run_heads(conn, self.schema, run_ids[:1])[run_ids[0]]
            tenant = head.tenant if head is not None else None
        try:
            pinned = pinned_artifacts(self.settings, self.nodes, candidate.node_pins, tenant=tenant)
        except UnservedPinError as exc:
            raise ReplayError(str(exc)) from exc
        try:
            if not run_ids:
                return []
            pinned.preload()
            return self._run_round(run_ids, candidate, policy, pinned.registry(self.nodes), began)
        finally:
            pinned.close()

    def _run_round(
        self,
        run_ids: Sequence[str],
        candidate: Candidate,
        policy: EffectPolicy,
        nodes: NodeRegistry,
        began: float,
    ) -> list[ReplayPair]:
        settings, shadow_schema = self._new_round()
        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            # Each run's RunStarted (inputs, version, definition) and whether it finished: the
            # whole logs are read where they are needed (fold mode: in each fold process).
            heads = load_run_heads(conn, self.schema, run_ids)
            started: dict[str, RunHead] = {}
            for run_id, head in heads.items():
                if head is None:
                    raise ReplayError(
                        f"run_ids: run {run_id!r} has no recorded log in {self.schema}"
                    )
                if not head.finished:
                    # Its record is incomplete: side effects it has yet to make have no record.
                    raise ReplayError(f"run_ids: run {run_id!r} has not finished")
                started[run_id] = head
            workflow_id = started[run_ids[0]].workflow_id
            # The shadow runs in the recorded runs' tenant: its live nodes get that tenant's
            # secrets and egress lists, never the platform's.
            self._tenant = started[run_ids[0]].tenant
            version, definition = self._candidate_definition(conn, workflow_id, candidate, started)
            # Versions resolve as in production: through a node catalog when production has one
            # (the shadow workers publish theirs to the shadow catalog), else by constraint.
            catalogued = conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM {table(self.schema, 'node_versions')})"
            ).fetchone()
            register_nodes = bool(catalogued and catalogued[0]) or bool(candidate.node_pins)
        records = RecordedResults()
        served = self.served = ServedLog()
        registry = shadow_registry(
            nodes, records, served, modes=policy.per_node, stubs=policy.stubs
        )
        parsed = parse_workflow(definition)
        starts = [
            StartRun(
                run_id=run_id,
                workflow_id=parsed.id,
                workflow_version=version,
                inputs=started[run_id].inputs,
                idempotency_key=started[run_id].idempotency_key,
                source=started[run_id].source,
                source_key=started[run_id].source_key,
                reason=f"replay {self.replay_id}",
            )
            for run_id in run_ids
        ]
        loaded = time.monotonic()
        unfoldable = fold_unsupported(parsed)
        if self.mode == "fold" and unfoldable is not None:
            raise ReplayError(f"candidate: cannot be replayed in fold mode: {unfoldable}")
        fold = self.mode == "fold" or (
            self.mode == "auto" and unfoldable is None and self.engine_factory is dev_engine
        )
        self.last_mode = "fold" if fold else "engine"
        self.last_processes = 0
        self.last_runs_in_flight = None
        self.fold_timings = {}
        self._candidate_logs, self._candidate_encoded = {}, {}
        if fold:
            candidates, originals, ready = self._fold(
                pace=policy.pace,
                settings=settings,
                registry=registry,
                records=records,
                served=served,
                parsed=parsed,
                version=version,
                starts=starts,
                register_nodes=register_nodes,
            )
        else:
            with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
                logs = load_runs_events(conn, self.schema, run_ids)
            for run_id, events in logs.items():
                records.add_run(run_id, events)
            originals = {run_id: run_outcome(run_id, events) for run_id, events in logs.items()}
            loaded = time.monotonic()
            logs, ready = self._run_engine(
                settings=settings,
                registry=registry,
                shadow_schema=shadow_schema,
                register_nodes=register_nodes,
                parsed=parsed,
                version=version,
                starts=starts,
            )
            self._candidate_logs = logs
            candidates = {
                run_id: run_outcome(
                    run_id,
                    logs[run_id],
                    served=functools.partial(served.get, run_id),
                    tokens=functools.partial(served.tokens_of, run_id),
                )
                for run_id in run_ids
            }
        pairs = [
            ReplayPair(original=originals[run_id], candidate=candidates[run_id])
            for run_id in run_ids
        ]
        # Where a replay's time goes (the benchmark reports it).
        self.timings = {
            "load_originals_s": loaded - began,
            "start_engine_s": ready - loaded,
            "runs_s": time.monotonic() - ready,
        }
        return pairs

    def _fold(
        self,
        *,
        pace: Pace = "free",
        settings: Settings,
        registry: NodeRegistry,
        records: RecordedResults,
        served: ServedLog,
        parsed: WorkflowDefinition,
        version: int,
        starts: Sequence[StartRun],
        register_nodes: bool,
    ) -> tuple[dict[str, RunOutcome], dict[str, RunOutcome], float]:
        """Fold mode (:mod:`processors.replay.fold`): the runs folded with the scheduler's pure
        core, in one process per core, their logs written to the shadow ``runs`` topic."""
        catalog = TopicCatalog.from_settings(settings)

        def invoke_topic(node: str, major: int) -> str:
            try:
                return catalog.invoke_topic(node, major).topic
            except TopicCatalogError as exc:
                raise NonRetryableError(
                    f"Expected node {node!r} v{major} to have an invoke topic, but {exc}",
                    error_class="NodeUnavailable",
                ) from exc

        blobs: list[Any] = []

        def blob_store() -> Any:
            if not blobs:  # created on first use, as the runtime does (S3 client start-up)
                blobs.append(
                    importlib.import_module("foundation.objectstore").S3BlobStore(settings)
                )
            return blobs[0]

        folder = FoldReplay(
            settings=settings,
            nodes=registry,
            workflow=RegisteredWorkflow(version, parsed, self._tenant),
            workflow_id=parsed.id,
            invoke_topic=invoke_topic,
            resolve_node_version=catalog_resolver(registry)
            if register_nodes
            else default_resolve_node_version,
            blobs=blob_store,
        )
        parent = os.getpid()
        client_id = f"replay-{self.replay_id}"

        def new_sink() -> ShadowLogSink:
            return ShadowLogSink(
                settings, catalog.runs.topic, client_id, keep=os.getpid() != parent
            )

        def prepare(part: Sequence[StartRun]) -> dict[str, RunOutcome]:
            """A part's original logs, read where it is folded (in parallel when in processes):
            its records for the stand-ins, and the originals' outcomes."""
            with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
                logs = load_runs_events(
                    conn, self.schema, [start.run_id for start in part], skip=OUTCOME_UNUSED
                )
            for run_id, events in logs.items():
                records.add_run(run_id, events)
            return {run_id: run_outcome(run_id, events) for run_id, events in logs.items()}

        def finish(
            originals: dict[str, RunOutcome], logs: dict[str, list[Any]], sink: FoldSink
        ) -> _FoldedPart:
            outcomes = {
                run_id: run_outcome(
                    run_id,
                    log,
                    served=functools.partial(served.get, run_id),
                    tokens=functools.partial(served.tokens_of, run_id),
                )
                for run_id, log in logs.items()
            }
            if os.getpid() == parent:
                return _FoldedPart(outcomes, originals, models=logs)
            # A child hands back the Avro bytes it wrote (decoded only if asked for), and how
            # its steps were served.
            assert isinstance(sink, ShadowLogSink)
            return _FoldedPart(
                outcomes,
                originals,
                encoded=sink.encoded,
                served=(served.served, served.calls, served.tokens),
            )

        total = len(starts)
        timeout = self.timeout_s if self.timeout_s is not None else 60.0 + 0.5 * total
        processes = self.processes if self.processes is not None else default_processes(total)
        self.last_processes = max(1, min(processes, total))
        if pace == "recorded":
            # The originals' peak of runs in flight, shared out over the fold processes.
            peak = self._recorded_peak([start.run_id for start in starts])
            folder.runs_in_flight = max(1, -(-peak // self.last_processes))
        self.last_runs_in_flight = folder.runs_in_flight
        ready = time.monotonic()
        parts = fold_partitioned(
            folder,
            starts,
            alongside=functools.partial(self._shadow_setup, settings, parsed, version),
            timings=self.fold_timings,
            timeout_s=timeout,
            processes=processes,
            new_sink=new_sink,
            prepare=prepare,
            finish=finish,
            progress=self.progress,
        )
        merging = time.monotonic()
        outcomes: dict[str, RunOutcome] = {}
        originals: dict[str, RunOutcome] = {}
        for part in parts:
            outcomes.update(part.outcomes)
            originals.update(part.originals)
            self._candidate_logs.update(part.models)
            self._candidate_encoded.update(part.encoded)
            if part.served is not None:
                kinds, calls, tokens = part.served
                served.served.update(kinds)
                served.calls.update(calls)
                served.tokens.update(tokens)
        self.fold_timings["merge_s"] = time.monotonic() - merging
        return outcomes, originals, ready

    def _recorded_peak(self, run_ids: Sequence[str]) -> int:
        """How many of ``run_ids`` were in flight at once when they ran (the runs read model;
        at least 1)."""
        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            rows = conn.execute(
                f"SELECT started_at, finished_at FROM {table(self.schema, 'runs')} "
                "WHERE run_id = ANY(%s)",
                (list(run_ids),),
            ).fetchall()
        return max(1, peak_in_flight((row[0], row[1]) for row in rows))

    def _shadow_setup(self, settings: Settings, parsed: WorkflowDefinition, version: int) -> None:
        """Fold mode: the shadow topics and the candidate's definition (registered as the
        engine mode registers it), made while the runs fold: a fold's producer holds what it
        writes until its topic exists (librdkafka's topic.metadata.propagation.max.ms, 30 s),
        and no Kafka client of this process is busy while the fold processes are forked."""
        catalog = TopicCatalog.from_settings(settings)
        create_missing_topics([catalog.runs, catalog.workflows], settings=settings)
        producer = Producer(settings, client_id=f"replay-{self.replay_id}")
        try:
            producer.send(
                catalog.workflows.topic,
                f"{parsed.id}@{version}",
                WorkflowRegistered(
                    workflow_id=parsed.id,
                    version=version,
                    definition=parsed.to_json_dict(),
                    registered_at=datetime.now(UTC),
                    tenant=self._tenant,
                ),
            )
            producer.flush(10)
        finally:
            producer.close()

    def _run_engine(
        self,
        *,
        settings: Settings,
        registry: NodeRegistry,
        shadow_schema: str,
        register_nodes: bool,
        parsed: WorkflowDefinition,
        version: int,
        starts: Sequence[StartRun],
    ) -> tuple[dict[str, list[Any]], float]:
        """Engine mode: a whole shadow engine (scheduler, workers) runs the candidate runs."""
        prefix = settings.topic_prefix
        engine = self._engine = self.engine_factory(
            settings, registry, shadow_schema, register_nodes
        )
        engine.start()
        producer = Producer(settings, client_id=f"replay-{self.replay_id}")
        # Subscribed before the first start: reads the shadow run log from the beginning.
        collector = Consumer(
            [engine.catalog.runs], f"{prefix}.replay-collector", settings, catalog=engine.catalog
        )
        try:
            producer.send(
                engine.catalog.workflows.topic,
                f"{parsed.id}@{version}",
                WorkflowRegistered(
                    workflow_id=parsed.id,
                    version=version,
                    definition=parsed.to_json_dict(),
                    registered_at=datetime.now(UTC),
                    tenant=self._tenant,
                ),
            )
            producer.flush(10)
            ready = time.monotonic()
            for start in starts:
                producer.send(engine.catalog.commands.topic, start.run_id, start)
            producer.flush(30)
            return self._collect(collector, [s.run_id for s in starts], engine), ready
        finally:
            collector.close(commit=False)
            producer.close()
            engine.stop()
            self._engine = None

    def _new_round(self) -> tuple[Settings, str]:
        """The next round's shadow settings and schema (recorded for close())."""
        self._rounds += 1
        prefix = f"{self.prefix_root}-{self._rounds}"
        shadow_schema = f"{self.schema_root}_{self._rounds}"
        self._prefixes.append(prefix)
        self._schemas += [shadow_schema, f"{shadow_schema}_api"]
        settings = self.settings.model_copy(update={"topic_prefix": prefix})
        self.shadow_settings, self.shadow_schema = settings, shadow_schema
        return settings, shadow_schema

    def candidate_events(self, run_id: str) -> list[Any]:
        """The last round's shadow log of a run (event models in seq order)."""
        if run_id in self._candidate_encoded:  # folded in a child process: its Avro records
            self._candidate_logs[run_id] = [
                serde.decode(data) for data in self._candidate_encoded.pop(run_id)
            ]
        if run_id not in self._candidate_logs:
            raise ReplayError(f"run_id: {run_id!r} was not replayed in the last round")
        return self._candidate_logs[run_id]

    def original_events(self, run_id: str) -> list[Any]:
        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            return load_events(conn, self.schema, run_id)

    def _check(self, candidate: Candidate, policy: EffectPolicy) -> None:
        if candidate.workflow_version is None and candidate.definition is None:
            raise ReplayError(
                "candidate: expected a workflow_version or a definition, but got neither"
            )
        # Pins are checked against the compiled nodes and the node catalog's artifact versions
        # when the round starts (pinned_artifacts).
        for name, mode in policy.per_node.items():
            if mode not in ("record", "stub", "skip", "live"):
                raise ReplayError(
                    f"policy.per_node.{name}: expected record, stub, skip or live, but got {mode!r}"
                )
            if mode == "stub" and name not in policy.stubs:
                raise ReplayError(f"policy.stubs.{name}: expected the declared stub output")

    def _candidate_definition(
        self,
        conn: psycopg.Connection[Any],
        workflow_id: str,
        candidate: Candidate,
        heads: Mapping[str, RunHead],
    ) -> tuple[int, dict[str, Any]]:
        """(version to register in the shadow, definition): a registered version's definition
        from the read model, or the given one (registered as the next free version)."""
        if candidate.definition is not None:
            row = conn.execute(
                f"SELECT max(version) FROM {table(self.schema, 'workflows')} "
                "WHERE workflow_id = %s",
                (workflow_id,),
            ).fetchone()
            recorded = [head.workflow_version for head in heads.values()]
            version = candidate.workflow_version or (
                max([*(r for r in recorded), (row[0] if row and row[0] else 0)]) + 1
            )
            definition = dict(candidate.definition)
        else:
            assert candidate.workflow_version is not None
            version = candidate.workflow_version
            # The definition a run of that version started with, else the registered one.
            same = [h.run_id for h in heads.values() if h.workflow_version == version]
            if same:
                definition = load_started_definition(conn, self.schema, same[0])
            else:
                found = queries.get_workflow(conn, workflow_id, version, schema=self.schema)
                if found is None:
                    raise ReplayError(
                        f"candidate.workflow_version: {workflow_id} has no version {version}"
                    )
                definition = dict(found.definition)
        if candidate.node_pins:
            definition = pin_nodes(definition, candidate.node_pins)
        return version, definition

    def _collect(
        self, collector: Consumer, run_ids: list[str], engine: ShadowEngine
    ) -> dict[str, list[Any]]:
        """The candidate runs' logs, read from the shadow ``runs`` topic until every run is
        finished (no read model in the shadow: the projector's work is not needed)."""
        total = len(run_ids)
        wanted = set(run_ids)
        timeout = self.timeout_s if self.timeout_s is not None else 60.0 + 0.5 * total
        deadline = time.monotonic() + timeout
        logs: dict[str, dict[int, Any]] = {run_id: {} for run_id in run_ids}
        done: set[str] = set()
        if self.progress is not None:
            self.progress(0, total)
        while len(done) < total:
            for record in collector.poll_batch(2000, 0.2):
                event = record.value
                run_id = getattr(event, "run_id", None)
                seq = getattr(event, "seq", None)
                if run_id not in wanted or not isinstance(seq, int):
                    continue
                logs[run_id].setdefault(seq, event)  # a record seen twice is one event
                if type(event).__name__ in _RUN_END and run_id not in done:
                    done.add(run_id)
                    if self.progress is not None:
                        self.progress(len(done), total)
            if len(done) < total and time.monotonic() > deadline:
                missing = sorted(wanted - done)[:5]
                raise TimeoutError(
                    f"replay {self.replay_id}: {total - len(done)} of {total} candidate runs "
                    f"did not finish within {timeout:.0f}s (e.g. {missing}; engine errors: "
                    f"{engine.errors()})"
                )
        return {run_id: [log[k] for k in sorted(log)] for run_id, log in logs.items()}

    # -- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the shadow engine, delete its topics and consumer groups, drop its schemas and
        remove its cache/ledger/mailbox keys from Redis. Safe to call twice."""
        if self._engine is not None:
            self._engine.stop()
            self._engine = None
        prefixes, self._prefixes = self._prefixes, []
        schemas, self._schemas = self._schemas, []
        for prefix in prefixes:
            _delete_kafka_prefix(self.settings, prefix)
            stores = (self.settings.ledger_redis_url, self.settings.webhook_store_url)
            for url in {self.settings.redis_url, *stores}:
                _delete_redis_prefix(url, f"{prefix}:")
        if schemas:
            with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
                for schema in schemas:
                    conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE")

    def __enter__(self) -> ShadowReplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _delete_kafka_prefix(settings: Settings, prefix: str, timeout: float = 30.0) -> None:
    """Delete the prefix's topics (``<prefix>.…``) and consumer groups, and wait until the broker
    lists none of its topics."""
    client = admin_client(settings)
    mine = sorted(t for t in client.list_topics(timeout=10).topics if t.startswith(prefix + "."))
    if mine:
        for future in client.delete_topics(mine, operation_timeout=10).values():
            try:
                future.result(timeout=15)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
    groups = client.list_consumer_groups().result(timeout=10)
    names = [g.group_id for g in groups.valid if g.group_id.startswith(prefix + ".")]
    if names:
        for future in client.delete_consumer_groups(names, request_timeout=10).values():
            with contextlib.suppress(KafkaException):  # already gone, or its members leaving
                future.result(timeout=15)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while any(t.startswith(prefix + ".") for t in client.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker still lists topics of {prefix} after {timeout:.0f}s")
        pause.wait(0.1)


def _delete_redis_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)
    finally:
        client.close()
