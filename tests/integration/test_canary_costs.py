"""The canary judge's cost source on real Kafka: LLM tokens per run summed from the traces topic
(processors/canary/runtime.TraceCosts), read from a start time, only for the workflows judged,
a redelivered trace counted once; and the final effect's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer as KafkaProducer

from foundation.settings import Settings
from processors.canary.judge import RunObservation
from processors.canary.runtime import TraceCosts, final_effect
from schemas.models import Trace, TraceStatus
from schemas.trace_json import encode_trace
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog


def _trace(run_id: str, workflow_id: str, tokens: int | None, at: datetime) -> Trace:
    return Trace(
        run_id=run_id,
        workflow_id=workflow_id,
        workflow_version=2,
        step_id="ask",
        node="openai.chat",
        node_version="1.0.0",
        invocation_id=f"inv-{run_id}",
        status=TraceStatus.OK,
        start=at,
        end=at,
        latency_ms=0,
        inputs_hash="h",
        retry_count=0,
        cache_hit=False,
        cost_tokens=tokens,
    )


def test_costs_are_summed_per_run_from_the_start_time_once_per_trace(
    kafka_settings: Settings, topics: TopicCatalog
) -> None:
    producer = Producer(kafka_settings, client_id="canary-costs")
    now = datetime.now(UTC)
    old = _trace("r-old", "judged", 999, now - timedelta(hours=1))
    first = _trace("r1", "judged", 120, now)
    records = [
        first,
        first,  # redelivered: the same event id
        _trace("r1", "judged", 30, now),
        _trace("r2", "judged", None, now),  # no tokens: costs 0
        _trace("r3", "other", 500, now),  # a workflow not judged
    ]
    try:
        for trace in records:
            producer.send(topics.traces, trace.node, encode_trace(trace))
        producer.flush(10)
    finally:
        producer.close()
    # The old trace carries an old Kafka timestamp: before the start time.
    raw = KafkaProducer({**kafka_client_config(kafka_settings)})
    raw.produce(
        topics.traces.topic,
        encode_trace(old),
        old.node.encode(),
        timestamp=int(old.start.timestamp() * 1000),
    )
    assert raw.flush(10) == 0
    costs = TraceCosts(kafka_settings, topics)
    try:
        costs.start_at(now - timedelta(minutes=1), {"judged"})
        assert costs.catch_up(timeout=15)
        assert costs.cost("r1") == 150.0
        assert costs.cost("r2") == 0.0
        assert costs.cost("r3") == 0.0  # not a judged workflow
        assert costs.cost("r-old") == 0.0  # before the start time
        costs.forget(["r1"])
        assert costs.cost("r1") == 0.0
        # Restarting from an earlier time recounts what is there.
        costs.start_at(now - timedelta(hours=2), {"judged"})
        assert costs.catch_up(timeout=15)
        assert costs.cost("r-old") == 999.0 and costs.cost("r1") == 150.0
        costs.reset()  # no canary left: nothing counted, nothing fetched
        assert costs.since is None and costs.cost("r1") == 0.0
        assert costs.catch_up()
    finally:
        costs.close()


def test_the_final_effect_per_arm() -> None:
    runs = [
        RunObservation("b1", False, True, 100.0, 10.0),
        RunObservation("b2", False, True, 200.0, 10.0),
        RunObservation("b3", False, False, None, 10.0),
        RunObservation("c1", True, True, 300.0, 5.0),
        RunObservation("c2", True, True, 300.0, 5.0),
    ]
    effect = final_effect(runs)
    assert effect["baseline"]["runs"] == 3 and effect["baseline"]["success_rate"] == 2 / 3
    assert effect["baseline"]["p95_ms"] == 200.0 and effect["canary"]["p95_ms"] == 300.0
    assert effect["change"]["success_rate"] == pytest.approx(1 / 3)
    assert effect["change"]["p95_ratio"] == 1.5
    assert effect["change"]["cost_ratio"] == 0.5
