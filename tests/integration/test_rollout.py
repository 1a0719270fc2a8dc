"""Gradual rollout on real services: the scheduler's catalog view (``nodes`` topic) routes runs
between two majors of a test node served side by side, by run id.

``echo@1.0.0`` and ``echo@2.0.0`` are defined here (not built-ins): they answer with the version
that ran, so a run's output, its ``StepDispatched`` and the worker's trace can be compared with
what the pure rollout (:func:`processors.node_catalog.choose_version`) predicts for its run id.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from foundation.settings import Settings
from node_workers.node import Node, NodeContext, NodeModel
from node_workers.registry import NodeRegistry
from processors.node_catalog import CatalogVersion, choose_version
from processors.node_catalog.runtime_view import CatalogResolver, NodeCatalogKafkaView
from schemas.models import NodeCatalogEntry, NodeStatus
from schemas.trace_json import decode_trace
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import Harness, HarnessFactory
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


class EchoIn(NodeModel):
    text: str = ""


class EchoOut(NodeModel):
    text: str
    version: str


class EchoV1(Node[EchoIn, EchoOut]):
    name = "echo"
    version = "1.0.0"
    Input, Output = EchoIn, EchoOut

    async def execute(self, params: EchoIn, ctx: NodeContext) -> EchoOut:
        return EchoOut(text=params.text, version=self.version)


class EchoV2(EchoV1):
    version = "2.0.0"

    async def execute(self, params: EchoIn, ctx: NodeContext) -> EchoOut:
        return EchoOut(text=params.text.upper(), version=self.version)


def entry(version: str, status: NodeStatus, weight: float) -> NodeCatalogEntry:
    return NodeCatalogEntry(
        name="echo", version=version, status=status, rollout_weight=weight, manifest={}
    )


def publish(settings: Settings, catalog: TopicCatalog, *entries: NodeCatalogEntry) -> None:
    with Producer(settings, client_id="rollout-test") as producer:
        for record in entries:
            producer.send(catalog.nodes, f"{record.name}@{record.version}", record)
        producer.flush(10)


def run_ids(n: int, salt: str) -> list[str]:
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{salt}-{i}")) for i in range(n)]


# -- the real resolver on 1,000 run ids ------------------------------------------------------


def test_a_90_10_rollout_over_1000_runs_through_the_kafka_view(
    kafka_settings: Settings, topics: TopicCatalog
) -> None:
    publish(
        kafka_settings,
        topics,
        entry("1.0.0", NodeStatus.PRODUCTION, 1.0),
        entry("2.0.0", NodeStatus.DRAFT, 0.0),
        # Later entries of a version win (as on the compacted topic).
        entry("2.0.0", NodeStatus.PRODUCTION, 0.1),
    )
    view = NodeCatalogKafkaView(kafka_settings, topics)
    try:
        view.catch_up()
        resolve = CatalogResolver(view)
        n, p = 1000, 0.1
        ids = [str(uuid.uuid4()) for _ in range(n)]  # fresh ids: the split is a real sample
        chosen = [resolve("echo", ">=1", run_id) for run_id in ids]
        v2 = chosen.count("2.0.0")
        sigma = math.sqrt(n * p * (1 - p))  # binomial: 9.49 runs
        assert abs(v2 - n * p) <= 3 * sigma, f"{v2} of {n} runs on 2.0.0 (expected 100 +- 28)"
        assert chosen.count("1.0.0") == n - v2
        print(f"rollout 90/10 over {n} runs: {n - v2} on 1.0.0, {v2} on 2.0.0 (3 sigma = 28.5)")
        # Deterministic: the same run ids get the same versions again.
        assert [resolve("echo", ">=1", r) for r in ids] == chosen
        # Pinned and caret constraints keep v1 at any weight.
        assert {resolve("echo", "^1", r) for r in ids[:200]} == {"1.0.0"}
        assert {resolve("echo", "1.0.0", r) for r in ids[:200]} == {"1.0.0"}
        # A node the catalog does not know resolves as before the catalog existed.
        assert resolve("http.request", "^1", ids[0]) == "^1"
        assert resolve("http.request", "1.2.0", ids[0]) == "1.2.0"
        # A version registered a moment ago is found by the catch-up on a miss, not refused.
        publish(kafka_settings, topics, entry("3.0.0", NodeStatus.PRODUCTION, 0.0))
        assert resolve("echo", "^3", ids[0]) == "3.0.0"
    finally:
        view.close()


# -- the engine: two majors side by side -----------------------------------------------------


@pytest.fixture
def echo_harness(engine_harness: HarnessFactory) -> Harness:
    return engine_harness(nodes=NodeRegistry([EchoV1(), EchoV2()]), client_id="rollout-e2e")


def workflow(workflow_id: str, constraint: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "steps": [{"id": "say", "node": f"echo@{constraint}", "params": {"text": "hi"}}],
        "outputs": {"version": "{{ steps.say.output.version }}"},
    }


PROBE_WORKFLOW = "catalog-probe"
"""Runs of this workflow only make the schedulers resolve ``echo`` (tests leave them out)."""


def settle(harness: Harness, *entries: NodeCatalogEntry) -> None:
    """Publish catalog entries and wait until every scheduler of the engine routes by them.

    A scheduler reads ``nodes`` when it resolves a node version (at most every 50 ms), not on
    its own, so each check starts a probe run (``echo@>=1``, valid under every catalog these
    tests publish), waits until it is decided and then asks the schedulers which entry of each
    version they hold."""
    publish(harness.settings, harness.engine.catalog, *entries)
    harness.register(workflow(PROBE_WORKFLOW, ">=1"))
    schedulers = harness.engine.schedulers
    assert schedulers, "settle needs an engine with a scheduler"

    def stale_after_a_probe() -> list[str]:
        harness.wait(harness.start(PROBE_WORKFLOW))
        return [
            f"{scheduler.instance_id} routes {record.name}@{record.version} by "
            f"{scheduler.node_catalog_event_id(record.name, record.version)}, "
            f"not {record.event_id}"
            for scheduler in schedulers
            for record in entries
            if scheduler.node_catalog_event_id(record.name, record.version) != record.event_id
        ]

    eventually(
        stale_after_a_probe,
        30,
        "every scheduler to route by the published catalog entries",
        until=lambda stale: not stale,
        interval=0,  # each check waits for its probe run
    )


def dispatched(harness: Harness, run_id: str) -> tuple[str, str]:
    events = [e for e in harness.events(run_id) if e.event_type == "StepDispatched"]
    assert len(events) == 1, events
    return events[0].payload["node_version"], events[0].payload["invoke_topic"]


def worker_traces(settings: Settings, catalog: TopicCatalog, run_ids: list[str]) -> dict[str, str]:
    """run id -> node_version of the worker traces of echo (JSON on ``traces``) of ``run_ids``."""
    topic = catalog.traces.topic
    wanted = set(run_ids)
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.trace-reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    found: dict[str, str] = {}

    def read() -> set[str]:
        """Consumes what arrived; returns the run ids without a trace yet."""
        for message in consumer.consume(500, timeout=0.2):
            if message.error() is not None or not message.value():
                continue
            trace = decode_trace(message.value() or b"")
            echo_run = trace.node == "echo" and trace.invocation_id is not None
            if echo_run and trace.run_id in wanted:
                found[trace.run_id] = trace.node_version
        return wanted - set(found)

    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        eventually(
            read,
            20,
            f"an echo trace of each of {len(wanted)} runs on {topic}",
            until=lambda missing: not missing,
            interval=0,  # consume() waits
        )
    finally:
        consumer.close()
    return found


def test_two_majors_side_by_side_split_by_run_id(echo_harness: Harness) -> None:
    h = echo_harness
    catalog = [
        CatalogVersion("1.0.0", NodeStatus.PRODUCTION, 1.0),
        CatalogVersion("2.0.0", NodeStatus.PRODUCTION, 0.5),
    ]
    settle(
        h, entry("1.0.0", NodeStatus.PRODUCTION, 1.0), entry("2.0.0", NodeStatus.PRODUCTION, 0.5)
    )
    h.register(workflow("rolling", ">=1"))
    ids = run_ids(40, f"{h.settings.topic_prefix}-rolling")
    expected = {run_id: choose_version("echo", ">=1", catalog, run_id) for run_id in ids}
    assert set(expected.values()) == {"1.0.0", "2.0.0"}  # both versions must run
    for run_id in ids:
        h.start("rolling", run_id=run_id)
    prefix = h.settings.topic_prefix
    for run_id in ids:
        run = h.wait(run_id, timeout=60)
        assert run.status == "succeeded", run
        version = expected[run_id]
        major = version.split(".")[0]
        assert run.outputs == {"version": version}  # the worker of that version ran it
        assert dispatched(h, run_id) == (version, f"{prefix}.invoke.echo.v{major}")
        assert h.steps(run_id)["say"].node_version == version
    traces = worker_traces(h.settings, h.engine.catalog, ids)
    assert {r: traces.get(r) for r in ids} == expected


def test_pinned_workflows_keep_v1_and_deprecation_refuses_new_runs(echo_harness: Harness) -> None:
    h = echo_harness
    # v2 takes every run a range lets it take...
    settle(
        h, entry("1.0.0", NodeStatus.PRODUCTION, 1.0), entry("2.0.0", NodeStatus.PRODUCTION, 1.0)
    )
    h.register(workflow("pinned", "1.0.0"))
    h.register(workflow("caret", "^1"))
    h.register(workflow("open", "*"))
    runs = {wf: [h.start(wf) for _ in range(3)] for wf in ("pinned", "caret", "open")}
    for wf, ids in runs.items():
        for run_id in ids:
            run = h.wait(run_id)
            assert run.status == "succeeded", run
            # ...but pinned and caret constraints that exclude v2 keep v1.
            want = "2.0.0" if wf == "open" else "1.0.0"
            assert run.outputs == {"version": want}, (wf, run)

    # Deprecating v1: new runs that can only use it fail at once, non-retryably, and say why.
    settle(h, entry("1.0.0", NodeStatus.DEPRECATED, 0.0))
    pinned = h.start("pinned")
    caret = h.start("caret")
    for run_id, message in [
        (
            pinned,
            "Expected echo@1.0.0 to accept new runs, but it is deprecated (the catalog has "
            "1.0.0 (deprecated), 2.0.0 (production)); pin a supported version or use a range",
        ),
        (
            caret,
            "Expected a production version of echo matching ^1, but the catalog has "
            "1.0.0 (deprecated), 2.0.0 (production)",
        ),
    ]:
        run = h.wait(run_id)
        assert run.status == "failed", run
        assert run.error == {
            "error_class": "NodeVersionUnavailable",
            "message": message,
            "retryable": False,
        }
        assert run.failed_step == "say"
        kinds = [e.event_type for e in h.events(run_id)]
        assert "StepDispatched" not in kinds and "StepRetryScheduled" not in kinds
    # Ranges that allow v2 are unaffected.
    assert h.wait(h.start("open")).outputs == {"version": "2.0.0"}
