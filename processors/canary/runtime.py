"""The canary judge's runtime edge: reads live outcomes, publishes keep / rollback (ADR 0033).

Every ``interval_s``:

1. the open canaries: proposals ``applied`` in the ``mutation_proposals`` read model, with the
   time of their ``applied`` transition (``mutation_events``);
2. per canary, the runs of the previous and the applied version **started since the apply**
   that finished (succeeded or failed; cancelled runs say nothing about the version) from the
   ``runs`` read model, in the order they finished: success and duration (``finished_at -
   started_at``, as ``GET /v1/mutations/{id}`` measures the effect);
3. the cost of each of those runs: the LLM tokens of its attempts, summed from the ``traces``
   topic (:class:`TraceCosts`, read from the earliest open canary's apply time on);
4. :func:`~processors.canary.judge.first_decision` on the runs not judged yet (so the decision
   is the one a judge looking after every finished run would take, whatever the polling
   cadence), and on a decision one ``MutationRequest`` ``keep`` / ``rollback``, actor
   ``canary``, with the statistics and the final effect as evidence, on ``reflux.mutations``.
   The mutation processor stores them on the proposal's record (``report["canary"]``).

State: none that matters. Everything is re-read from the read model, so a restarted judge
decides what the old one would have; a request sent twice is the same record (same event id)
while this instance lives, and the processor refuses a second decision on a proposal that is no
longer ``applied``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import fmean
from typing import Any, Final

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from foundation.errors import ServiceUnavailableError
from foundation.liveness import Heartbeat
from foundation.settings import Settings
from processors.canary.judge import CanaryConfig, CanaryVerdict, RunObservation, first_decision
from projections.postgres.connection import ReconnectingConnection
from projections.postgres.identifiers import table
from schemas.models import MutationAction, MutationRequest
from streams.consumer import retry_transient
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from streams.watermarks import WatermarkReader

__all__ = [
    "ACTOR",
    "CanaryJudge",
    "OpenCanary",
    "TraceCosts",
    "applied_proposals",
    "final_effect",
    "finished_runs",
]

log = logging.getLogger(__name__)

ACTOR: Final = "canary"
RESEND_AFTER_S: Final = 10.0
"""A decision the read model does not show yet is sent again (the same record) after this."""


@dataclass(frozen=True, slots=True)
class OpenCanary:
    mutation_id: str
    workflow_id: str
    applied_version: int
    previous_version: int
    canary_weight: float | None
    applied_at: datetime
    bandit: bool = False
    """Driven by the optimizer's bandit experiment (evidence ``bandit``, ADR 0037): the
    experiment keeps it; the judge only rolls back, on a significant success regression."""


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def final_effect(observations: Iterable[RunObservation]) -> dict[str, Any]:
    """Per arm: runs, success rate, p50/p95 duration of successful runs, mean cost; and the
    canary's change against the baseline (what the decision is about, in plain numbers)."""
    arms: dict[str, dict[str, Any]] = {}
    grouped: dict[str, list[RunObservation]] = {"baseline": [], "canary": []}
    for o in observations:
        grouped["canary" if o.canary else "baseline"].append(o)
    for name, runs in grouped.items():
        ok = [o for o in runs if o.succeeded]
        durations = [o.duration_ms for o in ok if o.duration_ms is not None]
        costs = [o.cost for o in runs if o.cost is not None]
        arms[name] = {
            "runs": len(runs),
            "succeeded": len(ok),
            "success_rate": len(ok) / len(runs) if runs else None,
            "p50_ms": _quantile(durations, 0.5),
            "p95_ms": _quantile(durations, 0.95),
            "mean_cost": fmean(costs) if costs else None,
        }
    base, canary = arms["baseline"], arms["canary"]

    def change(key: str, ratio: bool) -> float | None:
        a, b = base[key], canary[key]
        if a is None or b is None:
            return None
        if ratio:
            return b / a if a else None
        return float(b - a)

    arms["change"] = {
        "success_rate": change("success_rate", ratio=False),
        "p95_ratio": change("p95_ms", ratio=True),
        "cost_ratio": change("mean_cost", ratio=True),
    }
    return arms


class TraceCosts:
    """LLM tokens per run, summed from the ``traces`` topic (JSON; only ``run_id``,
    ``workflow_id``, ``event_id`` and ``cost_tokens`` are read, with ``json.loads``: the
    strict model validation costs more than the judge needs).

    Read from a start time on (Kafka's offsets for times): the earliest apply time of the open
    canaries, so a restarted judge recounts exactly the runs it judges. Duplicates (a trace
    redelivered) count once, by event id."""

    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        self.topic = catalog.traces.topic
        config = {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.canary-traces",  # never committed
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "allow.auto.create.topics": False,
        }
        self._consumer = Consumer(config)
        self._ends = WatermarkReader(config)
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=10)
        except KafkaException as exc:
            self._consumer.close()
            raise ServiceUnavailableError(
                f"Kafka is unavailable for {self.topic!r}: {exc}"
            ) from exc
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            self._consumer.close()
            raise ServiceUnavailableError(f"Expected the topic {self.topic!r}, but it is missing")
        self._partitions = sorted(found.partitions)
        self.since: datetime | None = None
        self._starts: dict[int, int] = {}
        self.workflows: set[str] = set()
        self._spent: dict[str, dict[str, int]] = {}

    def start_at(self, since: datetime, workflows: set[str]) -> None:
        """(Re)reads the traces of ``workflows`` from ``since`` on; what was counted is
        forgotten."""
        millis = int(since.timestamp() * 1000)
        try:
            # Retriable errors (a topic created moments ago) are retried for 10 s.
            starts = retry_transient(
                lambda: self._start_offsets(millis),
                10,
                refresh=lambda: self._consumer.list_topics(self.topic, timeout=5),
            )
        except KafkaException as exc:
            raise ServiceUnavailableError(
                f"Kafka did not answer for {self.topic!r}: {exc}"
            ) from exc
        self._consumer.assign(starts)
        # Where each partition starts: its position until a record of it is consumed (the
        # client reports no position before that).
        self._starts = {tp.partition: tp.offset for tp in starts}
        self.since = since
        self.workflows = set(workflows)
        self._spent.clear()

    def _start_offsets(self, millis: int) -> list[TopicPartition]:
        wanted = [TopicPartition(self.topic, p, millis) for p in self._partitions]
        starts = []
        for tp in self._consumer.offsets_for_times(wanted, timeout=10):
            offset = tp.offset
            if offset < 0:  # no record at or after the time: from the current end
                offset = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=10
                )[1]
            starts.append(TopicPartition(self.topic, tp.partition, offset))
        return starts

    def catch_up(self, timeout: float = 5.0) -> bool:
        """Reads up to the end each partition has now. Traces of an attempt are written with
        its result, before the scheduler can finish the run, so a run the read model showed
        finished before this call has its traces below these ends. ``False``: timed out."""
        if self.since is None:
            return True
        marks = self._ends.ends([(self.topic, p) for p in self._partitions], timeout=5)
        ends = {partition: high for (_, partition), (_, high) in marks.items()}
        deadline = time.monotonic() + timeout
        while True:
            positions = {
                tp.partition: tp.offset if tp.offset >= 0 else self._starts[tp.partition]
                for tp in self._consumer.position(
                    [TopicPartition(self.topic, p) for p in self._partitions]
                )
            }
            if all(end == 0 or positions[p] >= end for p, end in ends.items()):
                return True
            if time.monotonic() > deadline:
                return False
            for message in self._consumer.consume(1000, 0.05):
                if message.error() is None:
                    self._apply(message.value())

    def _apply(self, data: bytes | None) -> None:
        if not data:
            return
        try:
            trace = json.loads(data)
        except ValueError:
            return
        if trace.get("workflow_id") not in self.workflows:
            return
        tokens = trace.get("cost_tokens")
        run_id = trace.get("run_id")
        if not isinstance(run_id, str):
            return
        spent = self._spent.setdefault(run_id, {})
        if isinstance(tokens, int) and tokens > 0:
            spent[str(trace.get("event_id"))] = tokens

    def cost(self, run_id: str) -> float:
        return float(sum(self._spent.get(run_id, {}).values()))

    def cover(self, since: datetime, workflows: set[str]) -> None:
        """Makes sure the traces of ``workflows`` are read from ``since`` on: recounts from
        ``since`` (:meth:`start_at`) when that is earlier than what is read or a workflow is
        new; does nothing otherwise."""
        if self.since is None or since < self.since or not workflows <= self.workflows:
            self.start_at(since, workflows)

    def reset(self) -> None:
        """Forgets every count and stops fetching; the next :meth:`start_at` reads again."""
        self._consumer.unassign()
        self.since = None
        self.workflows = set()
        self._spent.clear()

    def forget(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            self._spent.pop(run_id, None)

    def close(self) -> None:
        self._ends.close()
        self._consumer.close()


def applied_proposals(
    conn: psycopg.Connection[Any], schema: str, *, bandit_only: bool = False
) -> list[tuple[Any, ...]]:
    """The proposals ``applied`` now (with an applied version): ``(mutation_id, workflow_id,
    applied_version, previous_version, canary_weight, applied_at, bandit, evidence.bandit)``.
    ``applied_at`` is the time of the first ``applied`` record (``None`` until the events
    show it): a reweight (ADR 0037) is another applied record and does not restart the
    comparison. ``bandit``: the evidence has a ``bandit`` object (the canary is a bandit
    experiment); ``bandit_only``: only those. The canary judge and the bandit experiments read
    the same proposals."""
    bandit = "jsonb_typeof(p.evidence) = 'object' AND p.evidence ? 'bandit'"
    return conn.execute(
        "SELECT p.mutation_id, p.workflow_id, p.applied_version, "
        "coalesce(p.previous_version, p.base_version), p.canary_weight, "
        f"(SELECT min(e.occurred_at) FROM {table(schema, 'mutation_events')} e "
        "  WHERE e.mutation_id = p.mutation_id AND e.status = 'applied'), "
        f"coalesce({bandit}, false), p.evidence -> 'bandit' "
        f"FROM {table(schema, 'mutation_proposals')} p "
        "WHERE p.status = 'applied' AND p.applied_version IS NOT NULL"
        + (f" AND {bandit}" if bandit_only else "")
    ).fetchall()


def finished_runs(
    conn: psycopg.Connection[Any],
    schema: str,
    workflow_id: str,
    versions: list[int],
    since: datetime,
) -> list[tuple[Any, ...]]:
    """The runs of ``workflow_id`` at ``versions`` started since ``since`` that finished
    (succeeded or failed; a cancelled run says nothing about its version), in the order they
    finished: ``(run_id, workflow_version, status, duration_ms)``. The canary judge and the
    bandit experiments (ADR 0037) read the same runs."""
    return conn.execute(
        "SELECT run_id, workflow_version, status, "
        "extract(epoch FROM finished_at - started_at) * 1000 "
        f"FROM {table(schema, 'runs')} WHERE workflow_id = %s "
        "AND workflow_version = ANY(%s) AND started_at >= %s "
        "AND finished_at IS NOT NULL AND status IN ('succeeded', 'failed') "
        "ORDER BY finished_at, run_id",
        (workflow_id, versions, since),
    ).fetchall()


@dataclass
class _Watch:
    canary: OpenCanary
    judged: int = 0
    """Observations already looked at (every prefix up to here decided nothing)."""
    sent: MutationRequest | None = None
    sent_at: float = 0.0
    last: CanaryVerdict | None = None
    run_ids: set[str] = field(default_factory=set)


class CanaryJudge:
    def __init__(
        self,
        settings: Settings,
        *,
        schema: str = "reflux",
        config: CanaryConfig | None = None,
        interval_s: float = 0.2,
        costs: bool = True,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.config = config or CanaryConfig()
        self.interval_s = interval_s
        self.catalog = TopicCatalog.from_settings(settings)
        self.producer = Producer(settings, client_id="reflux-canary")
        self.costs = TraceCosts(settings, self.catalog) if costs else None
        self._conn = ReconnectingConnection(settings.postgres_dsn)
        self.watching: dict[str, _Watch] = {}
        self.decisions: list[MutationRequest] = []
        """Every request this instance sent (tests and benchmarks read it)."""

    # -- reads -----------------------------------------------------------------------------------

    def _db(self) -> psycopg.Connection[Any]:
        return self._conn.get()

    def open_canaries(self) -> list[OpenCanary]:
        return [
            OpenCanary(r[0], r[1], int(r[2]), int(r[3]), r[4], r[5], bool(r[6]))
            for r in applied_proposals(self._db(), self.schema)
            if r[5] is not None
        ]

    def _rows(self, canary: OpenCanary) -> list[tuple[Any, ...]]:
        return finished_runs(
            self._db(),
            self.schema,
            canary.workflow_id,
            [canary.applied_version, canary.previous_version],
            canary.applied_at,
        )

    def _observations(
        self, canary: OpenCanary, rows: list[tuple[Any, ...]]
    ) -> list[RunObservation]:
        costs = self.costs
        return [
            RunObservation(
                run_id=r[0],
                canary=int(r[1]) == canary.applied_version,
                succeeded=r[2] == "succeeded",
                # A bandit experiment trades latency and cost against quality by the workflow's
                # reward weights (ADR 0037): those are not the judge's to veto (going back to
                # the big model after the small one degraded is slower and dearer, and right).
                # The judge keeps its veto on success: a version that fails more is rolled back.
                duration_ms=None if r[3] is None or canary.bandit else float(r[3]),
                cost=None if costs is None or canary.bandit else costs.cost(r[0]),
            )
            for r in rows
        ]

    def observations(self, canary: OpenCanary) -> list[RunObservation]:
        """The canary's finished runs now (costs as counted so far)."""
        return self._observations(canary, self._rows(canary))

    # -- one round ---------------------------------------------------------------------------------

    def tick(self) -> list[MutationRequest]:
        """Looks at every open canary once; returns the requests sent this round."""
        open_now = {c.mutation_id: c for c in self.open_canaries()}
        for mutation_id in list(self.watching):
            if mutation_id not in open_now:
                gone = self.watching.pop(mutation_id)
                if self.costs is not None:
                    self.costs.forget(gone.run_ids)
        for mutation_id, canary in open_now.items():
            self.watching.setdefault(mutation_id, _Watch(canary))
        if not self.watching:
            if self.costs is not None and self.costs.since is not None:
                self.costs.reset()  # nothing to count for until the next canary
            return []
        costs = self.costs
        if costs is not None:
            workflows = {w.canary.workflow_id for w in self.watching.values()}
            earliest = min(w.canary.applied_at for w in self.watching.values())
            # A canary it did not count for: recount from the earliest apply.
            costs.cover(earliest, workflows)
        sent: list[MutationRequest] = []
        rows = {m: self._rows(w.canary) for m, w in self.watching.items()}
        if costs is not None and not costs.catch_up():
            log.warning("the traces were not read to their end in time; judging next round")
            return []
        observed = {m: self._observations(w.canary, rows[m]) for m, w in self.watching.items()}
        for mutation_id, watch in self.watching.items():
            request = self._judge(watch, observed[mutation_id])
            if request is not None:
                sent.append(request)
        if sent:
            self.producer.flush()
        return sent

    def _judge(self, watch: _Watch, runs: list[RunObservation]) -> MutationRequest | None:
        if watch.sent is not None:
            if time.monotonic() - watch.sent_at > RESEND_AFTER_S:
                self._send(watch, watch.sent)
                return watch.sent
            return None
        watch.run_ids.update(o.run_id for o in runs)
        if len(runs) <= watch.judged:
            return None
        used, verdict = first_decision(
            runs, self.config, start=watch.judged + 1, rollback_only=watch.canary.bandit
        )
        watch.judged = len(runs) if verdict.decision is None else used
        watch.last = verdict
        if verdict.decision is None:
            return None
        canary = watch.canary
        request = MutationRequest(
            workflow_id=canary.workflow_id,
            mutation_id=canary.mutation_id,
            action=MutationAction.KEEP if verdict.decision == "keep" else MutationAction.ROLLBACK,
            actor=ACTOR,
            reason=f"canary: {verdict.reason}",
            evidence={
                "judge": ACTOR,
                "decision": verdict.decision,
                "reason": verdict.reason,
                "applied_version": canary.applied_version,
                "previous_version": canary.previous_version,
                "canary_weight": canary.canary_weight,
                "applied_at": canary.applied_at.isoformat(),
                "decided_at": datetime.now(UTC).isoformat(),
                "canary_runs": verdict.canary_runs,
                "baseline_runs": verdict.baseline_runs,
                "statistics": verdict.to_json(),
                "effect": final_effect(runs[:used]),
            },
        )
        log.info(
            "canary %s of %s: %s after %d canary runs (%s)",
            canary.mutation_id,
            canary.workflow_id,
            verdict.decision,
            verdict.canary_runs,
            verdict.reason,
        )
        self._send(watch, request)
        self.decisions.append(request)
        return request

    def _send(self, watch: _Watch, request: MutationRequest) -> None:
        self.producer.send(self.catalog.mutations, request.workflow_id, request)
        watch.sent = request
        watch.sent_at = time.monotonic()

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        heartbeat = Heartbeat.from_settings(self.settings)
        log.info("canary judge running (schema %s, %s)", self.schema, self.config.to_json())
        while not stop.is_set():
            heartbeat.beat()
            started = time.monotonic()
            self.tick()
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            if self.costs is not None:
                self.costs.close()
            self._conn.close()
