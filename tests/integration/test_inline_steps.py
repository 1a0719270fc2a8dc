"""Inline pure steps on the real services (ADR 0064): the scheduler evaluates transform and
condition steps itself, and the run log, the projection, replay and the traces topic show them
like any other step; the same workflow on workers (``inline: false``, or the setting off) gives
the same outputs and the same errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from processors.scheduler.inline import INLINE_WORKER
from schemas.models import Trace, TraceStatus
from schemas.trace_json import decode_trace
from streams.consumer import consume_available
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import Harness, HarnessFactory, assert_replay_equivalent
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ITEMS = [{"name": "a", "price": 5}, {"name": "b", "price": 15}, {"name": "c", "price": 25}]
STEP_IDS = ("pick", "names", "many", "cheap")


def pure_workflow(workflow_id: str, *, inline: bool = True) -> dict[str, Any]:
    """Transforms and conditions (exact versions: the harness registers no catalog entries), a
    `when` that skips a branch; ``inline=False`` keeps every step on a worker."""
    extra: dict[str, Any] = {} if inline else {"inline": False}
    return {
        "id": workflow_id,
        "inputs": {"items": {"type": "array", "required": True}},
        "steps": [
            {
                "id": "pick",
                "node": "transform@1.0.0",
                "params": {"expression": "[?price > `10`]", "data": "{{ inputs.items }}"},
                **extra,
            },
            {
                "id": "names",
                "node": "transform@1.0.0",
                "needs": ["pick"],
                "params": {"expression": "[].name", "data": "{{ steps.pick.output.result }}"},
                **extra,
            },
            {
                "id": "many",
                "node": "condition@1.0.0",
                "needs": ["names"],
                "params": {
                    "expression": "length(@) > `1`",
                    "data": "{{ steps.names.output.result }}",
                },
                **extra,
            },
            {
                "id": "cheap",
                "node": "transform@1.0.0",
                "needs": ["many"],
                "when": "steps.many.output.result == `false`",
                "params": {"expression": "`1`"},
                **extra,
            },
        ],
        "outputs": {
            "names": "{{ steps.names.output.result }}",
            "many": "{{ steps.many.output.result }}",
        },
    }


def failing_workflow(workflow_id: str, *, inline: bool = True) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": "broken",
        "node": "transform@1.0.0",
        "params": {"expression": "abs(name)", "data": {"name": "x"}},
        "retry": {"max_attempts": 3, "initial_backoff": "50ms"},
    }
    if not inline:
        step["inline"] = False
    return {"id": workflow_id, "steps": [step]}


def invocations_sent(harness: Harness, node: str = "transform") -> int:
    """Records ever written to the node's v1 invoke topic (high watermarks; the topic exists
    from the engine's start, and a topic no transaction touched stays at 0)."""
    topic = harness.engine.catalog.invoke_topic(node, 1).topic
    consumer = Consumer({**kafka_client_config(harness.settings), "group.id": f"{topic}.probe"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


@pytest.fixture
def traces_of(harness: Harness) -> Iterator[Any]:
    """``traces_of(run_id, n)``: the run's traces on the traces topic, once ``n`` are there."""
    topic = harness.engine.catalog.traces.topic
    consumer = Consumer(
        {
            **kafka_client_config(harness.settings),
            "group.id": f"{topic}.inline-test",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen: list[Trace] = []

    def read(run_id: str, n: int) -> list[Trace]:
        def poll() -> list[Trace]:
            for message in consume_available(consumer, 500, 0.2):
                value = message.value()
                if message.error() is None and value is not None:
                    seen.append(decode_trace(value))
            return [t for t in seen if t.run_id == run_id]

        return eventually(poll, 30, f"{n} traces of run {run_id}", until=lambda t: len(t) >= n)

    yield read
    consumer.close()


def _step_events(harness: Harness, run_id: str) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for row in harness.events(run_id):
        step = row.payload.get("step")
        if isinstance(step, dict):
            kinds.setdefault(step["step_id"], []).append(row.event_type)
    return kinds


def test_inline_runs_match_the_remote_path_and_are_recorded_like_any_run(
    harness: Harness, traces_of: Any
) -> None:
    harness.register(pure_workflow("pure"))
    harness.register(pure_workflow("pure-remote", inline=False))

    inline_id = harness.start("pure", {"items": ITEMS})
    inline = harness.wait(inline_id)
    assert inline.status == "succeeded", inline.error
    assert inline.outputs == {"names": ["b", "c"], "many": True}
    assert invocations_sent(harness) == 0 and invocations_sent(harness, "condition") == 0

    steps = harness.steps(inline_id)
    for step_id in ("pick", "names", "many"):
        row = steps[step_id]
        assert (row.status, row.attempt, row.worker) == ("succeeded", 1, INLINE_WORKER)
        assert row.started_at is not None and row.finished_at is not None
        assert row.dispatched_at is None and row.invocation_id is not None
        assert row.output is not None
    assert steps["cheap"].status == "skipped"
    events = _step_events(harness, inline_id)
    assert events["pick"] == ["StepScheduled", "StepStarted", "StepSucceeded"]
    assert_replay_equivalent(harness, inline_id)

    traces = traces_of(inline_id, 3)
    evaluated = [t for t in traces if t.context.get("worker") == INLINE_WORKER]
    assert sorted(t.step_id for t in evaluated) == ["many", "names", "pick"]
    assert all(t.status is TraceStatus.OK for t in evaluated)
    assert {t.invocation_id for t in evaluated} == {
        steps[s].invocation_id for s in ("pick", "names", "many")
    }

    remote_id = harness.start("pure-remote", {"items": ITEMS})
    remote = harness.wait(remote_id)
    assert remote.status == "succeeded", remote.error
    assert remote.outputs == inline.outputs
    remote_steps = harness.steps(remote_id)
    assert {s: r.output for s, r in remote_steps.items()} == {s: r.output for s, r in steps.items()}
    assert all(remote_steps[s].worker != INLINE_WORKER for s in ("pick", "names", "many"))
    assert "StepDispatched" in _step_events(harness, remote_id)["pick"]
    assert invocations_sent(harness) > 0
    assert_replay_equivalent(harness, remote_id)


def test_a_failing_expression_fails_inline_as_on_a_worker(harness: Harness, traces_of: Any) -> None:
    harness.register(failing_workflow("fails"))
    harness.register(failing_workflow("fails-remote", inline=False))
    inline_id = harness.start("fails")
    remote_id = harness.start("fails-remote")
    inline, remote = harness.wait(inline_id), harness.wait(remote_id)
    assert inline.status == remote.status == "failed"
    assert inline.error is not None and inline.error["error_class"] == "TransformError"
    assert inline.error == remote.error
    assert inline.failed_step == remote.failed_step == "broken"
    # Not retried on either path: the same params fail the same way (non-retryable).
    assert harness.steps(inline_id)["broken"].attempt == 1
    assert harness.steps(remote_id)["broken"].attempt == 1
    assert_replay_equivalent(harness, inline_id)
    (trace,) = traces_of(inline_id, 1)
    assert trace.status is TraceStatus.ERROR and trace.error is not None
    assert trace.error.error_class == "TransformError"
    assert trace.context.get("worker") == INLINE_WORKER


def test_with_the_setting_off_every_step_goes_to_a_worker(
    engine_harness: HarnessFactory, kafka_settings: Any
) -> None:
    harness = engine_harness(kafka_settings.model_copy(update={"inline_nodes": False}))
    harness.register(pure_workflow("pure"))
    run_id = harness.start("pure", {"items": ITEMS})
    run = harness.wait(run_id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"names": ["b", "c"], "many": True}
    steps = harness.steps(run_id)
    assert all(steps[s].worker != INLINE_WORKER for s in ("pick", "names", "many"))
    assert "StepDispatched" in _step_events(harness, run_id)["pick"]
    assert invocations_sent(harness) > 0
