"""The A/B replay runner: takes ``ReplayRequested`` records from ``reflux.replays``, runs each
with :class:`~processors.replay.shadow.ShadowReplay`, stores progress and the report
(:mod:`processors.replay.storage`) and answers with ``ReplayCompleted`` on the same topic (the
mutation processor decides a validating proposal on it). ADR 0030, docs/replay.md.

Delivery: at-least-once. The request's offset is committed after the report is stored and the
completion produced; a redelivered request whose replay is already terminal only re-sends the
completion (the mutation processor ignores a second one), a replay that was running when its
runner died runs again from the start (its rows are rewritten, not doubled).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Protocol, cast

import psycopg

from foundation.errors import NonRetryableError
from foundation.liveness import Heartbeat
from foundation.settings import Settings
from processors.replay import storage
from processors.replay.pace import PACES
from processors.replay.report import build_report
from processors.replay.shadow import (
    Candidate,
    EffectPolicy,
    ReplayPair,
    Selection,
    ShadowReplay,
)
from processors.replay.stats import VerdictRules
from projections.clickhouse import ClickHouse
from projections.postgres.connection import ReconnectingConnection
from schemas.models import MutationAction, MutationRequest, ReplayCompleted, ReplayRequested
from streams.consumer import LOOP_POLL_S, ConsumedRecord, Consumer
from streams.producer import Producer
from streams.topics import TopicCatalog

__all__ = ["REPLAY_TOPIC_TYPES", "ReplayRunner", "SpecError", "parse_spec"]

log = logging.getLogger(__name__)

REPLAY_TOPIC_TYPES: Final = (ReplayRequested, ReplayCompleted)
EFFECT_MODES: Final = ("record", "stub", "skip", "live")
PROGRESS_EVERY_S: Final = 0.2
PROPOSAL_REQUESTER: Final = "mutation-processor"


class SpecError(NonRetryableError):
    """A replay spec that does not parse; ``path`` names the field."""

    error_class = "InvalidReplay"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.detail = message


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, f"Expected an object, but got {type(value).__name__}")
    return value


def _time(value: Any, path: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise SpecError(path, f"Expected an ISO 8601 timestamp, but got {value!r}") from None


def _int(value: Any, path: str, minimum: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpecError(path, f"Expected an integer >= {minimum}, but got {value!r}")
    return value


def parse_spec(
    spec: Mapping[str, Any],
) -> tuple[Selection, Candidate, EffectPolicy, VerdictRules]:
    """The engine's inputs from a request's spec (the JSON the API and the processor write)."""
    sel = _obj(spec.get("selection"), "selection")
    workflow_id = sel.get("workflow_id")
    if not isinstance(workflow_id, str) or not workflow_id:
        raise SpecError("selection.workflow_id", "Expected a workflow id, but got none")
    selection = Selection(
        workflow_id=workflow_id,
        workflow_version=_int(sel.get("workflow_version"), "selection.workflow_version", 1),
        since=_time(sel.get("since"), "selection.since"),
        until=_time(sel.get("until"), "selection.until"),
        status=sel.get("status"),
        inputs_filter=sel.get("inputs_filter"),
        sample_size=_int(sel.get("sample_size"), "selection.sample_size", 1) or 100,
    )
    cand = _obj(spec.get("candidate"), "candidate")
    definition = cand.get("definition")
    if definition is not None and not isinstance(definition, Mapping):
        raise SpecError("candidate.definition", "Expected a workflow definition object")
    pins = _obj(cand.get("node_pins"), "candidate.node_pins")
    candidate = Candidate(
        workflow_version=_int(cand.get("workflow_version"), "candidate.workflow_version", 1),
        definition=None if definition is None else dict(definition),
        mutation_id=cand.get("mutation_id"),
        node_pins={str(k): str(v) for k, v in pins.items()},
    )
    if candidate.workflow_version is None and candidate.definition is None and not pins:
        raise SpecError(
            "candidate",
            "Expected a workflow_version, a definition (mutation) or node_pins, but got none",
        )
    pol = _obj(spec.get("policy"), "policy")
    per_node = _obj(pol.get("per_node"), "policy.per_node")
    for node, mode in per_node.items():
        if mode not in EFFECT_MODES:
            raise SpecError(
                f"policy.per_node.{node}", f"Expected one of {EFFECT_MODES}, but got {mode!r}"
            )
    stubs = _obj(pol.get("stubs"), "policy.stubs")
    pace = pol.get("pace", "free")
    if pace not in PACES:
        raise SpecError("policy.pace", f"Expected one of {PACES}, but got {pace!r}")
    policy = EffectPolicy(per_node=dict(per_node), stubs=dict(stubs), pace=pace)
    confidence = spec.get("confidence", 0.95)
    try:
        rules = VerdictRules(confidence=float(confidence))
    except (TypeError, ValueError) as exc:
        raise SpecError("confidence", str(exc)) from None
    return selection, candidate, policy, rules


class ShadowEngine(Protocol):
    """What the runner uses of :class:`ShadowReplay` (a context manager that selects and runs)."""

    def __enter__(self) -> ShadowEngine: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def select(self, selection: Selection) -> list[str]: ...

    def run(
        self, run_ids: Sequence[str], candidate: Candidate, policy: EffectPolicy
    ) -> list[ReplayPair]: ...


ShadowFactory = Callable[..., ShadowEngine]


class ReplayRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        schema: str = "reflux",
        clickhouse: ClickHouse | None = None,
        clickhouse_database: str = "reflux",
        shadow: ShadowFactory = ShadowReplay,
        nodes: Any = None,
    ) -> None:
        self.settings = settings
        # The node registry the shadow workers serve (node_workers.registry.NodeRegistry; typed
        # loosely: processors do not import node_workers, the shadow engine is the exception).
        self.nodes = nodes
        self.schema = schema
        self.clickhouse = clickhouse
        self.clickhouse_database = clickhouse_database
        self.shadow = shadow
        self.catalog = TopicCatalog.from_settings(settings)
        self.group = f"{settings.topic_prefix}.replay-runner"
        self.producer = Producer(settings, client_id="reflux-replay-runner")
        # Subscribed on the first run_once: execute() alone (a test, a one-off replay) joins no
        # group (a consumer that joined and never polled can block close() on the rebalance).
        self.consumer: Consumer | None = None
        self._conn = ReconnectingConnection(settings.postgres_dsn)
        self.completed = 0
        # Finished replays' shadows are removed here, one at a time, off the replay path.
        self._janitor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-janitor")

    def _db(self) -> psycopg.Connection[Any]:
        return self._conn.get()

    def _complete(
        self,
        request: ReplayRequested,
        status: str,
        verdict: str | None = None,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        record = ReplayCompleted(
            replay_id=request.replay_id,
            workflow_id=request.workflow_id,
            mutation_id=request.mutation_id,
            status=status,
            verdict=verdict,
            summary=summary,
            error=error,
        )
        self.producer.send(self.catalog.replays, request.replay_id, record)
        if request.mutation_id is not None and request.requested_by == PROPOSAL_REQUESTER:
            # The proposal's verdict goes where its lifecycle lives: reflux.mutations, keyed
            # by workflow, so the processor instance that owns the workflow judges it.
            verdict_request = MutationRequest(
                workflow_id=request.workflow_id,
                mutation_id=request.mutation_id,
                action=MutationAction.REPLAY_VERDICT,
                actor="replay-runner",
                evidence={
                    "replay_id": request.replay_id,
                    "status": status,
                    "verdict": verdict,
                    "summary": summary,
                    "error": error,
                },
            )
            self.producer.send(self.catalog.mutations, request.workflow_id, verdict_request)
        self.completed += 1

    def execute(self, request: ReplayRequested) -> None:
        """Runs one replay to its end (completed or failed) and announces it."""
        conn = self._db()
        spec = cast(dict[str, Any], request.spec)
        storage.insert_queued(
            conn,
            self.schema,
            replay_id=request.replay_id,
            workflow_id=request.workflow_id,
            mutation_id=request.mutation_id,
            requested_by=request.requested_by,
            spec=spec,
        )
        row = storage.get_replay(conn, self.schema, request.replay_id)
        if row is not None and row.status in storage.TERMINAL:
            # Redelivered after it finished: announce again (receivers dedupe), do not re-run.
            self._complete(request, row.status, row.verdict, row.summary, row.error)
            return
        try:
            selection, candidate, policy, rules = parse_spec(spec)
        except SpecError as exc:
            storage.mark_failed(conn, self.schema, request.replay_id, str(exc))
            self._complete(request, "failed", error=str(exc))
            return
        storage.mark_running(conn, self.schema, request.replay_id)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                storage.set_progress(conn, self.schema, request.replay_id, done, total)

        try:
            shadow = self.shadow(
                self.settings,
                request.replay_id,
                progress=progress,
                schema=self.schema,
                nodes=self.nodes,
            )
        except Exception as exc:
            self._failed(request, conn, exc)
            return
        with contextlib.ExitStack() as cleanup:
            cleanup.enter_context(shadow)
            self._replay(
                request,
                conn,
                shadow,
                selection=selection,
                candidate=candidate,
                policy=policy,
                rules=rules,
            )
            # The verdict is out before the shadow's clean-up (about a second of topic
            # deletions, waiting for the broker, and a schema drop), which the janitor thread
            # does meanwhile: a proposal's lifecycle waits on the verdict and the next replay
            # on this runner, nothing on the clean-up.
            self.producer.flush(10)
            later = cleanup.pop_all()
        self._janitor.submit(self._clean_up, request.replay_id, later)

    @staticmethod
    def _clean_up(replay_id: str, cleanup: contextlib.ExitStack) -> None:
        try:
            cleanup.close()
        except Exception:
            # A clean-up that failed leaves shadow topics or a schema behind under the
            # replay's own prefix, nothing else.
            log.exception("replay %s: cleaning up its shadow failed", replay_id)

    def _replay(
        self,
        request: ReplayRequested,
        conn: psycopg.Connection[Any],
        shadow: ShadowEngine,
        *,
        selection: Selection,
        candidate: Candidate,
        policy: EffectPolicy,
        rules: VerdictRules,
    ) -> None:
        """Select, run, report and announce one replay (failed, with the reason, on an error)."""
        try:
            run_ids = shadow.select(selection)
            storage.set_progress(conn, self.schema, request.replay_id, 0, len(run_ids))
            pairs = shadow.run(run_ids, candidate, policy) if run_ids else []
            summary, runs = build_report(pairs, rules)
            summary["selected"] = len(run_ids)
            # Fold mode with policy.pace "recorded": the runs replayed at once (None: all).
            summary["runs_in_flight"] = getattr(shadow, "last_runs_in_flight", None)
            if self.clickhouse is not None:
                written = storage.write_clickhouse_steps(
                    self.clickhouse,
                    self.clickhouse_database,
                    request.replay_id,
                    request.workflow_id,
                    runs,
                )
                summary["clickhouse_step_rows"] = written
            storage.store_report(
                conn, self.schema, request.replay_id, summary=summary, runs=runs, pairs=pairs
            )
        except Exception as exc:
            self._failed(request, conn, exc)
            return
        log.info(
            "replay %s of %s: %d runs, %s",
            request.replay_id,
            request.workflow_id,
            len(runs),
            summary["verdict"],
        )
        self._complete(request, "completed", summary["verdict"], summary)

    def _failed(
        self, request: ReplayRequested, conn: psycopg.Connection[Any], exc: Exception
    ) -> None:
        log.exception("replay %s failed", request.replay_id)
        message = f"{type(exc).__name__}: {exc}"
        storage.mark_failed(conn, self.schema, request.replay_id, message)
        self._complete(request, "failed", error=message)

    def _handle(self, record: ConsumedRecord) -> None:
        if isinstance(record.value, ReplayRequested):
            self.execute(record.value)

    def run_once(self, timeout: float = LOOP_POLL_S) -> int:
        if self.consumer is None:
            self.consumer = Consumer(
                [self.catalog.replays],
                self.group,
                self.settings,
                catalog=self.catalog,
                expected=REPLAY_TOPIC_TYPES,
            )
        result = self.consumer.process(self._handle, timeout=timeout, flush=[self.producer])
        return result.processed

    def run(self, stop: threading.Event) -> None:
        heartbeat = Heartbeat.from_settings(self.settings)
        log.info("replay runner running (group %s)", self.group)
        while not stop.is_set():
            heartbeat.beat()
            self.run_once()

    def close(self) -> None:
        try:
            if self.consumer is not None:
                self.consumer.close()
            self.producer.close()
        finally:
            self._janitor.shutdown(wait=True)  # no shadow left behind by a clean stop
            self._conn.close()
