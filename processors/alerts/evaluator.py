"""The alert runtime: every ``interval_s`` query ClickHouse, evaluate the rules, publish
transitions on the ``alerts`` topic.

Run exactly one evaluator per deployment (per topic prefix): two would each publish the same
transitions. In embedded mode it runs inside the process that owns the chdb store (the API of
``reflux dev`` / ``reflux api``); with a ClickHouse server, run ``reflux alerts serve`` once.

State: which alerts are firing is rebuilt from the ``alerts`` topic at start (a restart neither
re-announces nor forgets an incident), then kept in memory. A transition joins the in-memory set
only after the broker acknowledged it, so a failed publish is simply retried by the next
evaluation (at-least-once; the view keeps the latest record per alert, so a duplicate is
harmless).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Self

from foundation.settings import Settings
from processors.alerts.config import AlertSettings, rules_from_settings
from processors.alerts.records import to_record
from processors.alerts.rules import (
    NODE_KINDS,
    AlertEvent,
    AlertKey,
    AlertRule,
    MetricsSnapshot,
    NodeSample,
    WindowMetrics,
    WorkflowSample,
    apply_events,
    evaluate,
)
from processors.alerts.view import AlertsView
from projections.clickhouse import ClickHouse
from projections.traces.migrations import DEFAULT_DATABASE
from projections.traces.queries import node_metrics, workflow_metrics
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.topics import TopicCatalog

__all__ = ["AlertEvaluator", "collect_snapshot"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def collect_snapshot(
    ch: ClickHouse,
    rules: Sequence[AlertRule],
    until: datetime,
    *,
    database: str = DEFAULT_DATABASE,
) -> MetricsSnapshot:
    """One node query and/or one workflow query per distinct rule window, ending at ``until``."""
    windows: dict[timedelta, WindowMetrics] = {}
    for window in sorted({r.window for r in rules}):
        kinds = {r.kind for r in rules if r.window == window}
        nodes: dict[str, NodeSample] = {}
        if kinds & NODE_KINDS:
            for m in node_metrics(ch, window, until=until, database=database):
                nodes[m.node] = NodeSample(m.node, m.attempts, m.failures, m.latency_ms_p99)
        workflows: dict[str, WorkflowSample] = {}
        if kinds - NODE_KINDS:
            # The rollup is per workflow version; a budget is per workflow.
            for w in workflow_metrics(ch, window, until=until, database=database):
                seen = workflows.get(w.workflow_id)
                workflows[w.workflow_id] = WorkflowSample(
                    w.workflow_id,
                    w.attempts + (seen.attempts if seen else 0),
                    w.cost_tokens + (seen.cost_tokens if seen else 0),
                )
        windows[window] = WindowMetrics(nodes=nodes, workflows=workflows)
    return MetricsSnapshot(windows)


class AlertEvaluator:
    def __init__(
        self,
        settings: Settings,
        ch: ClickHouse,
        *,
        rules: Sequence[AlertRule] | None = None,
        alert_settings: AlertSettings | None = None,
        database: str = DEFAULT_DATABASE,
        interval_s: float | None = None,
        clock: Clock = _utc_now,
        catalog: TopicCatalog | None = None,
    ) -> None:
        alerts = alert_settings or AlertSettings()
        self.settings = settings
        self.ch = ch
        self.rules = list(rules) if rules is not None else rules_from_settings(alerts)
        self.database = database
        self.interval_s = interval_s if interval_s is not None else alerts.interval_s
        self.clock = clock
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self._active: dict[AlertKey, AlertEvent] | None = None
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> dict[AlertKey, AlertEvent]:
        """The alerts firing now as this evaluator knows them (loaded on first evaluation)."""
        return dict(self._active or {})

    def _load_active(self) -> dict[AlertKey, AlertEvent]:
        ensure_topics(self.catalog, [self.catalog.alerts], settings=self.settings)
        with AlertsView(self.settings, self.catalog) as view:
            view.catch_up(timeout=30.0)
            active = view.active()
        if active:
            log.info("alerts firing at start: %s", ", ".join(f"{r}/{s}" for r, s in active))
        return active

    def run_once(self, now: datetime | None = None) -> list[AlertEvent]:
        """Evaluate at ``now`` (default: the clock), publish the transitions and return them."""
        if self._active is None:
            self._active = self._load_active()
        at = now or self.clock()
        snapshot = collect_snapshot(self.ch, self.rules, at, database=self.database)
        events = evaluate(self.rules, snapshot, self._active, at)
        if events:
            if self._producer is None:
                self._producer = Producer(self.settings, client_id="reflux-alerts")
            for event in events:
                self._producer.send(self.catalog.alerts, event.rule_id, to_record(event))
            self._producer.flush()
            self._active = apply_events(self._active, events)
            for event in events:
                log.warning("alert %s: %s", event.state.value, event.message)
        return events

    def run(self, stop_event: threading.Event) -> None:
        """Evaluate every ``interval_s`` until ``stop_event`` is set. A failing evaluation
        (ClickHouse or Kafka down) is logged and retried at the next tick."""
        while True:
            try:
                self.run_once()
            except Exception:
                log.exception("alert evaluation failed; retrying in %ss", self.interval_s)
            if stop_event.wait(self.interval_s):
                return

    def start(self) -> Self:
        """Run :meth:`run` in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self.run, args=(self._stop,), name="alert-evaluator", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=5.0)
            except Exception as exc:
                log.warning("alerts producer close: %s", exc)
