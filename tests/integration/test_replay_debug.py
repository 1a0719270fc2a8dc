"""Replay for debugging on the real services (docs/replay.md): export a run from one REFLUX and
import it into another (its own topic prefix and read-model schema) -- it replays identically;
two runs side by side with the differing step output highlighted; ``reflux replay --until`` on a
run with a retry and a skipped condition."""

from __future__ import annotations

import argparse
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from foundation.objectstore import S3BlobStore
from foundation.settings import Settings
from processors.replay.bundle import read_bundle
from processors.scheduler.child_runs import child_run_id
from reflux.replay_cli import (
    diff_table,
    events_from_kafka,
    main_replay,
    runs_diff,
    runs_export,
    runs_import,
)
from tests.integration.engine_fixtures import (
    TERMINAL,
    Harness,
    assert_replay_equivalent,
    replayed_state,
    running_engine,
    transform,
)
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.kafka_fixtures import isolated_kafka
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually


def _debuggable(url: str, key: str) -> dict[str, Any]:
    """A retry (the first call of ``key`` gets a 503), a claim-checked output (300 kB), a
    condition that skips for amounts up to 100, and a step whose output is the amount."""
    return {
        "id": f"debuggable-{key[:8]}",
        "inputs": {"amount": {"type": "integer", "required": True}},
        "steps": [
            {
                "id": "call",
                "node": "http.request@^1",
                "params": {"url": f"{url}/flaky?key={key}&fail=1"},
                "retry": {"max_attempts": 3, "initial_backoff": "50ms"},
            },
            {
                "id": "fetch",
                "node": "http.request@^1",
                "params": {"url": f"{url}/big?bytes=300000&json=1"},
                "needs": ["call"],
            },
            transform("size", "length(data)", "{{ steps.fetch.output.body }}", needs=["fetch"]),
            transform(
                "gate",
                "a",
                {"a": "{{ inputs.amount }}"},
                needs=["call"],
                when="inputs.amount > `100`",
            ),
            transform("echo", "a", {"a": "{{ inputs.amount }}"}, needs=["call"]),
        ],
        "outputs": {
            "size": "{{ steps.size.output.result }}",
            "echo": "{{ steps.echo.output.result }}",
        },
    }


def _api(harness: Harness) -> Iterator[TestClient]:
    api_schema = f"{harness.schema}_api"
    settings = ApiSettings(
        read_schema=harness.schema,
        api_schema=api_schema,
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    headers = key_headers(harness.settings, settings)
    with TestClient(create_app(harness.settings, settings), headers=headers) as client:
        yield client
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


@pytest.fixture
def api(harness: Harness) -> Iterator[TestClient]:
    yield from _api(harness)


@pytest.fixture
def settings_b(local_services: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Another REFLUX's settings: its own topic prefix (set up before its engine, so its topics
    are deleted after the engine stopped)."""
    with isolated_kafka(local_services, request.node.nodeid, default_partitions=3) as settings:
        yield settings


@pytest.fixture
def harness_b(settings_b: Settings, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """B's engine, stopped before B's topics are deleted."""
    with running_engine(settings_b, request.node.nodeid) as engine:
        yield engine


@pytest.fixture
def api_b(harness_b: Harness) -> Iterator[TestClient]:
    yield from _api(harness_b)


def _start(api: TestClient, workflow_id: str, amount: int) -> str:
    response = api.post("/v1/runs", json={"workflow_id": workflow_id, "inputs": {"amount": amount}})
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def _register(api: TestClient, definition: dict[str, Any]) -> None:
    response = api.post("/v1/workflows", json=definition)
    assert response.status_code == 201, response.text
    eventually(
        lambda: api.get(f"/v1/workflows/{definition['id']}").status_code,
        15,
        f"workflow {definition['id']} projected",
        until=lambda status: status == 200,
    )


def _wait_projected(harness: Harness, run_id: str, last_seq: int) -> None:
    eventually(
        lambda: harness.run(run_id),
        30,
        f"{run_id} projected up to seq {last_seq}",
        until=lambda r: r is not None and r.last_seq == last_seq,
    )


def _replay_text(api: TestClient, *argv: str) -> str:
    out = io.StringIO()
    assert main_replay(list(argv), "http://unused", out=out, client=cast(httpx.Client, api)) == 0
    return out.getvalue()


def test_export_then_import_replays_identically(
    harness: Harness,
    api: TestClient,
    harness_b: Harness,
    api_b: TestClient,
    http: HttpTestServer,
) -> None:
    definition = _debuggable(http.url, uuid.uuid4().hex)
    _register(api, definition)
    run_id = _start(api, definition["id"], 42)
    run = harness.wait(run_id)
    assert run.status == "succeeded", run
    assert_replay_equivalent(harness, run_id)
    original = replayed_state(harness, run_id)
    assert original.steps["call"].attempt == 2 and original.steps["gate"].status == "skipped"
    assert original.steps["fetch"].output_ref is not None  # claim-checked

    exported = api.get(f"/v1/runs/{run_id}/export")
    assert exported.status_code == 200, exported.text
    bundle = read_bundle(exported.content)
    assert bundle.runs == [run_id]
    assert [w.workflow_id for w in bundle.workflows] == [definition["id"]]
    # The fetched 300 kB (a claim-checked output) and size's params (the same bytes, claim-checked
    # by the scheduler).
    assert {p.uri for p in bundle.payloads} == {
        original.steps["fetch"].output_ref.uri,
        original.steps["size"].params_ref.uri,
    }

    # Nothing of the run in B before the import.
    assert api_b.get(f"/v1/runs/{run_id}").status_code == 404
    imported = api_b.post(
        "/v1/runs/import",
        content=exported.content,
        headers={"content-type": "application/vnd.reflux.run-bundle+gzip"},
    )
    assert imported.status_code == 201, imported.text
    body = imported.json()
    assert body["run_id"] == run_id and body["events"] == len(bundle.events[run_id])
    assert body["workflows_registered"] == [f"{definition['id']}@1"]

    projected = eventually(
        lambda: harness_b.run(run_id),
        30,
        f"imported run {run_id} projected in B",
        until=lambda r: r is not None and r.last_seq == original.last_seq,
    )
    assert projected is not None
    # Folded state of the imported run == the original's (and the original's live state).
    assert replayed_state(harness_b, run_id) == original
    # B's projection of the imported run agrees with its log.
    assert projected.status == original.status.value == "succeeded"
    assert projected.outputs == original.outputs
    assert {s: r.status for s, r in harness_b.steps(run_id).items()} == {
        s: st.status.value for s, st in original.steps.items() if st.status.value != "pending"
    }
    # Time travel agrees at every seq; the explanation is the same text.
    for seq in range(original.last_seq + 1):
        a = api.get(f"/v1/runs/{run_id}/state", params={"seq": seq}).json()
        b = api_b.get(f"/v1/runs/{run_id}/state", params={"seq": seq}).json()
        assert a == b, seq
    assert _replay_text(api, run_id) == _replay_text(api_b, run_id)
    # The log read from B's Kafka topic is the same too (`reflux replay --from-kafka`).
    assert events_from_kafka(run_id, harness_b.settings) == list(bundle.events[run_id])
    # The workflow is registered in B, and the payload is in B's object store.
    eventually(
        lambda: api_b.get(f"/v1/workflows/{definition['id']}/versions/1").status_code,
        15,
        "workflow registered in B",
        until=lambda status: status == 200,
    )
    ref = original.steps["fetch"].output_ref
    assert len(S3BlobStore(harness_b.settings).get(ref.uri)) == ref.size_bytes
    # Importing again is refused: imported runs keep their ids (ADR 0028).
    again = api_b.post("/v1/runs/import", content=exported.content)
    assert again.status_code == 409, again.text
    damaged = api_b.post("/v1/runs/import", content=exported.content[:-20])
    assert damaged.status_code == 422 and "bundle" in damaged.text

    # reflux replay --until: the retry and the skipped condition, in words.
    rows = harness.events(run_id)
    skipped = next(r.seq for r in rows if r.event_type == "StepSkipped")
    text = _replay_text(api_b, run_id, "--until", str(skipped))
    assert "retry of step call fired after [" in text and "attempt 2 at" in text
    assert "step gate skipped: condition 'inputs.amount > `100`' was false" in text
    assert "why: condition `inputs.amount > `100`` -> false = false (falsy)" in text
    assert f"== state after seq {skipped} ==" in text
    assert f"#{skipped + 1} " not in text


def test_diff_highlights_the_step_whose_output_differs(
    harness: Harness, api: TestClient, http: HttpTestServer
) -> None:
    definition = _debuggable(http.url, uuid.uuid4().hex)
    _register(api, definition)
    first = _start(api, definition["id"], 42)
    assert harness.wait(first).status == "succeeded"
    second = _start(api, definition["id"], 7)
    assert harness.wait(second).status == "succeeded"

    response = api.get(f"/v1/runs/{first}/diff/{second}")
    assert response.status_code == 200, response.text
    diff = response.json()
    fields = {f["path"]: f for f in diff["fields"]}
    assert diff["equal"] is False
    assert fields["inputs"]["equal"] is False
    assert fields["inputs"]["changes"] == [{"path": "amount", "a": 42, "b": 7}]
    assert fields["steps.echo.output"]["equal"] is False
    assert fields["steps.echo.output"]["changes"] == [{"path": "result", "a": 42, "b": 7}]
    assert fields["steps.echo.params"]["equal"] is False
    # The 300 kB claim-checked outputs were loaded (digests differ: the response headers carry
    # the time); their bodies are the same, so only header leaves are listed.
    fetch_changes = fields["steps.fetch.output"]["changes"]
    assert fetch_changes and all(not c["path"].startswith("body") for c in fetch_changes), (
        fetch_changes
    )
    assert fields["steps.size.output"]["equal"] is True
    # The first run's call failed once (the flaky server), the second's did not.
    assert (fields["steps.call.attempt"]["a"], fields["steps.call.attempt"]["b"]) == (2, 1)
    assert fields["steps.gate.status"]["equal"] is True
    assert fields["graph.definition"]["equal"] is True
    assert fields["steps.echo.duration_ms"]["kind"] == "timing"

    table = diff_table(diff)
    assert "≠ steps.echo.output" in table
    assert "≠   .result" in table
    assert "≠ steps.fetch.output" in table and "  steps.size.output" in table
    assert api.get(f"/v1/runs/{first}/diff/nope").status_code == 404


def test_an_imported_failed_run_is_held_by_the_scheduler_and_can_be_redriven(
    harness: Harness,
    api: TestClient,
    harness_b: Harness,
    api_b: TestClient,
    http: HttpTestServer,
) -> None:
    """The bug-report story: a run failed here, is imported there, its failing dependency is
    healthy there, and a re-drive of the failed step finishes it -- the scheduler of B, which
    never saw the run, adopts it from B's run log on the command (ADR 0028)."""
    key = uuid.uuid4().hex
    definition = {
        "id": f"fails-{key[:8]}",
        "steps": [
            {
                "id": "call",
                "node": "http.request@^1",
                "params": {"url": f"{http.url}/flaky?key={key}&fail=2"},
                "retry": {"max_attempts": 2, "initial_backoff": "20ms"},
            },
            transform("after", "a", {"a": "{{ steps.call.output.body.calls }}"}, needs=["call"]),
        ],
        "outputs": {"calls": "{{ steps.after.output.result }}"},
    }
    _register(api, definition)
    response = api.post("/v1/runs", json={"workflow_id": definition["id"], "inputs": {}})
    assert response.status_code == 202, response.text
    run_id = str(response.json()["run_id"])
    failed = harness.wait(run_id)
    assert failed.status == "failed" and failed.failed_step == "call"

    exported = api.get(f"/v1/runs/{run_id}/export").content
    imported = api_b.post("/v1/runs/import", content=exported)
    assert imported.status_code == 201, imported.text
    eventually(
        lambda: harness_b.run(run_id),
        30,
        f"imported run {run_id} projected in B",
        until=lambda r: r is not None and r.last_seq == failed.last_seq,
    )
    redrive = api_b.post(f"/v1/runs/{run_id}/steps/call/redrive", json={"reason": "fixed"})
    assert redrive.status_code == 202, redrive.text
    done = eventually(
        lambda: harness_b.run(run_id),
        30,
        f"run {run_id} re-driven in B to end again",
        until=lambda r: r is not None and r.last_seq > failed.last_seq and r.status in TERMINAL,
    )
    assert done is not None
    assert (done.status, done.outputs) == ("succeeded", {"calls": 3}), done
    assert_replay_equivalent(harness_b, run_id)
    # A's copy is untouched.
    original = harness.run(run_id)
    assert original is not None and original.status == "failed"


def test_cli_export_with_children_and_import_keep_parent_and_child(
    harness: Harness,
    api: TestClient,
    harness_b: Harness,
    api_b: TestClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = uuid.uuid4().hex[:8]
    child = {
        "id": f"double-{tag}",
        "inputs": {"n": {"type": "integer", "required": True}},
        "steps": [transform("work", "[n, n]", {"n": "{{ inputs.n }}"})],
        "outputs": {"pair": "{{ steps.work.output.result }}"},
    }
    parent = {
        "id": f"parent-{tag}",
        "steps": [
            {
                "id": "sub",
                "node": "meta.workflow",
                "params": {"workflow_id": child["id"], "inputs": {"n": 21}},
            }
        ],
        "outputs": {"sub": "{{ steps.sub.output }}"},
    }
    _register(api, child)
    _register(api, parent)
    response = api.post("/v1/runs", json={"workflow_id": parent["id"], "inputs": {}})
    assert response.status_code == 202, response.text
    run_id = str(response.json()["run_id"])
    assert harness.wait(run_id).status == "succeeded"
    child_id = child_run_id(run_id, "sub", 1, None)

    path = tmp_path / "bug.reflux"
    export = argparse.Namespace(
        run_id=run_id, output=str(path), with_children=True, api="-", client=api
    )
    assert runs_export(export) == 0
    assert "2 run(s)" in capsys.readouterr().out
    bundle = read_bundle(path.read_bytes())
    assert bundle.runs == [run_id, child_id]
    assert {w.workflow_id for w in bundle.workflows} == {parent["id"], child["id"]}

    assert runs_import(argparse.Namespace(file=str(path), wait=30.0, api="-", client=api_b)) == 0
    assert f"run {run_id} is projected" in capsys.readouterr().out
    for rid in (run_id, child_id):
        _wait_projected(harness_b, rid, bundle.events[rid][-1].seq)
        assert replayed_state(harness_b, rid) == replayed_state(harness, rid)
    # B's read model links the imported child to its parent, as A's does.
    assert [c["run_id"] for c in api_b.get(f"/v1/runs/{run_id}").json()["children"]] == [child_id]

    # reflux runs diff (CLI) on A: a run against itself is equal, exit status 0.
    diff = argparse.Namespace(
        run_a=run_id,
        run_b=run_id,
        json=False,
        changed=False,
        no_color=True,
        width=40,
        api="-",
        client=api,
    )
    assert runs_diff(diff) == 0
    assert "the runs are equal (timings aside)" in capsys.readouterr().out
