"""No record can stop a partition of the scheduler (docs/decisions/0011-no-wedge.md).

Before: one deterministic produce failure (a record over Kafka's 1 MB limit, a missing invoke
topic, an exception while deciding one input) aborted the same transaction forever and every
run of the partition waited. Here a few bad runs share the partitions with ordinary runs, on the
real services; every ordinary run must succeed, each bad run must end with its documented
outcome and error class, nothing may be dead-lettered, and the scheduler must not loop on
aborted transactions.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from foundation.objectstore import S3BlobStore
from foundation.settings import Settings
from node_workers.node import Node, NodeContext, NodeModel
from node_workers.registry import NodeRegistry, default_registry
from processors.scheduler.decide import decide
from processors.scheduler.runtime import loop as scheduler_loop
from processors.scheduler.runtime.loop import SchedulerRuntime
from schemas.models import RedriveStep
from streams.admin import admin_client
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    assert_replay_equivalent,
    transform,
)
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ORDINARY_RUNS = 100
BIG_BYTES = 5_000_000


class EchoIn(NodeModel):
    text: str = ""


class EchoOut(NodeModel):
    text: str


class LateEcho(Node[EchoIn, EchoOut]):
    """Served only by a worker that starts after its run was dispatched."""

    name = "late.echo"
    version = "1.0.0"
    Input, Output = EchoIn, EchoOut

    async def execute(self, params: EchoIn, ctx: NodeContext) -> EchoOut:
        return EchoOut(text=params.text.upper())


class TinyEcho(LateEcho):
    """Served from the start, but its invoke topic only takes records of 1 kB."""

    name = "tiny.echo"


ORDINARY = {
    "id": "ordinary",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [
        transform("a", "n", {"n": "{{ inputs.n }}"}),
        transform("b", "[x, x]", {"x": "{{ steps.a.output.result }}"}, needs=["a"]),
    ],
    "outputs": {"pair": "{{ steps.b.output.result }}"},
}


def echo_workflow(workflow_id: str, node: str, text: Any = "hi") -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"n": {"type": "integer", "required": False}},
        "steps": [
            transform("first", "`1`", None),
            {"id": "say", "node": f"{node}@^1", "params": {"text": text}, "needs": ["first"]},
        ],
        "outputs": {"text": "{{ steps.say.output.text }}"},
    }


def big_workflow(http: HttpTestServer, size: int) -> dict[str, Any]:
    """An upstream output of ``size`` bytes used as the downstream step's params."""
    fetch = {"url": f"{http.url}/big?bytes={size}&json=1", "max_response_bytes": size + 1000}
    return {
        "id": "big",
        "steps": [
            {"id": "fetch", "node": "http.request@^1", "params": fetch},
            transform("size", "length(data)", "{{ steps.fetch.output.body }}", needs=["fetch"]),
        ],
        "outputs": {"size": "{{ steps.size.output.result }}"},
    }


def statuses(harness: Harness, run_ids: list[str]) -> dict[str, tuple[str, Any]]:
    """``run_id -> (status, outputs)`` from the read model, for the runs that have a row."""
    with harness.conn() as conn:
        rows = conn.execute(
            f'SELECT run_id, status, outputs FROM "{harness.schema}".runs WHERE run_id = ANY(%s)',
            (run_ids,),
        ).fetchall()
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}


def wait_all_terminal(harness: Harness, run_ids: list[str], timeout: float) -> dict[str, Any]:
    def check() -> dict[str, tuple[str, Any]]:
        harness._engine_alive()
        return statuses(harness, run_ids)

    return eventually(
        check,
        timeout,
        f"all {len(run_ids)} runs to finish",
        until=lambda seen: (
            len(seen) == len(run_ids)
            and all(status in ("succeeded", "failed", "cancelled") for status, _ in seen.values())
        ),
        describe=lambda: f"statuses: {sorted(s for s, _ in statuses(harness, run_ids).values())}",
    )


def dlq_records(settings: Settings, harness: Harness) -> int:
    """Everything ever written to the dlq topic (its high watermarks; transaction markers count
    too, so 0 means no record at all)."""
    topic = harness.engine.catalog.dlq.topic
    consumer = Consumer({**kafka_client_config(settings), "group.id": f"dlq-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def topic_partitions(admin: AdminClient, topic: str) -> int | None:
    meta = admin.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    return len(meta.partitions)


def create_topic(admin: AdminClient, topic: str, partitions: int = 1, **config: str) -> None:
    for future in admin.create_topics([NewTopic(topic, partitions, 1, config=config)]).values():
        future.result(15)


def scheduler_of(harness: Harness) -> SchedulerRuntime:
    scheduler = harness.engine.scheduler
    assert scheduler is not None
    return scheduler


def test_big_params_and_missing_invoke_topics_end_clearly_while_100_runs_succeed(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer
) -> None:
    admin = admin_client(kafka_settings)
    prefix = kafka_settings.topic_prefix
    late_topic = f"{prefix}.invoke.late.echo.v1"
    clash_topic = f"{prefix}.invoke.clash.echo.v1"
    # A topic whose name differs only by '.' vs '_': Kafka refuses clash.echo's for good.
    create_topic(admin, f"{prefix}.invoke.clash_echo.v1")

    harness = engine_harness(nodes=default_registry(), client_id="no-wedge")
    scheduler = scheduler_of(harness)
    assert topic_partitions(admin, late_topic) is None  # nobody created it: no worker serves it
    harness.register(ORDINARY)
    harness.register(big_workflow(http, BIG_BYTES))
    harness.register(echo_workflow("late", "late.echo"))
    harness.register(echo_workflow("clash", "clash.echo"))

    ordinary = [harness.start("ordinary", {"n": i}) for i in range(ORDINARY_RUNS // 2)]
    big = harness.start("big")
    late = harness.start("late")
    clash = harness.start("clash")
    ordinary += [harness.start("ordinary", {"n": i}) for i in range(ORDINARY_RUNS // 2, 100)]

    # Every ordinary run succeeds, with its own output, while the special runs are in flight.
    finished = wait_all_terminal(harness, ordinary, timeout=240)
    outcomes = {run_id: finished[run_id] for run_id in ordinary}
    succeeded = [r for r, (status, _) in outcomes.items() if status == "succeeded"]
    assert len(succeeded) == ORDINARY_RUNS, sorted(s for s, _ in outcomes.values())
    assert [outcomes[r][1] for r in ordinary] == [{"pair": [i, i]} for i in range(ORDINARY_RUNS)]

    # 5 MB upstream output used as a param: claim-checked in the run log, run succeeds.
    run = harness.wait(big, timeout=120)
    assert (run.status, run.outputs) == ("succeeded", {"size": BIG_BYTES}), run
    scheduled = [
        e.payload
        for e in harness.events(big)
        # The scheduling of the step: one StepDispatched that schedules it too (ADR 0075).
        if e.event_type == "StepDispatched"
        and e.payload["scheduled"]
        and e.payload["step"]["step_id"] == "size"
    ]
    assert len(scheduled) == 1
    assert scheduled[0]["params"] is None
    assert scheduled[0]["params_ref"]["size_bytes"] > BIG_BYTES
    assert scheduled[0]["params_ref"]["uri"].startswith("s3://")
    assert_replay_equivalent(harness, big)

    # A node whose invoke topic cannot exist: the step fails with NodeUnavailable, at once.
    run = harness.wait(clash, timeout=60)
    assert (run.status, run.failed_step) == ("failed", "say"), run
    assert run.error is not None and run.error["error_class"] == "NodeUnavailable"
    assert clash_topic in run.error["message"] and "collides" in run.error["message"]
    assert harness.steps(clash)["first"].status == "succeeded"
    assert topic_partitions(admin, clash_topic) is None

    # A node nobody serves yet: the scheduler created its topic and the invocation waits there.
    harness.wait_step(late, "say", "dispatched", timeout=60)
    assert late_topic in scheduler.invoke_topics.created
    assert topic_partitions(admin, late_topic) == kafka_settings.default_partitions
    assert harness.run(late) is not None and harness.run(late).status == "running"  # type: ignore[union-attr]
    # ...and a worker started afterwards picks it up: nothing depended on start order.
    engine_harness(
        nodes=NodeRegistry([LateEcho()]),
        scheduler=False,
        projector=False,
        trigger_router=False,
        client_id="late-worker",
    )
    run = harness.wait(late, timeout=60)
    assert (run.status, run.outputs) == ("succeeded", {"text": "HI"}), run

    # Nothing was dead-lettered, and no transaction was aborted: no failure left its input.
    assert scheduler.stats.dead_lettered == 0
    assert dlq_records(kafka_settings, harness) == 0
    assert scheduler.stats.aborted == 0, scheduler.stats
    assert scheduler.stats.failed_inputs == 0, scheduler.stats
    print(
        f"{ORDINARY_RUNS} ordinary runs succeeded; big params claim-checked "
        f"({scheduled[0]['params_ref']['size_bytes']} bytes); clash -> NodeUnavailable; "
        f"late topic created on first use; stats: batches={scheduler.stats.batches} "
        f"aborted={scheduler.stats.aborted}"
    )


def test_a_bug_in_decide_and_a_record_the_broker_refuses_fail_only_their_runs(
    engine_harness: HarnessFactory, kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = admin_client(kafka_settings)
    prefix = kafka_settings.topic_prefix
    # The broker's limit for this topic is far below the producer's: only the commit finds out.
    create_topic(
        admin,
        f"{prefix}.invoke.tiny.echo.v1",
        kafka_settings.default_partitions,
        **{"max.message.bytes": "1024"},
    )

    bug_result = str(uuid.uuid4())  # its first step's result makes decide raise
    bug_start = str(uuid.uuid4())  # its StartRun makes decide raise
    real_decide = decide

    def buggy_decide(state: Any, input: Any, ctx: Any) -> Any:
        if input.run_id == bug_start or (
            input.run_id == bug_result and type(input).__name__ == "NodeResult"
        ):
            raise KeyError(f"injected bug for {input.run_id}")
        return real_decide(state, input, ctx)

    monkeypatch.setattr(scheduler_loop, "decide", buggy_decide)
    harness = engine_harness(
        nodes=NodeRegistry([*default_registry(), TinyEcho()]), client_id="no-wedge-faults"
    )
    scheduler = scheduler_of(harness)
    harness.register(ORDINARY)
    # Incompressible (the producer compresses with lz4): ~6 kB, over the topic's 1 kB limit.
    harness.register(echo_workflow("tiny", "tiny.echo", text=os.urandom(3000).hex()))

    ordinary = [harness.start("ordinary", {"n": i}) for i in range(20)]
    harness.start("ordinary", {"n": -1}, run_id=bug_result)
    harness.start("ordinary", {"n": -2}, run_id=bug_start)
    tiny = harness.start("tiny")
    ordinary += [harness.start("ordinary", {"n": i}) for i in range(20, 40)]

    finished = wait_all_terminal(harness, ordinary, timeout=180)
    assert [finished[r] for r in ordinary] == [("succeeded", {"pair": [i, i]}) for i in range(40)]

    # The bug while deciding a result: that run fails, naming the exception and the input.
    run = harness.wait(bug_result, timeout=60)
    assert (run.status, run.failed_step) == ("failed", "a"), run
    assert run.error is not None
    assert run.error["error_class"] == "KeyError"
    assert "injected bug" in run.error["message"] and "NodeResult" in run.error["message"]
    # The bug while deciding its StartRun: the command is rejected with the reason.
    rejected = eventually(
        lambda: [e for e in harness.events(bug_start) if e.event_type == "CommandRejected"],
        60,
        f"a CommandRejected for {bug_start}",
    )
    assert len(rejected) == 1
    assert rejected[0].payload["reason"].startswith("[KeyError] ")
    assert harness.run(bug_start) is None  # never started

    # The invocation the broker refused at commit: its step fails, the step before stands.
    run = harness.wait(tiny, timeout=120)
    assert (run.status, run.failed_step) == ("failed", "say"), run
    assert run.error is not None and run.error["error_class"] == "PayloadTooLarge", run.error
    assert "MSG_SIZE_TOO_LARGE" in run.error["message"]
    steps = harness.steps(tiny)
    assert (steps["first"].status, steps["say"].status) == ("succeeded", "failed")
    assert_replay_equivalent(harness, tiny)

    # Three inputs failed on their runs; nothing dead-lettered; the refused commit cost two
    # aborts (its batch, then the input alone), not a loop. librdkafka often answers the first
    # transaction after that abort with OUT_OF_ORDER_SEQUENCE_NUMBER "skipped sequence numbers"
    # on a partition whose records the abort purged (seen here, 2026-12-06); the scheduler
    # retries that batch as a transient failure: one more abort, at most one.
    stats = scheduler.stats
    assert stats.failed_inputs == 3, stats
    assert stats.dead_lettered == 0
    assert dlq_records(kafka_settings, harness) == 0
    assert stats.transient_failures <= 1, stats
    assert (stats.aborted - stats.transient_failures, stats.isolated_batches) == (2, 1), stats
    print(
        f"40 ordinary runs succeeded; failed inputs={stats.failed_inputs}, "
        f"aborted={stats.aborted}, isolated batches={stats.isolated_batches}"
    )


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_object_store_is_retried_with_backoff_and_rebuilds_nothing(
    engine_harness: HarnessFactory,
    kafka_settings: Settings,
    http: HttpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = engine_harness(nodes=default_registry(), client_id="no-wedge-outage")
    scheduler = scheduler_of(harness)
    eventually(
        lambda: sorted(scheduler.states),
        30,
        "the scheduler to own every partition",
        until=lambda owned: len(owned) == kafka_settings.default_partitions,
    )
    # Every rebuild of owned partitions (recovery from snapshot + tail) counts here.
    rebuilds_before = scheduler.stats.recoveries
    harness.register(ORDINARY)
    size = 600_000  # over the 256 KiB claim-check threshold: the scheduler must read S3
    harness.register(big_workflow(http, size))

    # The object store goes away for the scheduler (its workers keep theirs).
    working = scheduler._blobs
    unreachable = kafka_settings.model_copy(
        update={"s3_endpoint": f"http://127.0.0.1:{closed_port()}"}
    )
    scheduler._blobs = S3BlobStore(unreachable)
    big = harness.start("big")
    ordinary = [harness.start("ordinary", {"n": i}) for i in range(20)]
    eventually(
        lambda: scheduler.stats.transient_failures,
        60,
        "three tries of the batch that needs the object store",
        until=lambda failures: failures >= 3,
    )
    during = statuses(harness, [big, *ordinary])
    assert not [r for r, (status, _) in during.items() if status == "failed"], during
    # Back: the same batch commits, nothing was lost, failed or rebuilt.
    scheduler._blobs = working
    finished = wait_all_terminal(harness, [big, *ordinary], timeout=120)
    assert finished[big] == ("succeeded", {"size": size})
    assert [finished[r] for r in ordinary] == [("succeeded", {"pair": [i, i]}) for i in range(20)]
    stats = scheduler.stats
    assert stats.aborted == stats.transient_failures >= 3, stats
    assert (stats.failed_inputs, stats.isolated_batches, stats.dead_lettered) == (0, 0, 0)
    assert dlq_records(kafka_settings, harness) == 0
    assert scheduler.stats.recoveries == rebuilds_before, "an abort rebuilt partitions"
    print(f"object store outage: {stats.transient_failures} tries, {rebuilds_before} recoveries")


def test_a_missing_claim_checked_output_fails_the_step_that_needs_it(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer
) -> None:
    harness = engine_harness(nodes=default_registry(), client_id="no-wedge-blob")
    scheduler = scheduler_of(harness)
    flaky = f"{http.url}/flaky?key={uuid.uuid4().hex}&fail=1"
    body = "{{ steps.fetch.output.body }}"
    size = 300_000
    harness.register(
        {
            "id": "blob",
            "steps": [
                big_workflow(http, size)["steps"][0],
                # Fails once: the run stops before "use" renders its params.
                {"id": "gate", "node": "http.request@^1", "params": {"url": flaky}},
                transform("use", "length(data)", body, needs=["fetch", "gate"]),
            ],
        }
    )
    run_id = harness.start("blob")
    assert harness.wait(run_id).status == "failed"
    harness.wait_step(run_id, "fetch", "succeeded")  # recorded even after the run failed
    ref = harness.steps(run_id)["fetch"].output_ref
    assert ref is not None and ref["size_bytes"] > size
    # The claim-checked output disappears (retention, an operator, a bug)...
    store = S3BlobStore(kafka_settings)
    bucket, _, object_key = ref["uri"].removeprefix("s3://").partition("/")
    store.client.delete_object(Bucket=bucket, Key=object_key)
    # ...then the run is re-driven and "use" needs it: that step fails, clearly, and only it.
    harness.command(RedriveStep(run_id=run_id, step_id="gate"))
    harness.wait_step(run_id, "gate", "succeeded")
    run = harness.wait(run_id, {"failed"}, timeout=60)
    assert run.failed_step == "use" and run.error is not None, run
    assert run.error["error_class"] == "BlobNotFound" and ref["uri"] in run.error["message"]
    assert scheduler.stats.aborted == 0 and scheduler.stats.dead_lettered == 0
    assert_replay_equivalent(harness, run_id)
