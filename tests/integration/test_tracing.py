"""A run's spans reach a real OTLP receiver (Jaeger v2, `make up`) as one trace (ADR 0062).

The API runs in the test process, the scheduler and an HTTP worker as real ``reflux`` processes,
all exporting to the local Jaeger; the run's ``http.request`` step calls the test's echo server.
Then Jaeger's query API must hold, under the caller's trace id: the API's request span, the
scheduler's run and step-attempt spans, the worker's attempt span and its HTTP client span,
linked parent to child, and the echo server must have seen a ``traceparent`` naming a span of
that trace.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from foundation.settings import Settings, get_settings
from foundation.trace_context import parse_traceparent
from infra.services.jaeger import Jaeger
from processors.scheduler.spans import attempt_span_id
from streams.admin import ensure_topics
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import Harness, HarnessFactory
from tests.integration.http_fixtures import HttpTestServer
from tests.support.api_auth import key_headers
from tests.support.processes import Component
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _workflow(workflow_id: str, url: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "steps": [{"id": "call", "node": "http.request@^1", "params": {"url": url}}],
        "outputs": {"status": "{{ steps.call.output.status }}"},
    }


def _api(harness: Harness, settings: Settings) -> TestClient:
    api = ApiSettings(
        read_schema=harness.schema,
        api_schema=f"{harness.schema}_api",
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    headers = key_headers(harness.settings, api, name="tracing-admin")
    return TestClient(create_app(settings, api), headers=headers)


def _drop_api_schema(harness: Harness) -> None:
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{harness.schema}_api" CASCADE')


def _start_run(client: TestClient, workflow_id: str, url: str, traceparent: str) -> dict[str, Any]:
    response = client.post("/v1/workflows", json=_workflow(workflow_id, url))
    assert response.status_code == 201, response.text
    eventually(
        lambda: client.get(f"/v1/workflows/{workflow_id}").status_code,
        20,
        f"workflow {workflow_id} in the projection",
        until=lambda status: status == 200,
    )
    started = client.post(
        "/v1/runs",
        json={"workflow_id": workflow_id, "inputs": {}},
        headers={"traceparent": traceparent},
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    # Polled rather than wait_ms (30 s at most): the worker process may still be joining its
    # group on a loaded machine.
    run: dict[str, Any] = eventually(
        lambda: dict(client.get(f"/v1/runs/{run_id}").json()),
        90,
        f"run {run_id} succeeded",
        until=lambda found: found.get("status") == "succeeded",
    )
    return run


def _echoed_traceparent(http: HttpTestServer) -> str:
    (echoed,) = http.requests_to("/echo")
    value = echoed.header("traceparent")
    assert value is not None, echoed.headers
    return value


@pytest.fixture(scope="module", autouse=True)
def jaeger() -> None:
    """Jaeger is deferred (``make up`` only begins its Go build): start it, waiting for the
    build (a cold build is ~5 min; it began when the services started)."""
    Jaeger(get_settings()).start()


@pytest.fixture
def processes(
    engine_harness: HarnessFactory, kafka_settings: Settings, tmp_path: Path
) -> Iterator[tuple[Harness, Component, Component]]:
    """The engine's projector and trigger router in process; the scheduler and an HTTP worker
    as processes that export their spans to the local Jaeger."""
    catalog = TopicCatalog.from_settings(kafka_settings)
    ensure_topics(catalog, settings=kafka_settings)
    ensure_topics(catalog, [catalog.invoke_topic("http.request", 1)], settings=kafka_settings)
    harness = engine_harness(scheduler=False, workers=False)
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": get_settings().jaeger_otlp_url,
        # Spans leave within 100 ms rather than the SDK's 5 s (nothing else changes).
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    scheduler = Component("scheduler", ["scheduler"], kafka_settings, tmp_path, env=otel)
    worker = Component(
        "worker",
        ["worker", "--nodes", "http", "--catalog-status", "none"],
        kafka_settings,
        tmp_path,
        env=otel,
    )
    scheduler.start()
    worker.start()
    try:
        yield harness, scheduler, worker
    finally:
        scheduler.stop()
        worker.stop()
        _drop_api_schema(harness)


def _jaeger_trace(trace_id: str) -> dict[str, Any] | None:
    answer = httpx.get(f"{get_settings().jaeger_query_url}/api/traces/{trace_id}", timeout=5)
    if answer.status_code != 200:
        return None
    data = answer.json().get("data") or []
    return dict(data[0]) if data else None


def _by_service(trace: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    found: dict[str, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        found.setdefault(services[span["processID"]], []).append(span)
    return found


def _parent(span: dict[str, Any]) -> str | None:
    parents = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return parents[0] if parents else None


def test_a_runs_spans_arrive_at_jaeger_as_one_trace(
    processes: tuple[Harness, Component, Component], http: HttpTestServer
) -> None:
    harness, scheduler, worker = processes
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    traced = harness.settings.model_copy(
        update={"otel_exporter_otlp_endpoint": get_settings().jaeger_otlp_url}
    )
    with _api(harness, traced) as client:
        run = _start_run(client, "traced", f"{http.url}/echo", f"00-{trace_id}-{caller_span}-01")

    def complete() -> dict[str, list[dict[str, Any]]]:
        trace = _jaeger_trace(trace_id)
        return _by_service(trace) if trace is not None else {}

    spans = eventually(
        complete,
        30,
        f"trace {trace_id} in Jaeger with the API's, scheduler's and worker's spans",
        until=lambda found: (
            any(s["operationName"] == "POST /v1/runs" for s in found.get("reflux-api", []))
            and len(found.get("reflux-scheduler", [])) == 2
            and len(found.get("reflux-worker", [])) == 2
        ),
        describe=lambda: scheduler.tail() + worker.tail(),
    )
    (api_span,) = [s for s in spans["reflux-api"] if s["operationName"] == "POST /v1/runs"]
    (run_span,) = [s for s in spans["reflux-scheduler"] if s["operationName"] == "run traced"]
    (step_span,) = [s for s in spans["reflux-scheduler"] if s["operationName"] == "step call"]
    (attempt,) = [s for s in spans["reflux-worker"] if s["operationName"].endswith(" call")]
    (client_span,) = [s for s in spans["reflux-worker"] if s["operationName"] == "HTTP GET"]
    # The chain: caller -> API request -> run -> step attempt -> worker attempt -> HTTP client.
    assert _parent(api_span) == caller_span
    assert _parent(run_span) == api_span["spanID"]
    assert _parent(step_span) == run_span["spanID"]
    assert _parent(attempt) == step_span["spanID"]
    assert _parent(client_span) == attempt["spanID"]
    # The scheduler's step span is the one decide named in the invocation.
    invocation_id = next(
        t["value"] for t in step_span["tags"] if t["key"] == "reflux.invocation_id"
    )
    assert step_span["spanID"] == attempt_span_id(run["run_id"], "call", invocation_id)
    # The destination saw the client span as its parent, in the caller's trace.
    echoed = parse_traceparent(_echoed_traceparent(http))
    assert echoed is not None
    assert (echoed.trace_id, echoed.span_id) == (trace_id, client_span["spanID"])


def test_without_an_exporter_the_context_still_travels(
    harness: Harness, http: HttpTestServer
) -> None:
    """Tracing off (no OTLP endpoint, the in-process engine): nothing is exported, but the
    caller's trace reaches the destination, parented by the scheduler's attempt span id."""
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    assert harness.settings.otlp_traces_endpoint() is None
    try:
        with _api(harness, harness.settings) as client:
            url = f"{http.url}/echo"
            run = _start_run(client, "untraced", url, f"00-{trace_id}-{caller_span}-01")
    finally:
        _drop_api_schema(harness)
    echoed = parse_traceparent(_echoed_traceparent(http))
    assert echoed is not None and echoed.trace_id == trace_id
    (dispatched,) = [e for e in harness.events(run["run_id"]) if e.event_type == "StepDispatched"]
    invocation_id = dispatched.payload["invocation_id"]
    assert echoed.span_id == attempt_span_id(run["run_id"], "call", invocation_id)


def test_a_webhooks_traceparent_reaches_the_runs_http_call(
    harness: Harness, http: HttpTestServer
) -> None:
    """Webhook → trigger record headers → trigger router → StartRun → the run's call."""
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    try:
        with _api(harness, harness.settings) as client:
            response = client.post("/v1/workflows", json=_workflow("hooked", f"{http.url}/echo"))
            assert response.status_code == 201, response.text
            eventually(
                lambda: client.get("/v1/workflows/hooked").status_code,
                20,
                "workflow hooked in the projection",
                until=lambda status: status == 200,
            )
            hooked = client.post(
                "/v1/hooks/hooked",
                json={},
                headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
            )
            assert hooked.status_code == 202, hooked.text
            run_id = hooked.json()["run_id"]
            eventually(
                lambda: dict(client.get(f"/v1/runs/{run_id}").json()),
                90,
                f"run {run_id} succeeded",
                until=lambda found: found.get("status") == "succeeded",
            )
    finally:
        _drop_api_schema(harness)
    echoed = parse_traceparent(_echoed_traceparent(http))
    assert echoed is not None and echoed.trace_id == trace_id
    (started,) = [e for e in harness.events(run_id) if e.event_type == "RunStarted"]
    assert started.payload["trace_context"] == {"traceparent": f"00-{trace_id}-{caller_span}-01"}
