"""Runs the optimizer's bandit experiments on live runs (runtime edge; ADR 0037).

Every ``interval_s``:

1. the open experiments: proposals ``applied`` in the ``mutation_proposals`` read model whose
   evidence has a ``bandit`` object (its :class:`ExperimentConfig`), with the time of their
   first ``applied`` record;
2. their runs started since then, of either version, once finished (``runs`` read model, as
   the canary judge reads them), and per run from the ``traces`` topic: the checker steps'
   ``quality_score`` (mean over the run) and the LLM tokens (the cost);
3. each run not seen yet is one pull of its version's arm (:meth:`Experiment.observe`), then
   :meth:`Experiment.step`: a ``MutationRequest`` ``reweight`` (actor ``optimizer:bandit``)
   when the probability-matching weight moved, or ``keep`` / ``rollback`` with the
   experiment's snapshot as evidence (stored as ``report["canary"]``) when it is decisive.

State: the posteriors are rebuilt from the read model and the traces after a restart (the same
runs give the same posteriors: the Bernoulli draws are points of the run ids). The canary judge
keeps watching the same proposal but only rolls it back (a significant regression).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import fmean
from typing import Any, Final

import psycopg

from foundation.liveness import Heartbeat
from foundation.settings import Settings
from processors.canary.runtime import TraceCosts, applied_proposals, finished_runs
from processors.optimizer.bandit import Outcome
from processors.optimizer.experiment import Arm, Experiment, ExperimentConfig, RunOutcome
from projections.postgres.connection import ReconnectingConnection
from schemas.models import MutationAction, MutationRequest
from schemas.quality import QUALITY_SCORE
from streams.producer import Producer
from streams.topics import TopicCatalog

__all__ = ["ACTOR", "BanditExperiments", "OpenExperiment", "TraceOutcomes"]

log = logging.getLogger(__name__)

ACTOR: Final = "optimizer:bandit"
RESEND_AFTER_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class OpenExperiment:
    mutation_id: str
    workflow_id: str
    applied_version: int
    previous_version: int
    canary_weight: float
    applied_at: datetime
    config: ExperimentConfig


class TraceOutcomes(TraceCosts):
    """The canary's per-run token counts plus the checker steps' quality scores."""

    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        super().__init__(settings, catalog)
        self._quality: dict[str, dict[str, float]] = {}

    def _apply(self, data: bytes | None) -> None:
        super()._apply(data)
        if not data:
            return
        try:
            trace = json.loads(data)
        except ValueError:
            return
        if trace.get("workflow_id") not in self.workflows:
            return
        metrics = trace.get("metrics")
        run_id = trace.get("run_id")
        if not isinstance(metrics, dict) or not isinstance(run_id, str):
            return
        score = metrics.get(QUALITY_SCORE)
        if isinstance(score, int | float):
            self._quality.setdefault(run_id, {})[str(trace.get("event_id"))] = float(score)

    def quality(self, run_id: str) -> float | None:
        scores = self._quality.get(run_id)
        return fmean(scores.values()) if scores else None

    def start_at(self, since: datetime, workflows: set[str]) -> None:
        super().start_at(since, workflows)
        self._quality.clear()


@dataclass
class _Running:
    open: OpenExperiment
    experiment: Experiment
    sent: MutationRequest | None = None
    sent_at: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)


class BanditExperiments:
    def __init__(
        self, settings: Settings, *, schema: str = "reflux", interval_s: float = 0.2
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.interval_s = interval_s
        self.catalog = TopicCatalog.from_settings(settings)
        self.producer = Producer(settings, client_id="reflux-bandit")
        self.traces = TraceOutcomes(settings, self.catalog)
        self._conn = ReconnectingConnection(settings.postgres_dsn)
        self.running: dict[str, _Running] = {}
        self.requests: list[MutationRequest] = []
        """Every request this instance sent (tests and benchmarks read it)."""

    def _db(self) -> psycopg.Connection[Any]:
        return self._conn.get()

    def open_experiments(self) -> list[OpenExperiment]:
        rows = applied_proposals(self._db(), self.schema, bandit_only=True)
        found = []
        for r in rows:
            if r[5] is None:
                continue
            try:
                config = ExperimentConfig.from_json(r[7] if isinstance(r[7], dict) else {})
            except (TypeError, ValueError) as exc:
                log.warning("proposal %s: evidence.bandit is not usable (%s)", r[0], exc)
                continue
            found.append(
                OpenExperiment(r[0], r[1], int(r[2]), int(r[3]), float(r[4] or 0.5), r[5], config)
            )
        return found

    def _runs(self, e: OpenExperiment) -> list[tuple[Any, ...]]:
        return finished_runs(
            self._db(),
            self.schema,
            e.workflow_id,
            [e.applied_version, e.previous_version],
            e.applied_at,
        )

    def tick(self) -> list[MutationRequest]:
        open_now = {e.mutation_id: e for e in self.open_experiments()}
        for mutation_id in list(self.running):
            if mutation_id not in open_now:
                del self.running[mutation_id]
        for mutation_id, e in open_now.items():
            if mutation_id not in self.running:
                experiment = Experiment(mutation_id, e.config, weight=e.canary_weight)
                self.running[mutation_id] = _Running(e, experiment)
        if not self.running:
            if self.traces.since is not None:
                self.traces.reset()
            return []
        workflows = {r.open.workflow_id for r in self.running.values()}
        earliest = min(r.open.applied_at for r in self.running.values())
        self.traces.cover(earliest, workflows)
        rows = {m: self._runs(r.open) for m, r in self.running.items()}
        if not self.traces.catch_up():
            log.warning("the traces were not read to their end in time; next round")
            return []
        sent = []
        for mutation_id, running in self.running.items():
            request = self._advance(running, rows[mutation_id])
            if request is not None:
                sent.append(request)
        if sent:
            self.producer.flush()
        return sent

    def _advance(self, running: _Running, rows: list[tuple[Any, ...]]) -> MutationRequest | None:
        e, experiment = running.open, running.experiment
        if running.sent is not None and running.sent.action is not MutationAction.REWEIGHT:
            if time.monotonic() - running.sent_at > RESEND_AFTER_S:
                self._send(running, running.sent)
                return running.sent
            return None
        for run_id, version, status, duration in rows:
            if run_id in experiment.seen:
                continue
            outcome = Outcome(
                succeeded=status == "succeeded",
                quality=self.traces.quality(run_id),
                latency_ms=0.0 if duration is None else float(duration),
                cost=self.traces.cost(run_id),
            )
            arm: Arm = "new" if int(version) == e.applied_version else "previous"
            if experiment.observe(RunOutcome(run_id, arm, outcome)):
                log.info("experiment %s: the %s arm's quality drifted; reset", e.mutation_id, arm)
                running.log.append({"at_run": len(experiment.seen), "reset": arm})
                return self._reweight(running, 0.5, f"quality drift of the {arm} arm: reset")
        step = experiment.step()
        if step.decision is not None:
            request = MutationRequest(
                workflow_id=e.workflow_id,
                mutation_id=e.mutation_id,
                action=MutationAction.KEEP if step.decision == "keep" else MutationAction.ROLLBACK,
                actor=ACTOR,
                reason=f"bandit: {step.reason}",
                evidence={
                    "judge": "bandit",
                    "decision": step.decision,
                    "reason": step.reason,
                    "applied_version": e.applied_version,
                    "previous_version": e.previous_version,
                    "applied_at": e.applied_at.isoformat(),
                    "decided_at": datetime.now(UTC).isoformat(),
                    "experiment": experiment.snapshot(),
                    "weights": running.log,
                },
            )
            log.info("experiment %s: %s (%s)", e.mutation_id, step.decision, step.reason)
            self._send(running, request)
            return request
        if step.weight is not None:
            return self._reweight(running, step.weight, step.reason)
        return None

    def _reweight(self, running: _Running, weight: float, reason: str) -> MutationRequest:
        e = running.open
        running.log.append({"at_run": len(running.experiment.seen), "weight": weight})
        request = MutationRequest(
            workflow_id=e.workflow_id,
            mutation_id=e.mutation_id,
            action=MutationAction.REWEIGHT,
            actor=ACTOR,
            canary_weight=weight,
            reason=f"bandit: {reason}",
        )
        self._send(running, request)
        return request

    def _send(self, running: _Running, request: MutationRequest) -> None:
        self.producer.send(self.catalog.mutations, request.workflow_id, request)
        running.sent = request
        running.sent_at = time.monotonic()
        self.requests.append(request)

    def run(self, stop: threading.Event) -> None:
        heartbeat = Heartbeat.from_settings(self.settings)
        log.info("bandit experiments running (schema %s)", self.schema)
        while not stop.is_set():
            heartbeat.beat()
            started = time.monotonic()
            self.tick()
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            self.traces.close()
            self._conn.close()
