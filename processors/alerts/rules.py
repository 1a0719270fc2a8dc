"""SLO alert rules and their pure evaluation: metrics in, firing/resolved transitions out.

The runtime (:mod:`processors.alerts.evaluator`) queries ClickHouse into a
:class:`MetricsSnapshot`, calls :func:`evaluate` with the alerts that are firing now, publishes
the returned events and folds them into its active set with :func:`apply_events`. Nothing here
does I/O or reads a clock, so every decision can be tested with plain values.

Transitions only, with hysteresis: an alert fires when the value goes *above* the threshold
(with at least ``min_samples`` attempts behind it) and resolves only when it falls to
``threshold * clear_ratio`` or below. A value between the two levels changes nothing, so a
metric hovering at the objective does not flap, and an alert that fires is never announced twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

from foundation.errors import ConfigurationError
from schemas.models import AlertKind, AlertState

__all__ = [
    "NODE_KINDS",
    "ActiveAlerts",
    "AlertEvent",
    "AlertKey",
    "AlertRule",
    "AlertRuleError",
    "MetricsSnapshot",
    "NodeSample",
    "WindowMetrics",
    "WorkflowSample",
    "apply_events",
    "evaluate",
    "format_window",
]

NODE_KINDS: Final = frozenset({AlertKind.LATENCY_P99, AlertKind.ERROR_RATE})
"""Kinds whose subject is a node; the other (``cost_budget``) watches a workflow id."""


class AlertRuleError(ConfigurationError):
    error_class = "AlertRule"


def format_window(window: timedelta) -> str:
    """``timedelta(minutes=90)`` -> ``"1h30m"``; the compact form people write in ``?window=``."""
    seconds = int(window.total_seconds())
    if seconds <= 0:
        return f"{window.total_seconds():g}s"
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One objective, evaluated for every subject (node or workflow) seen in its window."""

    rule_id: str
    kind: AlertKind
    threshold: float
    """Default objective: ms for latency, a 0..1 rate for errors, tokens for cost."""
    window: timedelta
    overrides: Mapping[str, float] = field(default_factory=dict, hash=False)
    """Per-subject objectives (node name or workflow id -> threshold)."""
    min_samples: int = 0
    """Attempts needed in the window before the rule may fire (a p99 of 3 samples is noise)."""
    clear_ratio: float = 0.9
    """A firing alert resolves at ``threshold * clear_ratio`` or below (hysteresis)."""

    def __post_init__(self) -> None:
        if not self.rule_id or "/" in self.rule_id:
            raise AlertRuleError(
                f"Expected a non-empty rule id without '/', but got {self.rule_id!r}"
            )
        if self.window <= timedelta(0):
            raise AlertRuleError(
                f"Expected a positive window for rule {self.rule_id!r}, but got {self.window}"
            )
        if isinstance(self.min_samples, bool) or self.min_samples < 0:
            raise AlertRuleError(
                f"Expected min_samples >= 0 for rule {self.rule_id!r}, but got {self.min_samples!r}"
            )
        if not 0 < self.clear_ratio <= 1:
            raise AlertRuleError(
                f"Expected 0 < clear_ratio <= 1 for rule {self.rule_id!r}, "
                f"but got {self.clear_ratio!r}"
            )
        for subject, threshold in {"(default)": self.threshold, **self.overrides}.items():
            self._check_threshold(subject, threshold)
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def _check_threshold(self, subject: str, threshold: float) -> None:
        if not threshold > 0:
            raise AlertRuleError(
                f"Expected a positive threshold for rule {self.rule_id!r} {subject}, "
                f"but got {threshold!r}"
            )
        if self.kind is AlertKind.ERROR_RATE and threshold > 1:
            raise AlertRuleError(
                f"Expected an error-rate threshold between 0 and 1 for rule {self.rule_id!r} "
                f"{subject}, but got {threshold!r} (write 1% as 0.01)"
            )

    def threshold_for(self, subject: str) -> float:
        return self.overrides.get(subject, self.threshold)


@dataclass(frozen=True, slots=True)
class NodeSample:
    node: str
    attempts: int
    failures: int
    latency_ms_p99: float


@dataclass(frozen=True, slots=True)
class WorkflowSample:
    workflow_id: str
    attempts: int
    cost_tokens: int


@dataclass(frozen=True, slots=True)
class WindowMetrics:
    """Every node and workflow with attempts in one window (absent = no attempts)."""

    nodes: Mapping[str, NodeSample] = field(default_factory=dict)
    workflows: Mapping[str, WorkflowSample] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What the rules look at, per window length (rules with equal windows share a query)."""

    windows: Mapping[timedelta, WindowMetrics]

    def at(self, window: timedelta) -> WindowMetrics:
        try:
            return self.windows[window]
        except KeyError:
            have = ", ".join(format_window(w) for w in sorted(self.windows)) or "none"
            raise AlertRuleError(
                f"Expected metrics for window {format_window(window)} in the snapshot, "
                f"but it has {have}"
            ) from None


AlertKey = tuple[str, str]
"""(rule_id, subject): one alert; its incidents come and go."""


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A transition of one alert; mapped 1:1 to the ``Alert`` record on the alerts topic."""

    rule_id: str
    kind: AlertKind
    subject: str
    state: AlertState
    value: float
    threshold: float
    samples: int
    window: timedelta
    started_at: datetime
    """When the incident began firing; a resolved event repeats its firing event's time."""
    at: datetime
    message: str

    @property
    def key(self) -> AlertKey:
        return (self.rule_id, self.subject)

    @property
    def alert_id(self) -> str:
        return f"{self.rule_id}/{self.subject}/{int(self.started_at.timestamp() * 1000)}"


ActiveAlerts = Mapping[AlertKey, AlertEvent]
"""The firing event of every alert that is firing now."""


def _measure(rule: AlertRule, metrics: WindowMetrics) -> dict[str, tuple[float, int]]:
    """subject -> (value, samples) of what the rule watches."""
    if rule.kind is AlertKind.LATENCY_P99:
        return {n: (s.latency_ms_p99, s.attempts) for n, s in metrics.nodes.items()}
    if rule.kind is AlertKind.ERROR_RATE:
        return {
            n: (s.failures / s.attempts if s.attempts else 0.0, s.attempts)
            for n, s in metrics.nodes.items()
        }
    return {w: (float(s.cost_tokens), s.attempts) for w, s in metrics.workflows.items()}


def _describe(
    rule: AlertRule,
    subject: str,
    state: AlertState,
    *,
    value: float,
    threshold: float,
    samples: int,
) -> str:
    over = format_window(rule.window)
    if rule.kind is AlertKind.LATENCY_P99:
        what = f"p99 latency of node {subject} is {value:.0f} ms over {over} ({samples} attempts)"
        limit = f"{threshold:.0f} ms objective"
    elif rule.kind is AlertKind.ERROR_RATE:
        what = f"error rate of node {subject} is {value:.2%} over {over} ({samples} attempts)"
        limit = f"{threshold:.2%} objective"
    else:
        what = f"workflow {subject} used {value:.0f} tokens over {over}"
        limit = f"budget of {threshold:.0f} tokens"
    if state is AlertState.FIRING:
        return f"{what}, above the {limit}"
    return f"{what}, back within the {limit}"


def evaluate(
    rules: Sequence[AlertRule],
    snapshot: MetricsSnapshot,
    active: ActiveAlerts,
    now: datetime,
) -> list[AlertEvent]:
    """The transitions that ``snapshot`` causes, ordered by rule then subject.

    - A rule fires for a subject that is not firing when its value is above the subject's
      threshold and at least ``max(min_samples, 1)`` attempts are behind it.
    - A firing alert resolves when its value is at or below ``threshold * clear_ratio``, with any
      number of samples: a subject with no attempts left in the window measures 0 and resolves.
    - A firing alert whose rule is no longer configured resolves (nothing can violate it).
    """
    ids = [rule.rule_id for rule in rules]
    if len(set(ids)) != len(ids):
        raise AlertRuleError(f"Expected unique rule ids, but got {ids}")
    events: list[AlertEvent] = []
    for rule in rules:
        measured = _measure(rule, snapshot.at(rule.window))
        firing = {subject for (rule_id, subject) in active if rule_id == rule.rule_id}
        for subject in sorted(set(measured) | firing):
            value, samples = measured.get(subject, (0.0, 0))
            threshold = rule.threshold_for(subject)
            current = active.get((rule.rule_id, subject))
            if current is None:
                if samples >= max(rule.min_samples, 1) and value > threshold:
                    state, started = AlertState.FIRING, now
                else:
                    continue
            elif value <= threshold * rule.clear_ratio:
                state, started = AlertState.RESOLVED, current.started_at
            else:
                continue
            events.append(
                AlertEvent(
                    rule_id=rule.rule_id,
                    kind=rule.kind,
                    subject=subject,
                    state=state,
                    value=value,
                    threshold=threshold,
                    samples=samples,
                    window=rule.window,
                    started_at=started,
                    at=now,
                    message=_describe(
                        rule, subject, state, value=value, threshold=threshold, samples=samples
                    ),
                )
            )
    known = set(ids)
    for key in sorted(k for k in active if k[0] not in known):
        orphan = active[key]
        events.append(
            replace(
                orphan,
                state=AlertState.RESOLVED,
                at=now,
                message=f"rule {orphan.rule_id} is no longer configured; "
                f"its alert for {orphan.subject} is closed",
            )
        )
    return events


def apply_events(active: ActiveAlerts, events: Iterable[AlertEvent]) -> dict[AlertKey, AlertEvent]:
    """Fold transitions into the active set: firing adds (or replaces), resolved removes."""
    out = dict(active)
    for event in events:
        if event.state is AlertState.FIRING:
            out[event.key] = event
        else:
            out.pop(event.key, None)
    return out
