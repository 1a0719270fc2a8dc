"""End to end on the real services: scheduler, workers and projector through Kafka.

Every scenario ends with the replay-equivalence check: the scheduler's live state equals the
state folded from the projected event log, and the projection's rows agree with both.
"""

from __future__ import annotations

import uuid
from typing import Any

from schemas.models import CancelRun, PauseRun, RedriveStep, ResumeRun, Trigger
from tests.integration.engine_fixtures import Harness, assert_replay_equivalent, transform
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually


def http_step(step_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "node": "http.request@^1", "params": {"url": url}, **extra}


LINEAR = {
    "id": "linear",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [
        transform("a", "n", {"n": "{{ inputs.n }}"}),
        transform("b", "[x, x]", {"x": "{{ steps.a.output.result }}"}, needs=["a"]),
    ],
    "outputs": {"pair": "{{ steps.b.output.result }}"},
}


def test_linear(harness: Harness) -> None:
    harness.register(LINEAR)
    run_id = harness.start("linear", {"n": 21})
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert run.outputs == {"pair": [21, 21]}
    assert_replay_equivalent(harness, run_id)


def test_diamond(harness: Harness) -> None:
    harness.register(
        {
            "id": "diamond",
            "steps": [
                transform("top", "`3`", None),
                transform("left", "x", {"x": "{{ steps.top.output.result }}"}, needs=["top"]),
                transform("right", "x", {"x": "{{ steps.top.output.result }}"}, needs=["top"]),
                transform(
                    "bottom",
                    "sum([l, r])",
                    {"l": "{{ steps.left.output.result }}", "r": "{{ steps.right.output.result }}"},
                    needs=["left", "right"],
                ),
            ],
            "outputs": {"total": "{{ steps.bottom.output.result }}"},
        }
    )
    run_id = harness.start("diamond")
    run = harness.wait(run_id)
    assert (run.status, run.outputs) == ("succeeded", {"total": 6})
    assert_replay_equivalent(harness, run_id)


def test_fan_out_fan_in(harness: Harness) -> None:
    branches = [transform(f"b{i}", f"`{i}`", None, needs=["start"]) for i in range(5)]
    harness.register(
        {
            "id": "fan",
            "steps": [
                transform("start", "`0`", None),
                *branches,
                transform(
                    "join",
                    "sum(@)",
                    [f"{{{{ steps.b{i}.output.result }}}}" for i in range(5)],
                    needs=[f"b{i}" for i in range(5)],
                ),
            ],
            "outputs": {"sum": "{{ steps.join.output.result }}"},
        }
    )
    run_id = harness.start("fan")
    run = harness.wait(run_id)
    assert (run.status, run.outputs) == ("succeeded", {"sum": 10})
    events = [e.event_type for e in harness.events(run_id)]
    assert events.count("StepDispatched") == 7
    assert_replay_equivalent(harness, run_id)


def test_condition_skips_a_branch_and_propagates(harness: Harness) -> None:
    harness.register(
        {
            "id": "cond",
            "inputs": {"amount": {"type": "number", "required": True}},
            "steps": [
                transform("score", "amount", {"amount": "{{ inputs.amount }}"}),
                transform(
                    "review",
                    "`1`",
                    None,
                    needs=["score"],
                    when="steps.score.output.result > `1000`",
                ),
                transform("notify", "`1`", None, needs=["review"]),
                transform(
                    "approve",
                    "`1`",
                    None,
                    needs=["score"],
                    when="steps.score.output.result <= `1000`",
                ),
            ],
        }
    )
    run_id = harness.start("cond", {"amount": 50})
    run = harness.wait(run_id)
    assert run.status == "succeeded"
    steps = {s: row.status for s, row in harness.steps(run_id).items()}
    assert steps == {
        "score": "succeeded",
        "review": "skipped",
        "notify": "skipped",
        "approve": "succeeded",
    }
    assert_replay_equivalent(harness, run_id)


def test_retry_then_success_against_a_flaky_server(harness: Harness, http: HttpTestServer) -> None:
    key = uuid.uuid4().hex
    harness.register(
        {
            "id": "flaky",
            "steps": [
                http_step(
                    "call",
                    f"{http.url}/flaky?key={key}&fail=2",
                    retry={"max_attempts": 4, "initial_backoff": "50ms"},
                )
            ],
            "outputs": {"calls": "{{ steps.call.output.body.calls }}"},
        }
    )
    run_id = harness.start("flaky")
    run = harness.wait(run_id)
    assert (run.status, run.outputs) == ("succeeded", {"calls": 3})
    types = [e.event_type for e in harness.events(run_id)]
    assert types.count("StepRetryScheduled") == 2 and types.count("StepFailed") == 2
    attempts = {r.headers.get("idempotency-key") for r in http.requests_to("/flaky")}
    assert len(http.requests_to("/flaky")) == 3, attempts
    assert_replay_equivalent(harness, run_id)


def test_retries_exhausted_fail_the_run_with_the_error_class(
    harness: Harness, http: HttpTestServer
) -> None:
    harness.register(
        {
            "id": "down",
            "steps": [
                http_step(
                    "call",
                    f"{http.url}/status/503",
                    retry={"max_attempts": 2, "initial_backoff": "20ms"},
                )
            ],
        }
    )
    run_id = harness.start("down")
    run = harness.wait(run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error["error_class"] == "Http5xx"
    assert run.failed_step == "call"
    assert len(http.requests_to("/status/503")) == 2
    assert_replay_equivalent(harness, run_id)


def test_step_timeout(harness: Harness, http: HttpTestServer) -> None:
    harness.register(
        {
            "id": "slow",
            "steps": [http_step("call", f"{http.url}/slow?ms=3000", timeout="300ms")],
        }
    )
    run_id = harness.start("slow")
    run = harness.wait(run_id, timeout=20)
    assert run.status == "failed"
    assert run.error is not None and run.error["error_class"] == "StepTimeout"
    assert harness.steps(run_id)["call"].status == "timed_out"
    assert_replay_equivalent(harness, run_id)


def test_identical_second_run_is_served_from_cache(harness: Harness) -> None:
    harness.register(
        {
            "id": "cached",
            "steps": [
                transform("t", "a", {"a": "{{ inputs.a }}"}, cache={"enabled": True, "ttl": "1h"})
            ],
            "inputs": {"a": {"type": "integer", "required": True}},
            "outputs": {"a": "{{ steps.t.output.result }}"},
        }
    )
    first = harness.wait(harness.start("cached", {"a": 7}))
    second_id = harness.start("cached", {"a": 7})
    second = harness.wait(second_id)
    assert first.outputs == second.outputs == {"a": 7}
    step = harness.steps(second_id)["t"]
    assert step.cache_hit is True
    types = [e.event_type for e in harness.events(second_id)]
    assert "StepDispatched" not in types
    assert_replay_equivalent(harness, second_id)


def test_cancel(harness: Harness, http: HttpTestServer) -> None:
    harness.register({"id": "cancel", "steps": [http_step("wait", f"{http.url}/slow?ms=5000")]})
    run_id = harness.start("cancel")
    harness.wait_step(run_id, "wait", "running")
    harness.command(CancelRun(run_id=run_id, reason="test"))
    run = harness.wait(run_id)
    assert run.status == "cancelled"
    assert_replay_equivalent(harness, run_id)


def test_pause_and_resume(harness: Harness, http: HttpTestServer) -> None:
    harness.register(
        {
            "id": "pause",
            "steps": [
                http_step("slow", f"{http.url}/slow?ms=1500"),
                transform("after", "`1`", None, needs=["slow"]),
            ],
        }
    )
    run_id = harness.start("pause")
    harness.wait_step(run_id, "slow", "running")
    harness.command(PauseRun(run_id=run_id))
    harness.wait(run_id, {"paused"})
    harness.wait_step(run_id, "slow", "succeeded")
    # The scheduler schedules a step in the same decision as the result that frees it: once the
    # projection has every event the scheduler wrote for this run (same last_seq), a wrongly
    # scheduled "after" would be in it.
    scheduler = harness.engine.scheduler
    assert scheduler is not None

    def live_and_projected() -> tuple[int | None, int | None]:
        live, row = scheduler.run_state(run_id), harness.run(run_id)
        return (
            None if live is None else live.last_seq,
            None if row is None else row.last_seq,
        )

    eventually(
        live_and_projected,
        10,
        f"the projection of {run_id} to hold every event of the scheduler (live, projected)",
        until=lambda seqs: seqs[0] is not None and seqs[0] == seqs[1],
    )
    assert "after" not in harness.steps(run_id), "a paused run must not schedule new steps"
    live = scheduler.run_state(run_id)
    assert live is not None
    assert live.steps["after"].status.value == "pending", live.steps
    assert harness.run(run_id).status == "paused"  # type: ignore[union-attr]
    harness.command(ResumeRun(run_id=run_id))
    run = harness.wait(run_id)
    assert run.status == "succeeded"
    assert_replay_equivalent(harness, run_id)


def test_redrive_a_failed_step(harness: Harness, http: HttpTestServer) -> None:
    key = uuid.uuid4().hex
    harness.register(
        {
            "id": "redrive",
            "steps": [
                http_step("call", f"{http.url}/flaky?key={key}&fail=1"),
                transform("after", "`1`", None, needs=["call"]),
            ],
        }
    )
    run_id = harness.start("redrive")
    assert harness.wait(run_id).status == "failed"
    harness.command(RedriveStep(run_id=run_id, step_id="call"))
    run = harness.wait(run_id, {"succeeded"})
    assert run.status == "succeeded"
    assert harness.steps(run_id)["after"].status == "succeeded"
    assert_replay_equivalent(harness, run_id)


def test_illegal_command_becomes_a_rejection_event(harness: Harness, http: HttpTestServer) -> None:
    harness.register({"id": "busy", "steps": [http_step("wait", f"{http.url}/slow?ms=1500")]})
    run_id = harness.start("busy")
    harness.wait_step(run_id, "wait", "running")
    harness.command(ResumeRun(run_id=run_id, command_id="resume-1"))
    rejected = eventually(
        lambda: [e for e in harness.events(run_id) if e.event_type == "CommandRejected"],
        10,
        "a CommandRejected event",
    )
    payload = rejected[0].payload
    assert payload["command_id"] == "resume-1"
    assert "Expected run to be paused" in payload["reason"], payload["reason"]
    assert harness.wait(run_id).status == "succeeded"
    assert_replay_equivalent(harness, run_id)


def test_run_started_from_a_trigger_record(harness: Harness) -> None:
    from processors.triggers.mapping import run_id_for_trigger

    harness.register(LINEAR)
    trigger = Trigger(
        source="orders-system",
        source_key="order-42",
        workflow_id="linear",
        payload={"n": 5},
        idempotency_key="evt-42",
    )
    harness.send(harness.engine.catalog.triggers.topic, trigger.source_key, trigger)
    harness.send(harness.engine.catalog.triggers.topic, trigger.source_key, trigger)  # redelivery
    run_id = run_id_for_trigger("orders-system", "evt-42")
    run = harness.wait(run_id)
    assert (run.status, run.outputs, run.source) == ("succeeded", {"pair": [5, 5]}, "orders-system")
    starts = [e for e in harness.events(run_id) if e.event_type == "RunStarted"]
    assert len(starts) == 1
    assert_replay_equivalent(harness, run_id)


def test_poison_records_on_scheduler_inputs_go_to_the_dlq(harness: Harness) -> None:
    import uuid as _uuid

    from schemas.models import DeadLetter
    from streams.consumer import Consumer
    from tests.integration.kafka_fixtures import drain

    harness.register(LINEAR)
    catalog = harness.engine.catalog
    for topic in (catalog.commands.topic, catalog.results.topic):
        harness.producer.send(topic, "poison-key", b"\x00\x01 definitely not avro")
    harness.producer.flush(10)
    run_id = harness.start("linear", {"n": 1})
    assert harness.wait(run_id).status == "succeeded"
    consumer = Consumer(
        [catalog.dlq.topic], f"dlq-check-{_uuid.uuid4().hex[:6]}", harness.settings, catalog=catalog
    )
    try:
        records = drain(consumer, lambda got: len(got) >= 2, timeout=20)
    finally:
        consumer.close()
    letters = [r.value for r in records if isinstance(r.value, DeadLetter)]
    assert {d.original_topic for d in letters} == {catalog.commands.topic, catalog.results.topic}
    assert all(d.error_class == "MalformedRecord" and d.reason for d in letters)
    assert all(d.value == b"\x00\x01 definitely not avro" for d in letters)


def test_large_payloads_travel_by_claim_check(harness: Harness, http: HttpTestServer) -> None:
    # 300 kB of output (> the 256 KiB threshold): the worker stores it in S3 and the event
    # carries a PayloadRef; the downstream step's params (the same 300 kB) are claim-checked by
    # the scheduler, and the worker loads them back.
    harness.register(
        {
            "id": "big",
            "steps": [
                http_step("fetch", f"{http.url}/big?bytes=300000&json=1"),
                transform("size", "length(data)", "{{ steps.fetch.output.body }}", needs=["fetch"]),
            ],
            "outputs": {"size": "{{ steps.size.output.result }}"},
        }
    )
    run_id = harness.start("big")
    run = harness.wait(run_id)
    assert (run.status, run.outputs) == ("succeeded", {"size": 300000}), run
    fetch = harness.steps(run_id)["fetch"]
    assert fetch.output is None and fetch.output_ref is not None
    assert fetch.output_ref["uri"].startswith("s3://")
    assert fetch.output_ref["size_bytes"] > 256 * 1024
    assert_replay_equivalent(harness, run_id)
