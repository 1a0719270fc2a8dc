"""meta.map and meta.switch end to end: the whole engine on the real services (ADR 0024)."""

from __future__ import annotations

import json
from typing import Any

from foundation.settings import Settings
from schemas.models import PauseRun, PayloadRef, ResumeRun
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    assert_replay_equivalent,
    transform,
)
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually

MAX_RECORD_BYTES = 300 * 1024
"""No run-log record of a map over 10,000 items may be larger than this (the claim-check
threshold is 256 KiB; a per-item log would be ~10,000 records, one inline log ~MBs)."""


def map_workflow(workflow_id: str, node_params: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"xs": {"type": "array", "required": True}},
        "steps": [
            {
                "id": "each",
                "node": "meta.map",
                "params": {
                    "items": "{{ inputs.xs }}",
                    "node": params.pop("node", "transform@^1"),
                    "params": node_params,
                    **params,
                },
            },
            transform("count", "length(@)", "{{ steps.each.output.results }}", needs=["each"]),
        ],
        "outputs": {
            "count": "{{ steps.count.output.result }}",
            "failed": "{{ steps.each.output.failed }}",
        },
    }


def record_sizes(harness: Harness, run_id: str) -> list[int]:
    return [len(json.dumps(row.payload)) for row in harness.events(run_id)]


def test_a_map_of_10000_items_succeeds_with_outputs_in_order(harness: Harness) -> None:
    harness.register(
        map_workflow(
            "map-big",
            {"expression": "@", "data": {"x": "{{ item }}", "i": "{{ index }}"}},
            concurrency=64,
        )
    )
    xs = list(range(10_000))
    run_id = harness.start("map-big", {"xs": xs})
    run = harness.wait(run_id, timeout=120)
    assert run.status == "succeeded", run
    assert run.outputs == {"count": 10_000, "failed": 0}
    step = harness.steps(run_id)["each"]
    assert step.status == "succeeded"
    output = step.output
    if output is None:  # claim-checked: read it the way the scheduler does
        scheduler = harness.engine.scheduler
        assert scheduler is not None and step.output_ref is not None
        output = scheduler._load_payload(PayloadRef.model_validate(step.output_ref))
    assert output["results"] == [{"result": {"x": x, "i": x}} for x in xs]
    sizes = record_sizes(harness, run_id)
    assert len(sizes) < 200, f"{len(sizes)} records for a map of 10,000 items"
    assert max(sizes) < MAX_RECORD_BYTES, max(sizes)
    types = [row.event_type for row in harness.events(run_id)]
    assert types.count("MapChunkDispatched") == types.count("MapChunkFinished") >= 2
    assert_replay_equivalent(harness, run_id)


def failing_items() -> dict[str, Any]:
    # abs() of a string is a TransformError (non-retryable): the items "x" fail.
    return {"expression": "abs(@)", "data": "{{ item }}"}


def test_fail_fast_fails_the_run_at_the_failing_item(harness: Harness) -> None:
    harness.register(map_workflow("map-ff", failing_items(), chunk_size=5, concurrency=4))
    xs: list[Any] = [-1, 2, -3, "x", 5, 6, 7, 8, 9, 10, 11, 12]
    run_id = harness.start("map-ff", {"xs": xs})
    run = harness.wait(run_id)
    assert run.status == "failed", run
    assert run.failed_step == "each"
    steps = harness.steps(run_id)
    assert steps["each"].status == "failed"
    assert steps["each"].error is not None
    assert steps["each"].error["error_class"] == "TransformError"
    assert steps["each"].error["message"].startswith("item 3: ")
    assert "count" not in steps or steps["count"].status == "pending"
    assert_replay_equivalent(harness, run_id)


def test_collect_succeeds_with_per_item_errors(harness: Harness) -> None:
    harness.register(
        map_workflow("map-collect", failing_items(), on_failure="collect", chunk_size=4)
    )
    xs: list[Any] = [-1, "x", -3, 4, 5, "y", 7]
    run_id = harness.start("map-collect", {"xs": xs})
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert run.outputs == {"count": 7, "failed": 2}
    output = harness.steps(run_id)["each"].output
    assert output["results"] == [
        {"result": 1},
        None,
        {"result": 3},
        {"result": 4},
        {"result": 5},
        None,
        {"result": 7},
    ]
    assert [e["index"] for e in output["errors"]] == [1, 5]
    assert {e["error"]["error_class"] for e in output["errors"]} == {"TransformError"}
    assert output["succeeded"] == 5 and output["failed"] == 2
    assert_replay_equivalent(harness, run_id)


def test_the_concurrency_cap_holds_on_the_workers(harness: Harness, http: HttpTestServer) -> None:
    # 24 slow calls with a cap of 4: the HTTP server counts the requests it holds at once.
    harness.register(
        map_workflow(
            "map-cap",
            {"url": f"{http.url}/slow?ms=150&i={{{{ index }}}}"},
            node="http.request@^1",
            concurrency=4,
            on_failure="collect",
        )
    )
    http.reset()
    run_id = harness.start("map-cap", {"xs": list(range(24))})
    run = harness.wait(run_id, timeout=60)
    assert run.status == "succeeded", run
    assert run.outputs == {"count": 24, "failed": 0}
    assert 2 <= http.in_flight_max <= 4, http.in_flight_max
    slow = [r for r in http.log if r.path == "/slow"]
    assert sorted(int(r.query["i"][0]) for r in slow) == list(range(24))
    assert_replay_equivalent(harness, run_id)


SWITCH = {
    "id": "switcher",
    "inputs": {"kind": {"type": "string", "required": True}},
    "steps": [
        {
            "id": "route",
            "node": "meta.switch",
            "params": {
                "value": "{{ inputs.kind }}",
                "cases": {"a": ["left"], "b": ["right"]},
                "default": ["other"],
            },
        },
        transform("left", "@", "L", needs=["route"]),
        transform("right", "@", "R", needs=["route"]),
        transform("other", "@", "O", needs=["route"]),
        transform("after_left", "@", "{{ steps.left.output.result }}", needs=["left"]),
    ],
    "outputs": {"case": "{{ steps.route.output.case }}"},
}


def test_switch_runs_the_chosen_branch(harness: Harness) -> None:
    harness.register(SWITCH)
    expected = {
        "a": {"left", "after_left"},
        "b": {"right"},
        "nothing-matches": {"other"},
    }
    runs = {kind: harness.start("switcher", {"kind": kind}) for kind in expected}
    for kind, run_id in runs.items():
        run = harness.wait(run_id)
        assert run.status == "succeeded", run
        assert run.outputs == {"case": kind if kind in ("a", "b") else None}
        steps = harness.steps(run_id)
        ran = {s for s, row in steps.items() if row.status == "succeeded"} - {"route"}
        assert ran == expected[kind], steps
        skipped = {s for s, row in steps.items() if row.status == "skipped"}
        assert skipped == {"left", "right", "other", "after_left"} - expected[kind]
        assert_replay_equivalent(harness, run_id)


def test_a_map_carries_on_after_a_scheduler_restart_from_its_snapshot(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer
) -> None:
    # Paused mid-map (chunks left to send), the scheduler stops (writing its snapshot); the
    # next one rebuilds the map's state from that snapshot, and the map finishes in order.
    settings = kafka_settings.model_copy(update={"scheduler_snapshot_interval_ms": 100})
    first = engine_harness(settings, client_id="map-restart-1")
    first.register(
        map_workflow(
            "map-restart",
            {"url": f"{http.url}/slow?ms=200&i={{{{ index }}}}"},
            node="http.request@^1",
            concurrency=2,
            chunk_size=2,
        )
    )
    run_id = first.start("map-restart", {"xs": list(range(20))})
    first.wait_step(run_id, "each", "running")
    first.command(PauseRun(run_id=run_id))
    first.wait(run_id, {"paused"})
    scheduler = first.engine.scheduler
    assert scheduler is not None

    def settled() -> Any:
        state = scheduler.run_state(run_id)
        return None if state is None else state.maps["each"]

    progress = eventually(
        settled,
        30,
        "the chunks in flight at the pause to finish",
        until=lambda p: p is not None and not p.in_flight,
    )
    assert 0 < progress.done < 20, progress.done  # stopped mid-map
    before = scheduler.run_state(run_id)
    first.engine.stop()

    second = engine_harness(settings, client_id="map-restart-2")
    restarted = second.engine.scheduler
    assert restarted is not None
    recovered = eventually(
        lambda: restarted.run_state(run_id), 60, f"the new scheduler to hold run {run_id}"
    )
    assert recovered == before
    report = restarted.stats.last_recovery
    assert report is not None and report.from_snapshot and not report.fallbacks
    second.command(ResumeRun(run_id=run_id))
    run = second.wait(run_id, timeout=60)
    assert run.status == "succeeded", run
    assert run.outputs == {"count": 20, "failed": 0}
    calls = sorted(int(r.query["i"][0]) for r in http.log if r.path == "/slow")
    assert calls == list(range(20))  # every item once: nothing re-run after the restart
    assert_replay_equivalent(second, run_id)
