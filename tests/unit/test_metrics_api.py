"""The metrics API's pure parts: window and bucket parsing, 422/503 answers without a store,
the response models, the OpenAPI contract and the ``reflux metrics`` tables. No services."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from api.config import ApiSettings
from api.errors import install_error_handlers
from api.models.alerts import AlertPublic, alert_public
from api.models.metrics import (
    MAX_BUCKETS,
    NodeMetricsPublic,
    WindowError,
    parse_bucket,
    parse_window,
)
from api.reflection import ClickHouseAccess
from api.routes import metrics
from foundation.settings import Settings
from processors.alerts.rules import AlertEvent
from reflux.metrics_cli import (
    add_metrics_commands,
    render_alerts,
    render_nodes,
    render_quality,
    render_reliability,
    render_retries,
    render_table,
)
from schemas.models import AlertKind, AlertState


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("15m", timedelta(minutes=15)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (" 1H ", timedelta(hours=1)),
        ("90d", timedelta(days=90)),
    ],
)
def test_parse_window(text: str, expected: timedelta) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "like '15m'"),
        ("1", "like '15m'"),
        ("1x", "like '15m'"),
        ("-1h", "like '15m'"),
        ("30m1h", "like '15m'"),
        ("0m", "positive window"),
        ("91d", "at most 90d"),
    ],
)
def test_parse_window_refuses(text: str, message: str) -> None:
    with pytest.raises(WindowError, match=message):
        parse_window(text)


def test_parse_bucket() -> None:
    assert parse_bucket("5m", timedelta(hours=1)) == timedelta(minutes=5)
    with pytest.raises(WindowError, match="whole minutes") as exc:
        parse_bucket("90s", timedelta(hours=1))
    assert exc.value.type == "bucket_invalid"
    with pytest.raises(WindowError, match="no longer than the window"):
        parse_bucket("2h", timedelta(hours=1))
    with pytest.raises(WindowError, match=f"at most {MAX_BUCKETS} buckets"):
        parse_bucket("1m", timedelta(days=2))


def _app_without_store(reason: str = "it is disabled for this API") -> FastAPI:
    """The metrics router as create_app mounts it, with the state its lifespan would set when
    ClickHouse is off (no services needed)."""
    app = FastAPI()
    install_error_handlers(app)
    v1 = APIRouter(prefix="/v1")
    v1.include_router(metrics.router)
    app.include_router(v1)
    app.state.api_settings = ApiSettings(clickhouse_enabled=False)
    app.state.clickhouse = ClickHouseAccess(None, reason, "reflux")
    return app


@pytest.mark.parametrize(
    ("url", "loc", "message"),
    [
        ("/v1/metrics/nodes?window=forever", ["query", "window"], "like '15m'"),
        ("/v1/metrics/workflows?window=0h", ["query", "window"], "positive window"),
        ("/v1/metrics/failures?window=100d", ["query", "window"], "at most 90d"),
        ("/v1/metrics/reliability?window=1h&bucket=30s", ["query", "bucket"], "whole minutes"),
        ("/v1/metrics/nodes?until=2025-03-04T10:00:00", ["query", "until"], "timezone-aware"),
    ],
)
def test_bad_parameters_are_422_with_the_field_path(url: str, loc: list[str], message: str) -> None:
    with TestClient(_app_without_store()) as client:
        response = client.get(url)
    assert response.status_code == 422
    [issue] = response.json()["detail"]
    assert issue["loc"] == loc and message in issue["msg"]


@pytest.mark.parametrize(
    "path", ["nodes", "workflows", "failures", "reliability?bucket=10m", "retries", "ingest"]
)
def test_without_a_store_metrics_answer_503_naming_why(path: str) -> None:
    with TestClient(_app_without_store("owned by pid 42")) as client:
        response = client.get(f"/v1/metrics/{path}")
    assert response.status_code == 503
    assert response.json()["detail"] == "ClickHouse is not available: owned by pid 42"


def test_openapi_lists_the_metrics_and_alerts_endpoints() -> None:
    spec = create_app(Settings()).openapi()
    for path in ("nodes", "workflows", "failures", "reliability", "retries"):
        responses = spec["paths"][f"/v1/metrics/{path}"]["get"]["responses"]
        assert {"200", "422", "503"} <= set(responses), path
    assert {"200", "503"} <= set(spec["paths"]["/v1/metrics/ingest"]["get"]["responses"])
    assert {"200", "503"} <= set(spec["paths"]["/v1/alerts"]["get"]["responses"])
    params = {p["name"] for p in spec["paths"]["/v1/metrics/reliability"]["get"]["parameters"]}
    assert params == {"window", "until", "bucket"}


def test_response_models_reject_missing_fields() -> None:
    with pytest.raises(ValidationError, match="latency_ms_p99"):
        NodeMetricsPublic.model_validate(
            {"node": "n", "node_version": None, "attempts": 1, "failures": 0}
        )


def test_alert_public_maps_every_field() -> None:
    at = datetime(2025, 3, 4, 10, 5, tzinfo=UTC)
    event = AlertEvent(
        rule_id="node-error-rate",
        kind=AlertKind.ERROR_RATE,
        subject="http.request",
        state=AlertState.FIRING,
        value=0.05,
        threshold=0.01,
        samples=100,
        window=timedelta(minutes=5),
        started_at=at,
        at=at,
        message="m",
    )
    public = alert_public(event)
    assert public == AlertPublic(
        alert_id=event.alert_id,
        rule_id="node-error-rate",
        kind="error_rate",
        subject="http.request",
        state="firing",
        value=0.05,
        threshold=0.01,
        samples=100,
        window="5m",
        started_at=at,
        at=at,
        message="m",
    )


# -- reflux metrics -----------------------------------------------------------------------------


def test_render_table_aligns_numbers_right_and_text_left() -> None:
    text = render_table(["name", "n"], [["a", 5], ["long-name", 1234]])
    assert text.splitlines() == [
        "name           n",
        "---------  -----",
        "a              5",
        "long-name  1,234",
    ]


WINDOW: dict[str, Any] = {
    "window": "1h",
    "since": "2025-03-04T09:00:00Z",
    "until": "2025-03-04T10:00:00Z",
}


def _node(**overrides: Any) -> dict[str, Any]:
    row = {
        "node": "http.request",
        "node_version": None,
        "attempts": 120,
        "failures": 3,
        "error_rate": 0.025,
        "throughput_per_s": 0.0333,
        "cache_hits": 12,
        "cache_hit_rate": 0.1,
        "retried": 2,
        "cost_tokens": 0,
        "latency_ms_avg": 40.0,
        "latency_ms_p50": 31.0,
        "latency_ms_p95": 88.5,
        "latency_ms_p99": 140.25,
    }
    row.update(overrides)
    return row


def test_render_nodes() -> None:
    text = render_nodes({**WINDOW, "data": [_node()]})
    lines = text.splitlines()
    assert lines[0] == "nodes over 1h (2025-03-04 09:00:00 .. 2025-03-04 10:00:00 UTC)"
    assert lines[1].split() == [
        "node", "attempts", "err", "%", "per", "s", "cache", "%",
        "p50", "ms", "p95", "ms", "p99", "ms", "tokens",
    ]  # fmt: skip
    assert lines[3].split() == ["http.request", "120", "2.5%", "0.0", "10.0%", "31.0", "88.5",
                                "140.2", "0"]  # fmt: skip
    versioned = render_nodes({**WINDOW, "data": [_node(node_version="1.2.0")]})
    assert "version" in versioned.splitlines()[1] and "1.2.0" in versioned
    assert "(no traces in this window)" in render_nodes({**WINDOW, "data": []})


def test_render_reliability_is_a_heatmap() -> None:
    payload = {
        **WINDOW,
        "bucket": "30m",
        "nodes": ["a", "b"],
        "buckets": ["2025-03-04T09:00:00Z", "2025-03-04T09:30:00Z"],
        "cells": [
            {"node": "a", "bucket_start": "2025-03-04T09:00:00Z", "error_rate": 0.5},
            {"node": "b", "bucket_start": "2025-03-04T09:30:00Z", "error_rate": 0.0},
        ],
    }
    lines = render_reliability(payload).splitlines()
    assert lines[0].startswith("error rate per 30m bucket; reliability over 1h")
    assert lines[1].split() == ["node", "09:00", "09:30"]
    assert lines[3].split() == ["a", "50.0%", "."]
    assert lines[4].split() == ["b", ".", "0.0%"]


def test_render_retries() -> None:
    row = {
        "node": "http.request",
        "dependency": "http.request api.example.com",
        "retries": 40,
        "retries_per_s": 0.0111,
        "held": 25,
        "held_by_budget": 10,
        "held_by_circuit": 15,
        "held_ms_avg": 2500.0,
        "held_ms_max": 9000,
        "decided_while_open": 15,
        "last_circuit": "open",
    }
    lines = render_retries({**WINDOW, "data": [row]}).splitlines()
    assert lines[0].startswith("retries over 1h")
    assert lines[3].split() == [
        "http.request", "http.request", "api.example.com", "40", "0.0", "25", "10", "15",
        "2,500.0", "9,000", "open",
    ]  # fmt: skip
    assert "(no traces in this window)" in render_retries({**WINDOW, "data": []})


def test_render_quality() -> None:
    row = {
        "workflow_id": "answers",
        "workflow_version": 2,
        "step_id": "",
        "source": "feedback",
        "scores": 3,
        "runs": 2,
        "score_avg": 0.5,
        "score_min": 0.25,
        "score_max": 1.0,
    }
    lines = render_quality({**WINDOW, "data": [row]}).splitlines()
    assert lines[0].startswith("quality over 1h")
    assert lines[3].split() == [
        "answers",
        "2",
        "(run)",
        "feedback",
        "3",
        "2",
        "0.500",
        "0.250",
        "1.000",
    ]
    assert "(no traces in this window)" in render_quality({**WINDOW, "data": []})


def test_render_alerts() -> None:
    assert render_alerts({"data": [], "count": 0}) == "no alerts"
    alert = {
        "state": "firing",
        "rule_id": "node-error-rate",
        "subject": "x",
        "value": 0.5,
        "threshold": 0.01,
        "started_at": "2025-03-04T10:00:00Z",
        "message": "error rate of node x is 50.00%",
    }
    assert "node-error-rate" in render_alerts({"data": [alert], "count": 1})


def test_metrics_command_arguments() -> None:
    parser = argparse.ArgumentParser()
    add_metrics_commands(parser.add_subparsers(dest="command"), "http://api:1")
    args = parser.parse_args(["metrics", "nodes", "--window", "15m", "--by-version"])
    assert (args.view, args.window, args.by_version, args.api) == (
        "nodes",
        "15m",
        True,
        "http://api:1",
    )
    args = parser.parse_args(["metrics", "reliability"])
    assert (args.window, args.bucket) == ("1h", "5m")
    args = parser.parse_args(["metrics", "retries", "--node", "http.request"])
    assert (args.view, args.node, args.window) == ("retries", "http.request", "1h")
    args = parser.parse_args(["metrics", "alerts", "--all"])
    assert args.all and callable(args.handler)
