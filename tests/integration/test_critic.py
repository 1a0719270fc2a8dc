"""The critic on the real broker: traces with a latency shift and a failure spike go onto a
test-prefixed traces topic; the faust runtime publishes the expected diagnoses, once each."""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from foundation.settings import Settings
from processors.critic.kafka_loop import episodes_topic, restore_episodes
from processors.critic.runtime import CriticProcessor
from projections.postgres.queries import get_workflow
from schemas.models import (
    Diagnosis,
    DiagnosisKind,
    DiagnosisSeverity,
    ErrorInfo,
    Trace,
    TraceStatus,
)
from schemas.serde import decode
from schemas.trace_json import encode_trace
from streams.consumer import consumer_config
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import HarnessFactory
from tests.support.kafka_log import read_log
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

T0_MS = 1_780_000_000_000
STABLE = 500
SHIFTED = 150


def _traces(rng: random.Random) -> list[Trace]:
    """Step `fetch` (http.request@1.2.0): latency x2 from trace STABLE on. Step `pay`
    (payments.call@2.0.0): 1% failures, then 40% from trace STABLE on. One run per pair."""
    out: list[Trace] = []
    for i in range(STABLE + SHIFTED):
        run_id = f"run-{i:04d}"
        start = T0_MS + i * 500
        factor = 2.0 if i >= STABLE else 1.0
        latency = max(1, round(math.exp(rng.gauss(math.log(100 * factor), 0.25))))
        out.append(_trace(run_id, "fetch", "http.request", "1.2.0", start, latency, None))
        fail_rate = 0.4 if i >= STABLE else 0.01
        failed = rng.random() < fail_rate
        latency2 = max(1, round(math.exp(rng.gauss(math.log(50), 0.25))))
        error = ErrorInfo(error_class="HttpStatusError", message="502 bad gateway", retryable=True)
        pay = _trace(
            run_id,
            "pay",
            "payments.call",
            "2.0.0",
            start + 150,
            latency2,
            error if failed else None,
        )
        out.append(pay)
    return out


def _trace(
    run_id: str,
    step: str,
    node: str,
    version: str,
    start_ms: int,
    latency: int,
    error: ErrorInfo | None,
) -> Trace:
    return Trace(
        run_id=run_id,
        seq=1,
        workflow_id="checkout",
        workflow_version=3,
        step_id=step,
        node=node,
        node_version=version,
        invocation_id=f"{run_id}-{step}",
        status=TraceStatus.ERROR if error else TraceStatus.OK,
        start=datetime.fromtimestamp(start_ms / 1000, UTC),
        end=datetime.fromtimestamp((start_ms + latency) / 1000, UTC),
        latency_ms=latency,
        inputs_hash=f"{run_id}-{step}",
        error=error,
        retry_count=0,
        cache_hit=False,
    )


ERRORS: dict[int, list[BaseException]] = {}


def _consumed(processor: CriticProcessor) -> int:
    if ERRORS.get(id(processor)):
        pytest.fail(f"the critic failed: {ERRORS[id(processor)]!r}")
    return processor.stats.consumed


@pytest.fixture(params=["kafka", "faust"])
def critic(
    request: pytest.FixtureRequest, kafka_settings: Settings, tmp_path: Path
) -> Iterator[CriticProcessor]:
    processor = CriticProcessor(
        kafka_settings, data_dir=tmp_path / "faust", schema=None, engine=request.param
    )
    stop = threading.Event()
    errors = ERRORS[id(processor)] = []

    def run() -> None:
        try:
            processor.run(stop)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="critic", daemon=True)
    thread.start()
    yield processor
    stop.set()
    processor.interrupt()
    thread.join(30)
    assert not thread.is_alive(), "the critic did not stop within 30 s"
    assert not errors, f"the critic failed: {errors!r}"


def _diagnoses(settings: Settings, catalog: TopicCatalog) -> list[Diagnosis]:
    records = read_log(settings, catalog.diagnoses.topic, catalog.diagnoses.partitions)
    return [decode(value, Diagnosis) for _, _, value in records if value is not None]


def test_latency_shift_and_failure_spike_become_diagnoses(
    kafka_settings: Settings, critic: CriticProcessor
) -> None:
    catalog = critic.catalog
    traces = _traces(random.Random(7))
    with Producer(kafka_settings, client_id="test-critic") as producer:
        producer.send(catalog.traces.topic, "http.request", b"{not json")
        for trace in traces:
            producer.send(catalog.traces.topic, trace.node, encode_trace(trace))

    eventually(
        lambda: _consumed(critic),
        90,
        "the critic to consume every trace",
        until=lambda n: n == len(traces) + 1,
        describe=lambda: f"stats: {critic.stats}",
    )
    assert critic.stats.malformed == 1

    def expected_found() -> list[Diagnosis]:
        found = _diagnoses(kafka_settings, catalog)
        kinds = {(d.kind, d.subject) for d in found}
        assert (DiagnosisKind.LATENCY_DRIFT, "workflow:checkout/step:fetch") in kinds, kinds
        assert (DiagnosisKind.FAILURE_DRIFT, "workflow:checkout/step:pay") in kinds, kinds
        return found

    found = eventually(
        expected_found,
        30,
        "the latency and failure diagnoses on the topic",
        describe=lambda: f"stats: {critic.stats}, critic: {critic.critic and critic.critic.stats}",
    )
    assert critic.stats.failed == 0
    assert critic.stats.published == len(found)
    if critic.engine == "kafka":
        # The traces sit on two partitions, read one after the other: no run was analysed
        # before its traces on the other one were read (processors/critic/event_clock.py).
        assert critic.critic is not None and critic.critic.late_traces == 0

    latency = [
        d
        for d in found
        if d.kind == DiagnosisKind.LATENCY_DRIFT and d.subject == "workflow:checkout/step:fetch"
    ]
    # One diagnosis per episode, raised after the shift, not before.
    assert len(latency) == 1, [d.explanation for d in latency]
    d = latency[0]
    assert d.severity == DiagnosisSeverity.WARNING
    assert d.metrics["ratio"] > 1.3
    assert d.workflow_id == "checkout" and d.workflow_version == 3 and d.step_id == "fetch"
    assert d.node == "http.request" and d.node_version == "1.2.0"
    shifted_runs = {f"run-{i:04d}" for i in range(STABLE, STABLE + SHIFTED)}
    assert d.example_run_ids and set(d.example_run_ids) <= shifted_runs
    assert d.detected_at >= datetime.fromtimestamp((T0_MS + STABLE * 500) / 1000, UTC)
    assert "rose" in d.explanation and "fetch" in d.explanation

    failure = [
        d
        for d in found
        if d.kind == DiagnosisKind.FAILURE_DRIFT and d.subject == "workflow:checkout/step:pay"
    ]
    assert len(failure) == 1
    assert failure[0].severity == DiagnosisSeverity.CRITICAL
    assert failure[0].metrics["rate_after"] >= 0.2 > failure[0].metrics["rate_before"]
    assert failure[0].error_class == "HttpStatusError"
    # The node versions drift too, as their own subjects.
    subjects = {(x.kind, x.subject) for x in found}
    assert (DiagnosisKind.LATENCY_DRIFT, "node:http.request@1.2.0") in subjects
    assert (DiagnosisKind.FAILURE_DRIFT, "node:payments.call@2.0.0") in subjects
    # Before the change no drift, anomaly or error cluster; at most the bottleneck (fetch is
    # about half of each run's critical path, around the bottleneck threshold).
    change = datetime.fromtimestamp((T0_MS + STABLE * 500) / 1000, UTC)
    early = [(x.kind, x.subject) for x in found if x.detected_at < change]
    assert set(early) <= {(DiagnosisKind.BOTTLENECK, "workflow:checkout/step:fetch")}, early
    # Keys are subjects; ids are stable and unique.
    assert len({x.diagnosis_id for x in found}) == len(found)
    if critic.engine == "kafka":
        # The flood guard's state is on its compacted topic: a restarted critic reads it back.
        restored = restore_episodes(
            kafka_settings, episodes_topic(catalog), f"{catalog.prefix}.test-restore"
        )
        entry = restored["latency_drift|workflow:checkout/step:fetch|up"]
        assert entry["diagnosis_id"] == d.diagnosis_id
        # Offsets come from librdkafka's offset store: every trace's is committed, so a
        # restarted critic resumes after the last one.
        eventually(
            lambda: _uncommitted(kafka_settings, critic.app_id, catalog),
            30,
            "the critic to commit every trace's offset",
            until=lambda left: left == 0,
        )


def _uncommitted(settings: Settings, group: str, catalog: TopicCatalog) -> int:
    reader = Consumer(consumer_config(group, settings))
    try:
        spec = catalog.traces
        parts = [TopicPartition(spec.topic, p) for p in range(spec.partitions)]
        ends = sum(reader.get_watermark_offsets(tp, 10)[1] for tp in parts)
        return ends - sum(max(tp.offset, 0) for tp in reader.committed(parts, timeout=10))
    finally:
        reader.close()


def test_dev_engine_critic_reads_definitions_for_sequential_steps(
    engine_harness: HarnessFactory,
) -> None:
    """DevEngine(critic=True): the critic runs under the engine's supervisor and reads the
    workflow definitions of the engine's read model. `a` and `b` share no data but `b` needs
    `a`; `c` reads `b`: traces of runs that ran them in sequence -> `sequential_independent`
    diagnoses for (a, b) and (a, c), none for (b, c)."""
    h = engine_harness(
        scheduler=False,
        workers=False,
        trigger_router=False,
        mutation_processor=False,
        replay_runner=False,
        critic=True,
    )
    definition = {
        "id": "seq",
        "steps": [
            {"id": "a", "node": "transform@^1", "params": {"expression": "x", "data": {"x": 1}}},
            {
                "id": "b",
                "node": "transform@^1",
                "needs": ["a"],
                "params": {"expression": "y", "data": {"y": 2}},
            },
            {
                "id": "c",
                "node": "transform@^1",
                "needs": ["b"],
                "params": {"expression": "result", "data": "{{ steps.b.output }}"},
            },
        ],
    }
    h.register(definition)

    def projected() -> bool:
        with psycopg.connect(h.settings.postgres_dsn) as conn:
            return get_workflow(conn, "seq", 1, schema=h.schema) is not None

    eventually(projected, 30, "the workflow definition in the read model")
    catalog = h.engine.catalog
    spans = {"a": (0, 150), "b": (160, 310), "c": (320, 330)}
    with Producer(h.settings, client_id="test-critic-dev") as producer:
        for run in range(14):
            base = T0_MS + run * 60_000  # runs close 30 s (event time) after their last trace
            for step, (start, end) in spans.items():
                trace = _trace(
                    f"run-{run}", step, "transform", "1.0.0", base + start, end - start, None
                )
                trace = trace.model_copy(update={"workflow_id": "seq", "workflow_version": 1})
                producer.send(catalog.traces.topic, trace.node, encode_trace(trace))

    def sequential() -> list[Diagnosis]:
        found = [
            d
            for d in _diagnoses(h.settings, catalog)
            if d.kind == DiagnosisKind.SEQUENTIAL_INDEPENDENT
        ]
        # The critic may publish the two diagnoses in separate batches: wait for both.
        pairs = {tuple(json.loads(d.evidence)["steps"]) for d in found}
        assert {("a", "b"), ("a", "c")} <= pairs, f"sequential_independent so far: {pairs}"
        return found

    found = eventually(sequential, 60, "sequential_independent diagnoses for (a, b) and (a, c)")
    pairs = {tuple(json.loads(d.evidence)["steps"]): d for d in found}
    assert set(pairs) == {("a", "b"), ("a", "c")}  # never (b, c): c reads b's output
    assert pairs[("a", "b")].subject == "workflow:seq/step:b"
    assert pairs[("a", "b")].metrics["saving_ms"] == 150
    assert not h.engine.errors()
