"""A failing dependency's circuit opens, holds the retries, and closes again, on the real engine
(docs/decisions/0020-retry-budget-and-circuit.md).

Six runs call one host that answers 503 to its first six calls and 200 afterwards. The
scheduler's circuit for that host opens after four failures (``min_samples`` 4 for the test),
so the retries wait out the 2 s cool-down instead of hitting the host; the half-open probes
succeed, the circuit closes, every run succeeds. What a user sees is checked where they would
look: the run events (``StepRetryScheduled`` with reason ``circuit_open``), the scheduler's
retry traces on the traces topic, and the scheduler's record of the transitions.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from foundation.settings import Settings
from processors.scheduler.retry_gate import CircuitState
from schemas.models import Trace
from schemas.trace_json import decode_trace
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import HarnessFactory, assert_replay_equivalent
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RUNS = 6
COOLDOWN = timedelta(seconds=2)


def _retry_traces(settings: Settings, topic: str, expected: int) -> list[Trace]:
    """The scheduler's retry traces on the traces topic, once ``expected`` of them arrived."""
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.retry-traces-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    found: list[Trace] = []

    def read() -> int:
        for message in consumer.consume(500, timeout=0.2):
            if message.error() is not None or not message.value():
                continue
            trace = decode_trace(message.value() or b"")
            if trace.context.get("kind") == "retry":
                found.append(trace)
        return len(found)

    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        eventually(
            read, 30, f"{expected} retry traces on {topic}", until=lambda n: n >= expected,
            interval=0,
        )  # fmt: skip
    finally:
        consumer.close()
    return found


def test_a_failing_hosts_circuit_opens_holds_retries_and_closes_when_it_recovers(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer
) -> None:
    settings = kafka_settings.model_copy(
        update={
            "scheduler_circuit_min_samples": 4,
            "scheduler_circuit_cooldown_ms": int(COOLDOWN.total_seconds() * 1000),
            "scheduler_circuit_probes": 2,
        }
    )
    harness = engine_harness(settings)
    key = uuid.uuid4().hex[:8]
    harness.register(
        {
            "id": "sick-host",
            "inputs": {"n": {"type": "integer", "required": True}},
            "steps": [
                {
                    "id": "call",
                    "node": "http.request@^1",
                    "params": {
                        "url": f"{http.url}/flaky?key={key}&fail={RUNS}&n={{{{ inputs.n }}}}"
                    },
                    "timeout": "5s",
                    "retry": {"max_attempts": 6, "initial_backoff": "100ms", "max_backoff": "1s"},
                }
            ],
        }
    )
    run_ids = [harness.start("sick-host", {"n": n}) for n in range(RUNS)]
    runs = {run_id: harness.wait(run_id, timeout=60) for run_id in run_ids}
    assert {r.status for r in runs.values()} == {"succeeded"}, runs

    # The scheduler opened the circuit of that host, and closed it again after the probes.
    port = http.url.rsplit(":", 1)[1]
    dependency = f"http.request 127.0.0.1:{port}"
    scheduler = harness.engine.scheduler
    assert scheduler is not None
    transitions = [t for t in scheduler.retry_gate.recent if t.dependency == dependency]
    assert [t.after for t in transitions][:1] == [CircuitState.OPEN]
    assert transitions[-1].after is CircuitState.CLOSED
    opened = transitions[0]
    assert (opened.failures, opened.samples) == (4, 4)
    gate = scheduler.retry_gate.gate
    assert gate.status(dependency, datetime.now(UTC)).circuit is CircuitState.CLOSED
    assert scheduler.retry_gate.counters.circuits_opened >= 1

    # Held retries are in the run log, with the reason and the circuit's state...
    events = [e for run_id in run_ids for e in harness.events(run_id)]
    retries = [e.payload for e in events if e.event_type == "StepRetryScheduled"]
    held = [p for p in retries if p["reason"] == "circuit_open"]
    assert held, retries
    assert all(p["circuit"] == "open" and p["dependency"] == dependency for p in held)
    assert all(p["held_ms"] > 0 for p in held)
    # ...and no retry was dispatched while the circuit was open (first attempts never wait).
    open_until = opened.at + COOLDOWN
    dispatched = [e for e in events if e.event_type == "StepDispatched"]
    assert len(dispatched) == len(http.requests_to("/flaky"))  # one call per attempt
    retried = [e for e in dispatched if e.payload["attempt"] > 1]
    assert not [e for e in retried if opened.at < e.occurred_at < open_until]
    assert [e for e in retried if e.occurred_at >= open_until]  # they went after it

    # The scheduler traced every retry decision, with the gate's answer.
    traces = _retry_traces(settings, harness.engine.catalog.traces.topic, len(retries))
    assert len(traces) == len(retries)
    traced_held = [t for t in traces if t.context["reason"] == "circuit_open"]
    assert len(traced_held) == len(held)
    for trace in traced_held:
        assert trace.context["circuit"] == "open" and trace.context["dependency"] == dependency
        assert trace.end >= open_until - timedelta(milliseconds=1)
        assert trace.metrics["held_ms"] > 0 and trace.node == "http.request"
    for run_id in run_ids:
        assert_replay_equivalent(harness, run_id)
