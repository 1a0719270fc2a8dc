"""The SDK against the real engine and a real API (uvicorn on a free port): the order-quote
workflow written with the builder runs like the YAML one; the clients start, wait, stream,
signal, pause, resume, cancel and report refusals as typed errors."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

from api.app import create_app
from api.config import ApiSettings
from reflux.demo_service import offers_service
from reflux.sdk import (
    AsyncRefluxClient,
    Conflict,
    Invalid,
    NotFound,
    RefluxClient,
    Unauthorized,
    Workflow,
)
from tests.integration.engine_fixtures import Harness
from tests.integration.http_fixtures import serve
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def api(harness: Harness) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of the API over the harness, served by uvicorn."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = ApiSettings(
        read_schema=harness.schema,
        api_schema=f"{harness.schema}_api",
        poll_interval_s=0.05,
        clickhouse_enabled=False,  # one chdb per process: metrics live in test_traces.py
    )
    key = key_headers(harness.settings, settings, name="sdk-test")["Authorization"].split()[1]
    app = create_app(harness.settings, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not server.started and not thread.is_alive():
            pytest.fail(f"the API server thread ended before listening on port {port}")
        return server.started

    eventually(started, 20, f"the API to listen on port {port}")
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    thread.join(10)
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.api_schema}" CASCADE')


def _order_quote() -> Workflow:
    spec = importlib.util.spec_from_file_location("order_quote", EXAMPLES / "order_quote.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    workflow: Workflow = module.order_quote()
    return workflow


# Written only when an attempt outlasts the worker's lazy start-signal delay
# (node_workers/heartbeats.py): whether a step has them depends on timing, not on the definition.
_TIMING_EVENTS = frozenset({"StepStarted", "StepTimeoutExtended"})


def _shape(events: list[dict[str, Any]]) -> Counter[tuple[str, str | None]]:
    """What a run did, independent of timing: (event type, step) with multiplicity (the three
    analyses run in parallel, so their events interleave differently from run to run)."""
    return Counter(
        (e["event_type"], ((e.get("payload") or {}).get("step") or {}).get("step_id"))
        for e in events
        if e["event_type"] not in _TIMING_EVENTS
    )


def test_order_quote_from_python_runs_like_the_yaml(api: tuple[str, str]) -> None:
    url, key = api
    with RefluxClient(url, api_key=key) as client, offers_service() as service:
        from_yaml = client.register_workflow((EXAMPLES / "order-quote.yaml").read_text())
        from_code = client.register_workflow(_order_quote())
        assert (from_yaml["workflow_id"], from_code["workflow_id"]) == ("order_quote",) * 2
        assert (from_yaml["version"], from_code["version"]) == (1, 2)
        inputs = {"city": "Lyon", "service": service}
        runs = {1: client.wait_run(client.start_run("order_quote", inputs, version=1)["run_id"])}
        # wait_ms: the API answers with the finished run (200) when it ends in time.
        finished = client.start_run("order_quote", inputs, version=2, wait_ms=30_000)
        runs[2] = (
            finished
            if finished["status"] != "accepted"  # RunAccepted: not over within wait_ms
            else client.wait_run(finished["run_id"])
        )
        yaml_run, code_run = runs[1], runs[2]
        assert yaml_run["status"] == code_run["status"] == "succeeded", (yaml_run, code_run)
        assert yaml_run["outputs"] == code_run["outputs"]
        assert code_run["outputs"]["quote"] == {
            "best": "Saone Supply",
            "price": 120.0,
            "fastest": "Fourviere Tools",
            "compared": 3,
        }
        steps = {s["step_id"]: s["status"] for s in code_run["steps"]}
        assert steps == {s["step_id"]: s["status"] for s in yaml_run["steps"]}
        assert steps["approval"] == "succeeded" and steps["auto_approve"] == "skipped"
        yaml_events = client.events(yaml_run["run_id"])
        code_events = client.events(code_run["run_id"])
        assert _shape(code_events) == _shape(yaml_events)
        assert ("StepSkipped", "auto_approve") in _shape(code_events)
        # The computed steps' outputs too (the HTTP ones carry per-run headers and keys).
        computed = {"cheapest", "fastest", "suppliers", "auto_approve", "quote"}
        assert _outputs(code_events, computed) == _outputs(yaml_events, computed)
        assert set(_outputs(code_events, computed)) == computed - {"auto_approve"}


def _outputs(events: list[dict[str, Any]], steps: set[str]) -> dict[str, Any]:
    return {
        e["payload"]["step"]["step_id"]: e["payload"]["output"]
        for e in events
        if e["event_type"] == "StepSucceeded" and e["payload"]["step"]["step_id"] in steps
    }


SIGNALLED: dict[str, Any] = {
    "id": "sdk-signalled",
    "inputs": {"word": {"type": "string", "required": True}},
    "steps": [
        {"id": "gate", "node": "meta.signal", "params": {"name": "go", "timeout": "1h"}},
        {
            "id": "say",
            "node": "transform@^1",
            "needs": ["gate"],
            "params": {
                "expression": "[w, p]",
                "data": {"w": "{{ inputs.word }}", "p": "{{ steps.gate.output.payload }}"},
            },
        },
    ],
    "outputs": {"said": "{{ steps.say.output.result }}"},
}


def test_async_client_streams_a_run_and_signals_it(api: tuple[str, str]) -> None:
    url, key = api

    async def start() -> str:
        async with AsyncRefluxClient(url, api_key=key) as client:
            await client.register_workflow(SIGNALLED)
            return str((await client.start_run("sdk-signalled", {"word": "hi"}))["run_id"])

    async def follow(run_id: str) -> tuple[list[dict[str, Any]], Any, list[dict[str, Any]]]:
        async with AsyncRefluxClient(url, api_key=key) as client:
            streamed: list[dict[str, Any]] = []
            async for event in client.stream_events(run_id):
                streamed.append(event)
                if event["event_type"] == "StepWaitStarted":
                    # Signalled from inside the stream: the stream goes on to the run's end.
                    applied = await client.signal(run_id, "go", {"ok": 1}, wait_ms=10_000)
                    assert applied["status"] == "applied", applied
            run = await client.wait_run(run_id, timeout=30)
            return streamed, run, await client.events(run_id)

    run_id = asyncio.run(start())
    with RefluxClient(url, api_key=key) as sync_client:  # the stream wants a projected run
        eventually(lambda: _exists(sync_client, run_id), 20, f"run {run_id} in the read model")
    streamed, run, logged = asyncio.run(follow(run_id))
    assert run["status"] == "succeeded" and run["outputs"] == {"said": ["hi", {"ok": 1}]}
    # The stream is the whole log, in order, ending at the terminal event.
    assert [e["seq"] for e in streamed] == [e["seq"] for e in logged]
    assert streamed[0]["event_type"] == "RunStarted"
    assert streamed[-1]["event_type"] == "RunSucceeded"


def test_sync_client_controls_runs_and_types_refusals(api: tuple[str, str]) -> None:
    url, key = api
    with RefluxClient(url, api_key=key) as client:
        client.register_workflow(Workflow.from_definition(SIGNALLED))
        first = client.start_run("sdk-signalled", {"word": "a"}, idempotency_key="sdk-key-1")
        again = client.start_run("sdk-signalled", {"word": "a"}, idempotency_key="sdk-key-1")
        assert first["run_id"] == again["run_id"]
        run_id = first["run_id"]
        eventually(
            lambda: (
                [e["event_type"] for e in client.events(run_id)] if _exists(client, run_id) else []
            ),
            20,
            "the run to wait for its signal",
            until=lambda types: "StepWaitStarted" in types,
        )
        assert client.pause(run_id, wait_ms=10_000)["event_type"] == "RunPaused"
        assert client.resume(run_id, wait_ms=10_000)["event_type"] == "RunResumed"
        with pytest.raises(Conflict) as conflict:  # gate is waiting, not failed
            client.redrive(run_id, "gate", wait_ms=10_000)
        assert conflict.value.status == 409 and conflict.value.detail
        assert client.cancel(run_id, wait_ms=10_000, reason="sdk test")["event_type"] == (
            "RunCancelled"
        )
        assert client.wait_run(run_id, timeout=20)["status"] == "cancelled"
        listed = client.list_runs(workflow_id="sdk-signalled")
        assert [r["run_id"] for r in listed["data"]] == [run_id]

        with pytest.raises(NotFound) as missing:
            client.get_run("no-such-run")
        assert missing.value.status == 404 and "no-such-run" in str(missing.value.detail)
        broken = {**SIGNALLED, "id": "sdk-broken", "steps": [{**SIGNALLED["steps"][1]}]}
        with pytest.raises(Invalid) as invalid:  # a dict goes to the API as is: its 422
            client.register_workflow(broken)
        assert any("steps[0].needs[0]" in path for path in invalid.value.paths), invalid.value
        with pytest.raises(Conflict) as taken:  # the same key, another request
            client.start_run("sdk-signalled", {"word": "b"}, idempotency_key="sdk-key-1")
        assert "Idempotency-Key" in str(taken.value.detail)
    with RefluxClient(url, api_key="rfx_not-a-key") as stranger, pytest.raises(Unauthorized):
        stranger.list_runs()


def _exists(client: RefluxClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except NotFound:
        return False
    return True


def test_redrive_a_failed_step_with_the_sync_client(api: tuple[str, str]) -> None:
    url, key = api
    with RefluxClient(url, api_key=key) as client, serve() as http:
        wf = Workflow("sdk-redrive")
        # One attempt; the endpoint fails its first call, so the run fails, then a re-drive
        # of the step succeeds.
        wf.step("call", "http.request@^1", params={"url": f"{http.url}/flaky?key=sdk&fail=1"})
        wf.output("status", "{{ steps.call.output.status }}")
        client.register_workflow(wf)
        failed = client.wait_run(client.start_run("sdk-redrive")["run_id"], timeout=60)
        assert failed["status"] == "failed", failed
        applied = client.redrive(failed["run_id"], "call", wait_ms=10_000, reason="sdk test")
        # The effect: the step scheduled again, by its dispatch (ADR 0075).
        assert applied["status"] == "applied" and applied["event_type"] == "StepDispatched"
        redriven = client.wait_run(failed["run_id"], timeout=60)
        assert redriven["status"] == "succeeded" and redriven["outputs"] == {"status": 200}
        assert len(http.requests_to("/flaky")) == 2
