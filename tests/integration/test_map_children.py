"""meta.map over a sub-workflow end to end (one child run per item), and a failed parent that
cancels its children: real Kafka, scheduler, workers and projection.

ADR 0024 (addendum) and ADR 0025 (addendum).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from api.readmodel import load_run_detail
from processors.scheduler.child_runs import map_child_run_id
from projections.postgres import queries
from schemas.models import CancelRun
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    assert_replay_equivalent,
    transform,
)
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.test_child_runs import _scheduler, nothing_left_running, slow_child
from tests.support.waiting import eventually

SQUARE = {
    "id": "square",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [transform("work", "n", {"n": "{{ inputs.n }}"})],
    "outputs": {"sq": "{{ steps.work.output.result }}"},
}


def call_child(http: HttpTestServer) -> dict[str, Any]:
    """A child that calls ``inputs.path`` on the test HTTP server (``/slow?ms=..``,
    ``/status/404``...)."""
    return {
        "id": "call",
        "inputs": {"path": {"type": "string", "required": True}},
        "steps": [
            {
                "id": "call",
                "node": "http.request@^1",
                "params": {"url": http.url + "{{ inputs.path }}"},
            }
        ],
        "outputs": {"status": "{{ steps.call.output.status }}"},
    }


def mapper(
    workflow: str, *, concurrency: int, on_failure: str, inputs: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": f"map_{workflow}_{on_failure}",
        "inputs": {"xs": {"type": "array", "required": True}},
        "steps": [
            {
                "id": "each",
                "node": "meta.map",
                "params": {
                    "items": "{{ inputs.xs }}",
                    "workflow": workflow,
                    "inputs": inputs,
                    "concurrency": concurrency,
                    "on_failure": on_failure,
                },
            }
        ],
        "outputs": {"each": "{{ steps.each.output }}"},
    }


def children(harness: Harness, run_id: str) -> list[queries.RunRow]:
    with harness.conn() as conn:
        return queries.get_children(conn, run_id, schema=harness.schema)


def in_flight_by_parent_log(harness: Harness, run_id: str) -> int:
    """The most children the parent had started and not seen end (its own log)."""
    running = peak = 0
    for event in harness.events(run_id):
        if event.event_type == "MapChunkDispatched":
            running += event.payload["item_count"]
        elif event.event_type == "MapChildEnded":
            running -= 1
        peak = max(peak, running)
    return peak


def overlapping_children(harness: Harness, run_id: str) -> int:
    """The most children running at once, from the projection's runs rows (started_at, from
    RunStarted, to finished_at, from the terminal event; the scheduler's clock)."""
    rows = eventually(
        lambda: children(harness, run_id),
        60,
        f"the projection of the children of {run_id} to show them all ended",
        until=lambda rows: all(r.finished_at is not None for r in rows),
    )
    edges: list[tuple[datetime, int]] = []
    for child in rows:
        assert child.finished_at is not None
        edges += [(child.finished_at, -1), (child.started_at, 1)]
    running = peak = 0
    for _, delta in sorted(edges):  # an end before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


def test_each_item_runs_as_a_child_in_item_order_within_the_cap(
    harness: Harness, http: HttpTestServer
) -> None:
    harness.register(call_child(http))
    harness.register(
        mapper("call", concurrency=3, on_failure="collect", inputs={"path": "{{ item }}"})
    )
    # Slow items first, quick ones later: children end out of order.
    paths = [f"/slow?ms={ms}" for ms in (400, 300, 200, 100, 50, 10, 10, 10)] + ["/status/404"]
    run_id = harness.start("map_call_collect", {"xs": paths})
    run = harness.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    output = run.outputs["each"]
    assert output["results"] == [{"status": 200}] * 8 + [None]
    assert (output["succeeded"], output["failed"]) == (8, 1)
    [error] = output["errors"]
    assert error["index"] == 8 and error["error"]["error_class"] == "Http4xx"
    overlap = overlapping_children(harness, run_id)  # (waits for the children's rows)
    rows = sorted(children(harness, run_id), key=lambda r: r.parent_iteration or 0)
    assert [r.run_id for r in rows] == [map_child_run_id(run_id, "each", 1, i, 1) for i in range(9)]
    assert [r.parent_iteration for r in rows] == list(range(9))
    assert all(r.parent_step_id == "each" and r.source == "parent" for r in rows)
    with harness.conn() as conn:  # GET /v1/runs/{id}: the map's children, by item index
        detail = load_run_detail(conn, run_id, schema=harness.schema)
    assert detail is not None
    assert sorted((c.iteration, c.step_id, c.status) for c in detail.children) == [
        (i, "each", "succeeded" if i < 8 else "failed") for i in range(9)
    ]
    # The cap: never more than 3 children in flight, by the parent's log and by the children's.
    assert in_flight_by_parent_log(harness, run_id) == 3
    assert 1 <= overlap <= 3
    assert http.in_flight_max <= 3
    assert_replay_equivalent(harness, run_id)
    for row in rows:
        assert_replay_equivalent(harness, row.run_id)


def test_fail_fast_cancels_the_children_in_flight(harness: Harness, http: HttpTestServer) -> None:
    harness.register(call_child(http))
    harness.register(
        mapper("call", concurrency=3, on_failure="fail_fast", inputs={"path": "{{ item }}"})
    )
    paths = ["/slow?ms=10000", "/slow?ms=10000", "/status/404", "/status/200"]
    run_id = harness.start("map_call_fail_fast", {"xs": paths})
    run = harness.wait(run_id, timeout=60)
    assert run.status == "failed" and run.failed_step == "each"
    assert run.error is not None and run.error["error_class"] == "Http4xx"
    assert run.error["message"].startswith("item 2:")
    slow = [map_child_run_id(run_id, "each", 1, i, 1) for i in (0, 1)]
    for child in slow:
        row = harness.wait(child, timeout=30)
        assert row.status == "cancelled"
        cancelled = [e for e in harness.events(child) if e.event_type == "RunCancelled"]
        assert cancelled[0].payload["requested_by"] == f"run:{run_id}"
        assert "failed fast" in cancelled[0].payload["reason"]
    # The fourth item never started: fail fast stopped the map.
    harness.wait(map_child_run_id(run_id, "each", 1, 2, 1), timeout=30)
    assert len(children(harness, run_id)) == 3
    ended = [e for e in harness.events(run_id) if e.event_type == "MapChildEnded"]
    assert [e.payload["item"] for e in ended] == [2]  # the cancelled children's ends: no-ops
    assert_replay_equivalent(harness, run_id)
    for child in [*slow, map_child_run_id(run_id, "each", 1, 2, 1)]:
        assert_replay_equivalent(harness, child)
    nothing_left_running(harness, run_id, *slow)


def test_a_failed_parent_cancels_its_child_and_leaves_nothing_running(
    harness: Harness, http: HttpTestServer
) -> None:
    harness.register(slow_child(http, 10_000))
    harness.register(
        {
            "id": "parent_with_failing_sibling",
            "steps": [
                {"id": "sub", "node": "meta.workflow", "params": {"workflow_id": "slow_child"}},
                {
                    "id": "sibling",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/status/404"},
                    "needs": [],
                },
            ],
        }
    )
    run_id = harness.start("parent_with_failing_sibling")
    run = harness.wait(run_id, timeout=60)
    assert run.status == "failed" and run.failed_step == "sibling"
    child = harness.steps(run_id)["sub"].invocation_id
    assert child is not None
    child_row = harness.wait(child, timeout=30)
    assert child_row.status == "cancelled"
    [cancelled] = [e for e in harness.events(child) if e.event_type == "RunCancelled"]
    assert cancelled.payload["requested_by"] == f"run:{run_id}"
    assert f"parent run {run_id} failed (step 'sibling')" in cancelled.payload["reason"]
    sub = harness.steps(run_id)["sub"]
    assert sub.status == "failed" and sub.error is not None
    assert sub.error["error_class"] == "ChildRunCancelled"
    # The cancelled child's ChildRunFinished reached the ended parent and changed nothing.
    events = harness.events(run_id)
    assert [e.event_type for e in events][-2:] == ["RunFailed", "StepFailed"]
    assert_replay_equivalent(harness, run_id)
    assert_replay_equivalent(harness, child)
    nothing_left_running(harness, run_id, child)


def test_a_thousand_items_over_a_one_step_workflow(harness: Harness) -> None:
    harness.register(SQUARE)
    harness.register(
        mapper("square", concurrency=100, on_failure="fail_fast", inputs={"n": "{{ item }}"})
    )
    run_id = harness.start("map_square_fail_fast", {"xs": list(range(1000))})
    run = harness.wait(run_id, timeout=240)
    assert run.status == "succeeded", run.error
    each = harness.steps(run_id)["each"]
    output = run.outputs["each"]
    assert output["results"] == [{"sq": i} for i in range(1000)]
    assert (output["succeeded"], output["failed"]) == (1000, 0)
    # (Waits for the projection of the parent's log to catch up with the scheduler.)
    assert_replay_equivalent(harness, run_id, timeout=60)
    events = harness.events(run_id)
    kinds = [e.event_type for e in events]
    assert kinds.count("MapChildEnded") == 1000
    assert kinds.count("MapChunkDispatched") <= 1000 // 25 + 1  # batches of >= 25 children
    # Every run-log record is bounded (the collection and the output are claim-checked over
    # 256 KiB; the largest records are the inline collection and the run's outputs here).
    sizes = {e.event_type: 0 for e in events}
    for e in events:
        sizes[e.event_type] = max(sizes[e.event_type], len(json.dumps(e.payload)))
    assert sizes["MapChildEnded"] < 2_000 and sizes["MapChunkDispatched"] < 4_000, sizes
    assert max(sizes.values()) < 300 * 1024, sizes
    assert each.status == "succeeded"
    assert in_flight_by_parent_log(harness, run_id) <= 100
    assert len(children(harness, run_id)) == 1000
    assert overlapping_children(harness, run_id) <= 100
    # Children: the scheduler keeps the most recently finished runs in full (older ones shrink
    # to markers, ADR 0015), so the replay check takes children it still holds in full.
    scheduler = harness.engine.scheduler
    assert scheduler is not None
    held = [
        child
        for child in (map_child_run_id(run_id, "each", 1, i, 1) for i in range(999, -1, -1))
        if (state := scheduler.run_state(child)) is not None and state.steps
    ]
    assert held
    for child in held[:3]:
        assert_replay_equivalent(harness, child)


def test_cancelling_the_parent_cancels_the_item_children(
    harness: Harness, http: HttpTestServer
) -> None:
    harness.register(call_child(http))
    harness.register(
        mapper("call", concurrency=2, on_failure="collect", inputs={"path": "{{ item }}"})
    )
    run_id = harness.start("map_call_collect", {"xs": ["/slow?ms=10000"] * 5})
    first = [map_child_run_id(run_id, "each", 1, i, 1) for i in (0, 1)]
    for child in first:
        harness.wait_step(child, "call", "running", timeout=30)
    harness.command(CancelRun(run_id=run_id, reason="enough"))
    assert harness.wait(run_id, timeout=30).status == "cancelled"
    for child in first:
        assert harness.wait(child, timeout=30).status == "cancelled"
        [cancelled] = [e for e in harness.events(child) if e.event_type == "RunCancelled"]
        assert cancelled.payload["requested_by"] == f"run:{run_id}"
    assert len(children(harness, run_id)) == 2  # no new child after the cancel
    assert_replay_equivalent(harness, run_id)
    for child in first:
        assert_replay_equivalent(harness, child)
    nothing_left_running(harness, run_id, *first)


def test_one_child_per_item_across_a_scheduler_restart(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    """A scheduler replaced while a map's children are in flight (partitions rebuilt from
    snapshot + log): no item loses its child or gets a second one, and the ends reach the
    parent on the new instance."""
    harness = engine_harness(scheduler=False, trigger_router=False, client_id="map-restart")
    harness.register(call_child(http))
    harness.register(
        mapper("call", concurrency=4, on_failure="fail_fast", inputs={"path": "{{ item }}"})
    )
    _, stop, thread = _scheduler(harness, "map-restart")
    try:
        run_id = harness.start("map_call_fail_fast", {"xs": ["/slow?ms=1500"] * 8})
        for index in range(4):
            child = map_child_run_id(run_id, "each", 1, index, 1)
            harness.wait_step(child, "call", "running", timeout=60)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    second, stop, thread = _scheduler(harness, "map-restart")
    try:
        run = harness.wait(run_id, timeout=90)
        assert run.status == "succeeded", run.error
    finally:
        stop.set()
        thread.join(30)
    assert run.outputs["each"]["results"] == [{"status": 200}] * 8
    expected = [map_child_run_id(run_id, "each", 1, i, 1) for i in range(8)]
    assert sorted(r.run_id for r in children(harness, run_id)) == sorted(expected)
    for child in expected:
        kinds = [e.event_type for e in harness.events(child)]
        assert kinds.count("RunStarted") == 1 and "CommandRejected" not in kinds
    ended = [e.payload["item"] for e in harness.events(run_id) if e.event_type == "MapChildEnded"]
    assert sorted(ended) == list(range(8))
    assert second.stats.recoveries >= 1
