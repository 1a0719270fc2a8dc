"""SLO alert rules: pure evaluation (fire, stay, resolve, min samples, budgets, hysteresis), the
record mapping and the configuration. No services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from processors.alerts.config import (
    COST_BUDGET_RULE,
    ERROR_RATE_RULE,
    LATENCY_RULE,
    AlertSettings,
    rules_from_settings,
)
from processors.alerts.records import from_record, to_record
from processors.alerts.rules import (
    AlertEvent,
    AlertRule,
    AlertRuleError,
    MetricsSnapshot,
    NodeSample,
    WindowMetrics,
    WorkflowSample,
    apply_events,
    evaluate,
    format_window,
)
from schemas import decode, encode
from schemas.models import Alert, AlertKind, AlertState

T0 = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)
HOUR = timedelta(hours=1)

ERRORS = AlertRule(ERROR_RATE_RULE, AlertKind.ERROR_RATE, 0.01, FIVE, min_samples=20)
LATENCY = AlertRule(
    LATENCY_RULE, AlertKind.LATENCY_P99, 1000.0, FIVE, {"llm.chat": 8000.0}, min_samples=20
)
BUDGET = AlertRule(COST_BUDGET_RULE, AlertKind.COST_BUDGET, 10_000.0, HOUR, {"big": 50_000.0})


def nodes(*samples: NodeSample, window: timedelta = FIVE) -> MetricsSnapshot:
    return MetricsSnapshot({window: WindowMetrics(nodes={s.node: s for s in samples})})


def node(name: str, attempts: int, failures: int = 0, p99: float = 100.0) -> NodeSample:
    return NodeSample(name, attempts, failures, p99)


def spend(**tokens: int) -> MetricsSnapshot:
    flows = {w: WorkflowSample(w, 10, t) for w, t in tokens.items()}
    return MetricsSnapshot({HOUR: WindowMetrics(workflows=flows)})


def step(
    rules: list[AlertRule],
    snapshot: MetricsSnapshot,
    active: dict[tuple[str, str], AlertEvent],
    at: datetime,
) -> tuple[list[AlertEvent], dict[tuple[str, str], AlertEvent]]:
    events = evaluate(rules, snapshot, active, at)
    return events, apply_events(active, events)


# -- error rate ---------------------------------------------------------------------------------


def test_error_rate_fires_once_then_stays_quiet_while_still_failing() -> None:
    events, active = step([ERRORS], nodes(node("http.request", 100, 5)), {}, T0)
    assert [(e.rule_id, e.subject, e.state) for e in events] == [
        (ERROR_RATE_RULE, "http.request", AlertState.FIRING)
    ]
    fired = events[0]
    assert (fired.value, fired.threshold, fired.samples) == (0.05, 0.01, 100)
    assert fired.started_at == fired.at == T0
    assert "error rate of node http.request is 5.00% over 5m" in fired.message
    assert "above the 1.00% objective" in fired.message

    later = T0 + timedelta(seconds=15)
    again, still = step([ERRORS], nodes(node("http.request", 120, 9)), active, later)
    assert again == [] and still == active


def test_error_rate_needs_min_samples_to_fire() -> None:
    assert evaluate([ERRORS], nodes(node("n", 19, 19)), {}, T0) == []
    assert len(evaluate([ERRORS], nodes(node("n", 20, 1)), {}, T0)) == 1


def test_error_rate_at_the_threshold_does_not_fire() -> None:
    assert evaluate([ERRORS], nodes(node("n", 100, 1)), {}, T0) == []  # 1% is not above 1%


def test_resolves_below_the_clear_level_with_the_incident_start() -> None:
    _, active = step([ERRORS], nodes(node("n", 100, 5)), {}, T0)
    later = T0 + timedelta(minutes=7)
    events, after = step([ERRORS], nodes(node("n", 1000, 2)), active, later)
    assert [(e.state, e.value) for e in events] == [(AlertState.RESOLVED, 0.002)]
    resolved = events[0]
    assert resolved.started_at == T0 and resolved.at == later
    assert resolved.alert_id == active[(ERROR_RATE_RULE, "n")].alert_id
    assert "back within" in resolved.message
    assert after == {}


def test_hysteresis_keeps_an_alert_between_clear_level_and_threshold() -> None:
    _, active = step([ERRORS], nodes(node("n", 100, 5)), {}, T0)
    # 0.95% is below the 1% objective but above the 0.9% clear level: no flapping.
    assert evaluate([ERRORS], nodes(node("n", 2000, 19)), active, T0 + FIVE) == []
    assert len(evaluate([ERRORS], nodes(node("n", 2000, 18)), active, T0 + FIVE)) == 1


def test_a_node_without_attempts_resolves_but_few_failing_samples_do_not() -> None:
    _, active = step([ERRORS], nodes(node("n", 100, 50)), {}, T0)
    assert evaluate([ERRORS], nodes(node("n", 3, 1)), active, T0 + FIVE) == []
    gone = evaluate([ERRORS], nodes(node("other", 50)), active, T0 + FIVE)
    assert [(e.subject, e.state, e.value, e.samples) for e in gone] == [
        ("n", AlertState.RESOLVED, 0.0, 0)
    ]


def test_fires_again_as_a_new_incident_after_resolving() -> None:
    _, active = step([ERRORS], nodes(node("n", 100, 5)), {}, T0)
    _, active = step([ERRORS], nodes(node("n", 100, 0)), active, T0 + FIVE)
    again, active = step([ERRORS], nodes(node("n", 100, 9)), active, T0 + 2 * FIVE)
    assert again[0].state is AlertState.FIRING and again[0].started_at == T0 + 2 * FIVE
    assert again[0].alert_id.endswith(str(int((T0 + 2 * FIVE).timestamp() * 1000)))


# -- latency and budget -------------------------------------------------------------------------


def test_latency_uses_per_node_objectives() -> None:
    snapshot = nodes(node("http.request", 50, p99=1500.0), node("llm.chat", 50, p99=5000.0))
    events = evaluate([LATENCY], snapshot, {}, T0)
    assert [(e.subject, e.threshold) for e in events] == [("http.request", 1000.0)]
    assert "p99 latency of node http.request is 1500 ms" in events[0].message
    slow = evaluate([LATENCY], nodes(node("llm.chat", 50, p99=9000.0)), {}, T0)
    assert [(e.subject, e.threshold) for e in slow] == [("llm.chat", 8000.0)]


def test_latency_min_samples() -> None:
    assert evaluate([LATENCY], nodes(node("n", 5, p99=90_000.0)), {}, T0) == []


def test_cost_budget_per_workflow_fires_and_resolves_as_the_window_slides() -> None:
    events, active = step([BUDGET], spend(small=12_000, big=40_000), {}, T0)
    assert [(e.subject, e.kind, e.value, e.threshold) for e in events] == [
        ("small", AlertKind.COST_BUDGET, 12_000.0, 10_000.0)
    ]
    assert "workflow small used 12000 tokens over 1h, above the budget of 10000" in (
        events[0].message
    )
    assert evaluate([BUDGET], spend(small=9_500), active, T0 + HOUR) == []  # above 90% clear
    resolved = evaluate([BUDGET], spend(small=8_000), active, T0 + HOUR)
    assert [(e.subject, e.state) for e in resolved] == [("small", AlertState.RESOLVED)]


def test_rules_with_their_own_windows_read_their_own_metrics() -> None:
    snapshot = MetricsSnapshot(
        {
            FIVE: WindowMetrics(nodes={"n": node("n", 100, 50)}),
            HOUR: WindowMetrics(workflows={"w": WorkflowSample("w", 1, 20_000)}),
        }
    )
    events = evaluate([ERRORS, BUDGET], snapshot, {}, T0)
    assert [(e.rule_id, e.subject) for e in events] == [
        (ERROR_RATE_RULE, "n"),
        (COST_BUDGET_RULE, "w"),
    ]
    with pytest.raises(AlertRuleError, match="window 1h in the snapshot, but it has 5m"):
        evaluate([BUDGET], nodes(node("n", 1)), {}, T0)


def test_an_alert_of_a_removed_rule_resolves() -> None:
    _, active = step([ERRORS], nodes(node("n", 100, 50)), {}, T0)
    events = evaluate([LATENCY], nodes(node("n", 100)), active, T0 + FIVE)
    assert [(e.rule_id, e.state) for e in events] == [(ERROR_RATE_RULE, AlertState.RESOLVED)]
    assert "no longer configured" in events[0].message


def test_duplicate_rule_ids_are_refused() -> None:
    with pytest.raises(AlertRuleError, match="unique rule ids"):
        evaluate([ERRORS, ERRORS], nodes(), {}, T0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule_id": ""}, "non-empty rule id"),
        ({"rule_id": "a/b"}, "without '/'"),
        ({"threshold": 0.0}, "positive threshold"),
        ({"threshold": 5.0}, "write 1% as 0.01"),
        ({"overrides": {"n": -1.0}}, "rule 'r' n"),
        ({"window": timedelta(0)}, "positive window"),
        ({"min_samples": -1}, "min_samples >= 0"),
        ({"clear_ratio": 1.5}, "clear_ratio"),
    ],
)
def test_rule_validation(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "rule_id": "r",
        "kind": AlertKind.ERROR_RATE,
        "threshold": 0.01,
        "window": FIVE,
    }
    fields.update(kwargs)
    with pytest.raises(AlertRuleError, match=message):
        AlertRule(**fields)  # type: ignore[arg-type]


# -- records and configuration -----------------------------------------------------------------


def test_events_round_trip_through_the_avro_record() -> None:
    event = evaluate([ERRORS], nodes(node("http.request", 100, 5)), {}, T0)[0]
    record = to_record(event)
    assert record.alert_id == f"{ERROR_RATE_RULE}/http.request/{int(T0.timestamp() * 1000)}"
    assert record.window_ms == 300_000
    decoded = decode(encode(record), Alert)
    assert from_record(decoded) == event


def test_format_window() -> None:
    assert format_window(timedelta(minutes=90)) == "1h30m"
    assert format_window(timedelta(days=1, seconds=5)) == "1d5s"
    assert format_window(timedelta(seconds=45)) == "45s"


def test_default_rules_follow_the_seed_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules = {r.rule_id: r for r in rules_from_settings(AlertSettings())}
    assert rules[LATENCY_RULE].threshold == 1000.0
    assert rules[ERROR_RATE_RULE].threshold == 0.01
    assert rules[ERROR_RATE_RULE].min_samples == 20
    assert rules[COST_BUDGET_RULE].window == HOUR
    monkeypatch.setenv("REFLUX_ALERTS_LATENCY_P99_MS_BY_NODE", '{"llm.chat": 8000}')
    monkeypatch.setenv("REFLUX_ALERTS_ERROR_RATE", "0.05")
    configured = {r.rule_id: r for r in rules_from_settings(AlertSettings())}
    assert configured[LATENCY_RULE].threshold_for("llm.chat") == 8000.0
    assert configured[LATENCY_RULE].threshold_for("other") == 1000.0
    assert configured[ERROR_RATE_RULE].threshold == 0.05
