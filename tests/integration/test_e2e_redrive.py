"""Re-drive from a step and rebind to a newer workflow version, end to end on the real services:
the API (TestClient) publishes the commands, the engine runs them, the projection shows them.

Upstream steps that must not run again call a local HTTP server, which counts the calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from processors.scheduler.runtime.reload import reload_run
from processors.scheduler.state import RunState
from streams.admin import admin_client
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    api_client,
    assert_replay_equivalent,
    replayed_state,
    transform,
)
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    with api_client(harness) as client:
        yield client
    _drop_api_schema(harness)


def _drop_api_schema(harness: Harness) -> None:
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{harness.schema}_api" CASCADE')


def _call(step_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "node": "http.request@^1", "params": {"url": url}, **extra}


def _hits(http: HttpTestServer, step: str) -> int:
    return sum(1 for r in http.requests_to("/echo") if r.query.get("step") == [step])


def _chain(http: HttpTestServer) -> dict[str, Any]:
    """fetch (HTTP, counted) -> double (transform: "21-21") -> store (HTTP, counted)."""
    return {
        "id": "redrive-chain",
        "steps": [
            _call("fetch", f"{http.url}/echo?step=fetch&n=21"),
            transform(
                "double",
                "join('-', [n, n])",
                {"n": "{{ steps.fetch.output.body.query.n[0] }}"},
                needs=["fetch"],
            ),
            _call(
                "store",
                f"{http.url}/echo?step=store&v={{{{ steps.double.output.result }}}}",
                needs=["double"],
            ),
        ],
        "outputs": {"stored": "{{ steps.store.output.body.query.v[0] }}"},
    }


def _kafka_state(harness: Harness, run_id: str) -> RunState | None:
    """The run folded from the ``runs`` topic itself (the log the projection is built from)."""
    topic = harness.engine.catalog.runs.topic
    admin = admin_client(harness.settings)
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    for partition in sorted(partitions):
        state = reload_run(harness.settings, admin, topic, partition, run_id)
        if state is not None:
            return state
    return None


def _assert_projection_is_kafka(harness: Harness, run_id: str) -> None:
    assert_replay_equivalent(harness, run_id)
    assert _kafka_state(harness, run_id) == replayed_state(harness, run_id)


def _wait_events(harness: Harness, run_id: str, event_type: str, count: int) -> None:
    eventually(
        lambda: [e.event_type for e in harness.events(run_id)].count(event_type),
        30,
        f"{count} {event_type} event(s) of run {run_id}",
        until=lambda n: n >= count,
    )


def test_redrive_from_a_middle_step_of_a_succeeded_run(
    harness: Harness, api: TestClient, http: HttpTestServer
) -> None:
    harness.register(_chain(http))
    run_id = harness.start("redrive-chain")
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert (_hits(http, "fetch"), _hits(http, "store")) == (1, 1)

    answer = api.post(
        f"/v1/runs/{run_id}/steps/double/redrive",
        params={"wait_ms": 20_000},
        json={"downstream": True, "reason": "bad double", "requested_by": "test"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["event_type"] == "StepsReset"
    _wait_events(harness, run_id, "RunSucceeded", 2)
    run = harness.wait(run_id)
    assert run.status == "succeeded" and run.outputs == {"stored": "21-21"}
    # The upstream step kept its output and was not called again; downstream ran again.
    assert (_hits(http, "fetch"), _hits(http, "store")) == (1, 2)
    steps = harness.steps(run_id)
    assert (steps["fetch"].attempt, steps["double"].attempt, steps["store"].attempt) == (1, 2, 2)
    kinds = [e.event_type for e in harness.events(run_id)]
    first_end = kinds.index("RunSucceeded")
    assert kinds[first_end + 1 : first_end + 3] == ["StepsReset", "RunResumed"]
    # The SSE stream replays past the first end to the last one.
    with api.stream("GET", f"/v1/runs/{run_id}/stream") as stream:
        body = "".join(stream.iter_text())
    assert body.count("event: RunSucceeded") == 2
    _assert_projection_is_kafka(harness, run_id)


def test_redrive_from_in_a_failed_run_and_refusals(
    harness: Harness, api: TestClient, http: HttpTestServer
) -> None:
    harness.register(
        {
            "id": "redrive-failed",
            "steps": [
                _call("fetch", f"{http.url}/echo?step=fetch"),
                _call("flop", f"{http.url}/status/400", needs=["fetch"]),
                _call("after", f"{http.url}/echo?step=after", needs=["flop"]),
            ],
        }
    )
    run_id = harness.start("redrive-failed")
    assert harness.wait(run_id).status == "failed"
    assert (
        api.post(f"/v1/runs/{run_id}/steps/zzz/redrive", json={"downstream": True}).status_code
        == 404
    )
    refused = api.post(
        f"/v1/runs/{run_id}/steps/fetch/redrive", params={"wait_ms": 20_000}, json={}
    )
    assert refused.status_code == 409
    assert "Expected step 'fetch' to be failed or timed_out, but it is succeeded" in refused.text
    answer = api.post(
        f"/v1/runs/{run_id}/steps/flop/redrive",
        params={"wait_ms": 20_000},
        json={"downstream": True},
    )
    assert answer.status_code == 200, answer.text
    _wait_events(harness, run_id, "RunFailed", 2)
    assert harness.wait(run_id).status == "failed"
    assert harness.steps(run_id)["flop"].attempt == 2
    assert _hits(http, "fetch") == 1 and _hits(http, "after") == 0
    _assert_projection_is_kafka(harness, run_id)
    # A cancelled run is never reopened.
    assert api.post(f"/v1/runs/{run_id}/cancel", params={"wait_ms": 20_000}).status_code == 200
    refused = api.post(
        f"/v1/runs/{run_id}/steps/fetch/redrive",
        params={"wait_ms": 20_000},
        json={"downstream": True},
    )
    assert refused.status_code == 409
    assert "but it is cancelled (a cancelled run is never reopened)" in refused.text


def _fixme(http: HttpTestServer, parse_url: str) -> dict[str, Any]:
    return {
        "id": "fixme",
        "steps": [
            _call("fetch", f"{http.url}/echo?step=fetch"),
            _call("parse", parse_url, needs=["fetch"]),
            transform("store", "s", {"s": "{{ steps.parse.output.status }}"}, needs=["parse"]),
        ],
        "outputs": {"status": "{{ steps.store.output.result }}"},
    }


def test_rebind_a_failed_run_to_a_fixed_version(
    harness: Harness, api: TestClient, http: HttpTestServer
) -> None:
    harness.register(_fixme(http, f"{http.url}/status/400"), version=1)
    run_id = harness.start("fixme", workflow_version=1)
    run = harness.wait(run_id)
    assert run.status == "failed" and run.failed_step == "parse"
    # The fix is deployed as version 2; a version 3 that dropped a finished step is refused.
    harness.register(_fixme(http, f"{http.url}/echo?step=parse"), version=2)
    broken = _fixme(http, f"{http.url}/echo?step=parse")
    broken["steps"] = broken["steps"][1:]
    broken["steps"][0]["needs"] = []
    harness.register(broken, version=3)
    eventually(
        lambda: api.get("/v1/workflows/fixme/versions/3").status_code,
        15,
        "fixme v3 in the projection",
        until=lambda status: status == 200,
    )
    refused = api.post(f"/v1/runs/{run_id}/rebind", params={"wait_ms": 20_000}, json={"version": 3})
    assert refused.status_code == 409, refused.text
    assert "step 'fetch' (succeeded) is missing from version 3 (rule has-run-stays" in refused.text
    assert api.post(f"/v1/runs/{run_id}/rebind", json={"version": 9}).status_code == 404

    answer = api.post(
        f"/v1/runs/{run_id}/rebind",
        params={"wait_ms": 20_000},
        json={"version": 2, "reason": "fix deployed", "requested_by": "test"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["event_type"] == "RunRebound"
    run = harness.wait(run_id, {"succeeded"})
    assert run.workflow_version == 2 and run.outputs == {"status": 200}
    assert api.get(f"/v1/runs/{run_id}").json()["workflow_version"] == 2
    assert _hits(http, "fetch") == 1  # the finished step was not run again
    assert harness.steps(run_id)["parse"].attempt == 2
    _assert_projection_is_kafka(harness, run_id)


def test_redrive_from_a_run_kept_only_as_a_marker(
    engine_harness: HarnessFactory, kafka_settings: Any, http: HttpTestServer
) -> None:
    """The scheduler keeps no finished run in full here: it reloads the run from the log."""
    harness = engine_harness(kafka_settings.model_copy(update={"scheduler_finished_runs_kept": 0}))
    harness.register(_chain(http))
    run_id = harness.start("redrive-chain")
    assert harness.wait(run_id).status == "succeeded"
    scheduler = harness.engine.scheduler
    assert scheduler is not None
    marker = scheduler.run_state(run_id)
    assert marker is not None and marker.definition is None  # only the marker is held
    with api_client(harness) as api:
        answer = api.post(
            f"/v1/runs/{run_id}/steps/store/redrive",
            params={"wait_ms": 20_000},
            json={"downstream": True},
        )
    _drop_api_schema(harness)
    assert answer.status_code == 200, answer.text
    _wait_events(harness, run_id, "RunSucceeded", 2)
    assert (_hits(http, "fetch"), _hits(http, "store")) == (1, 2)
    assert _kafka_state(harness, run_id) == replayed_state(harness, run_id)
