"""The scheduler process's retry gate: built from settings, fed with every decision it writes.

The gate (:mod:`processors.scheduler.retry_gate`) is soft state: it learns from the decisions
this process writes (first attempts dispatched, attempts that succeeded or failed) and answers
``decide`` through ``DecisionContext.retry_gate``. What it answered is in the run log
(``StepRetryScheduled``), so nothing here needs to survive a restart. A batch that aborts has
fed the gate already and feeds it again when it is retried: a window that counts those outcomes
twice for a few seconds, which is harmless for a breaker (docs/decisions/0020).

Circuit transitions are logged here, one line each (the open one as a warning), and counted.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from foundation.settings import Settings
from processors.scheduler.decide import Decision
from processors.scheduler.retry_gate import (
    CircuitPolicy,
    CircuitState,
    GatePolicy,
    RetryGate,
    RetryReason,
    Transition,
    retry_signals,
)
from schemas.models import StepRetryScheduled

__all__ = ["GateCounters", "SchedulerGate", "gate_policy"]

log = logging.getLogger(__name__)


def gate_policy(settings: Settings) -> GatePolicy:
    return GatePolicy(
        budget_ratio=settings.scheduler_retry_budget_ratio,
        budget_floor_per_s=settings.scheduler_retry_budget_floor_per_s,
        window_s=settings.scheduler_retry_window_s,
        circuit=CircuitPolicy(
            failure_ratio=settings.scheduler_circuit_failure_ratio,
            min_samples=settings.scheduler_circuit_min_samples,
            window_s=settings.scheduler_retry_window_s,
            cooldown_ms=settings.scheduler_circuit_cooldown_ms,
            max_cooldown_ms=settings.scheduler_circuit_max_cooldown_ms,
            probes=settings.scheduler_circuit_probes,
        ),
    )


@dataclass
class GateCounters:
    retries_held: int = 0
    """StepRetryScheduled written later than their backoff (budget or circuit)."""
    circuits_opened: int = 0
    circuits_closed: int = 0


class SchedulerGate:
    def __init__(self, settings: Settings, instance_id: str) -> None:
        self.gate = RetryGate(gate_policy(settings))
        self.instance_id = instance_id
        self.counters = GateCounters()
        self.recent: deque[Transition] = deque(maxlen=64)
        """The last circuit transitions, oldest first (what the log lines said; for tests and
        debugging)."""

    def fed(self, decision: Decision) -> None:
        """Teach the gate what ``decision`` did (called once its records are queued)."""
        state = decision.state
        if state is None or not decision.events:
            return
        now = decision.events[0].occurred_at
        self.counters.retries_held += sum(
            1
            for event in decision.events
            if isinstance(event, StepRetryScheduled) and event.reason != RetryReason.BACKOFF
        )
        self.gate.observe(retry_signals(decision.events, state), now)
        for t in self.gate.take_transitions():
            self.recent.append(t)
            if t.after is CircuitState.OPEN:
                self.counters.circuits_opened += 1
                level = logging.WARNING
            else:
                self.counters.circuits_closed += t.after is CircuitState.CLOSED
                level = logging.INFO
            log.log(
                level,
                "scheduler %s: circuit of %s %s",
                self.instance_id,
                t.dependency,
                t.describe(),
            )
