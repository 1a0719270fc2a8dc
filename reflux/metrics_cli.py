"""``reflux metrics [nodes|workflows|failures|reliability|retries|quality|ingest|alerts]``: the
metrics API as terminal tables.

Reads the HTTP API (``REFLUX_API_URL`` or ``--api``) like ``reflux run`` does, so it shows the
same numbers against ``reflux dev`` on a laptop and against a deployed API. The ``render_*``
functions are pure (JSON in, text out).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from reflux.client import _check, _guard
from reflux.credentials import api_client

__all__ = [
    "RENDERERS",
    "add_metrics_commands",
    "render_alerts",
    "render_failures",
    "render_ingest",
    "render_nodes",
    "render_quality",
    "render_reliability",
    "render_retries",
    "render_table",
    "render_workflows",
]

Json = dict[str, Any]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; text left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) if rows else False
        for i in range(len(headers))
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [
            c.rjust(w) if numeric[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _clock(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def _title(kind: str, payload: Json) -> str:
    return (
        f"{kind} over {payload['window']} ({_clock(payload['since'])} .. "
        f"{_clock(payload['until'])} UTC)"
    )


def render_nodes(payload: Json) -> str:
    data = payload["data"]
    by_version = any(r["node_version"] is not None for r in data)
    headers = [
        "node",
        *(["version"] if by_version else []),
        "attempts",
        "err %",
        "per s",
        "cache %",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "tokens",
    ]
    rows = [
        [
            r["node"],
            *([r["node_version"]] if by_version else []),
            r["attempts"],
            _pct(r["error_rate"]),
            r["throughput_per_s"],
            _pct(r["cache_hit_rate"]),
            r["latency_ms_p50"],
            r["latency_ms_p95"],
            r["latency_ms_p99"],
            r["cost_tokens"],
        ]
        for r in data
    ]
    return _with_title("nodes", payload, headers, rows)


def render_workflows(payload: Json) -> str:
    headers = [
        "workflow",
        "ver",
        "runs",
        "ok %",
        "run p50 ms",
        "run p95 ms",
        "tokens",
        "tokens/run",
        "step p95 ms",
    ]
    rows = [
        [
            r["workflow_id"],
            r["workflow_version"],
            r["runs"],
            _pct(r["success_rate"]),
            r["run_duration_ms_p50"],
            r["run_duration_ms_p95"],
            r["cost_tokens"],
            r["cost_tokens_per_run"],
            r["step_latency_ms_p95"],
        ]
        for r in payload["data"]
    ]
    return _with_title("workflows", payload, headers, rows)


def render_failures(payload: Json) -> str:
    headers = ["node", "error class", "failures", "runs", "retryable", "last seen", "last message"]
    rows = [
        [
            r["node"],
            r["error_class"],
            r["failures"],
            r["runs"],
            r["retryable"],
            _clock(r["last_seen"]),
            _shorten(r["last_message"], 60),
        ]
        for r in payload["data"]
    ]
    return _with_title("top failures", payload, headers, rows)


def render_reliability(payload: Json) -> str:
    """The heatmap: a row per node, a column per bucket, each cell the error rate (``.`` for
    no attempts)."""
    buckets: list[str] = payload["buckets"]
    cells = {(c["node"], c["bucket_start"]): c for c in payload["cells"]}
    headers = ["node", *(datetime.fromisoformat(b).strftime("%H:%M") for b in buckets)]
    rows = [[node, *(_heat(cells.get((node, b))) for b in buckets)] for node in payload["nodes"]]
    title = f"error rate per {payload['bucket']} bucket; " + _title("reliability", payload)
    if not rows:
        return f"{title}\n(no traces in this window)"
    return f"{title}\n{render_table(headers, rows)}"


def render_retries(payload: Json) -> str:
    """Retries per node and dependency: how many the budget or the circuit held, and the
    circuit's state at the last retry decision (docs/decisions/0020)."""
    headers = [
        "node",
        "dependency",
        "retries",
        "per s",
        "held",
        "by budget",
        "by circuit",
        "held avg ms",
        "held max ms",
        "circuit",
    ]
    rows = [
        [
            r["node"],
            r["dependency"],
            r["retries"],
            r["retries_per_s"],
            r["held"],
            r["held_by_budget"],
            r["held_by_circuit"],
            r["held_ms_avg"],
            r["held_ms_max"],
            r["last_circuit"],
        ]
        for r in payload["data"]
    ]
    return _with_title("retries", payload, headers, rows)


def render_quality(payload: Json) -> str:
    """Quality scores (0..1) per workflow version, step and source (docs/decisions/0035)."""
    headers = ["workflow", "version", "step", "source", "scores", "runs", "avg", "min", "max"]
    rows = [
        [
            r["workflow_id"],
            r["workflow_version"],
            r["step_id"] or "(run)",
            r["source"],
            r["scores"],
            r["runs"],
            # Scores live in [0, 1]: the table's one decimal would hide the difference.
            f"{r['score_avg']:.3f}",
            f"{r['score_min']:.3f}",
            f"{r['score_max']:.3f}",
        ]
        for r in payload["data"]
    ]
    return _with_title("quality", payload, headers, rows)


def _heat(cell: Json | None) -> str:
    if cell is None:
        return "."
    return _pct(cell["error_rate"])


def render_ingest(payload: Json) -> str:
    rows = [
        ["rows ingested", payload["rows"]],
        ["rows refused (traces_errors)", payload["error_rows"]],
        ["last received", _clock(payload["last_received_at"])],
        ["lag p50 ms", payload["lag_ms_p50"]],
        ["lag p99 ms", payload["lag_ms_p99"]],
    ]
    return "traces store ingestion\n" + render_table(["", "value"], rows)


def render_alerts(payload: Json) -> str:
    if not payload["data"]:
        return "no alerts"
    headers = ["state", "rule", "subject", "value", "threshold", "since", "message"]
    rows = [
        [
            a["state"],
            a["rule_id"],
            a["subject"],
            a["value"],
            a["threshold"],
            _clock(a["started_at"]),
            a["message"],
        ]
        for a in payload["data"]
    ]
    return render_table(headers, rows)


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _with_title(kind: str, payload: Json, headers: list[str], rows: list[list[object]]) -> str:
    if not rows:
        return f"{_title(kind, payload)}\n(no traces in this window)"
    return f"{_title(kind, payload)}\n{render_table(headers, rows)}"


RENDERERS: dict[str, Callable[[Json], str]] = {
    "nodes": render_nodes,
    "workflows": render_workflows,
    "failures": render_failures,
    "reliability": render_reliability,
    "retries": render_retries,
    "quality": render_quality,
    "ingest": render_ingest,
    "alerts": render_alerts,
}


def _params(args: argparse.Namespace) -> dict[str, str | int]:
    params: dict[str, str | int] = {}
    for name in ("window", "until", "node", "workflow_id", "limit", "bucket"):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    if getattr(args, "by_version", False):
        params["by_version"] = "true"
    if getattr(args, "all", False):
        params["state"] = "all"
    return params


def show_metrics(args: argparse.Namespace) -> int:
    path = "/v1/alerts" if args.view == "alerts" else f"/v1/metrics/{args.view}"
    with api_client(args.api, timeout=30) as client:
        payload = _check(client.get(path, params=_params(args)))
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(RENDERERS[args.view](payload))
    return 0


def add_metrics_commands(subparsers: Any, default_api: str | None = None) -> None:
    """Add ``metrics <view>`` (nodes, workflows, failures, reliability, retries, ingest,
    alerts)."""
    if default_api is None:
        from foundation.settings import get_settings

        default_api = get_settings().api_url
    metrics = subparsers.add_parser(
        "metrics", help="node/workflow metrics, failures, reliability and alerts (via the API)"
    )
    views = metrics.add_subparsers(dest="view", required=True)

    def view(name: str, help_text: str, *, windowed: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = views.add_parser(name, help=help_text)
        if windowed:
            parser.add_argument("--window", "-w", default="1h", help="15m, 1h, 1h30m, 7d (1h)")
            parser.add_argument("--until", help="end of the window, ISO 8601 with offset (now)")
        parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
        parser.add_argument("--json", action="store_true", help="print the API's JSON")
        parser.set_defaults(handler=_guard(show_metrics))
        return parser

    nodes = view("nodes", "per node: latency p50/p95/p99, error rate, throughput, cache, cost")
    nodes.add_argument("--node", help="only this node")
    nodes.add_argument("--by-version", action="store_true", help="one row per node version")
    workflows = view("workflows", "per workflow version: runs, success rate, duration, cost")
    workflows.add_argument("--workflow", dest="workflow_id", help="only this workflow")
    failures = view("failures", "top failures by node and error class")
    failures.add_argument("--limit", type=int, help="how many groups (10)")
    failures.add_argument("--node", help="only this node")
    reliability = view("reliability", "node x time error-rate heatmap")
    reliability.add_argument("--bucket", default="5m", help="cell width, whole minutes (5m)")
    retries = view("retries", "retries per node and dependency: held by budget or circuit")
    retries.add_argument("--node", help="only this node")
    quality = view("quality", "quality scores (checker steps, feedback) per workflow and step")
    quality.add_argument("--workflow", dest="workflow_id", help="only this workflow")
    view("ingest", "traces store ingestion: rows, refused rows, lag", windowed=False)
    alerts = view("alerts", "SLO alerts firing now", windowed=False)
    alerts.add_argument("--all", action="store_true", help="also resolved alerts")
