"""``reflux replay ab ...``: start an A/B replay through the API, follow its progress (a
progress bar fed by the SSE stream ``/v1/replays/{id}/events``) and print the report; and
``reflux replay-runner``, the component that runs replays (docs/replay.md).

``reflux replay`` itself (re-fold, diff, export) belongs to :mod:`reflux.replay_cli`, which
dispatches ``reflux replay ab ARGS`` to :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import httpx

from foundation.settings import get_settings
from reflux.client import ClientError, _check
from reflux.credentials import api_client
from reflux.progress import progress_bar

__all__ = ["add_replay_runner_command", "build_parser", "describe", "main"]


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ClientError(f"{flag}: expected NODE=VALUE, but got {value!r}")
        out[name] = rest
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reflux replay ab",
        description="Replay recorded runs of a workflow against a candidate and compare (A/B).",
    )
    p.add_argument("--api", default=get_settings().api_url)
    p.add_argument("--workflow", required=True, help="workflow id")
    p.add_argument("--candidate-version", type=int, help="a registered version to replay with")
    p.add_argument("--mutation", help="a mutation proposal id: its derived definition")
    p.add_argument("--pin", action="append", default=[], help="NODE=VERSION (repeatable)")
    p.add_argument("--version", type=int, help="only recorded runs of this version")
    p.add_argument("--since", help="only runs started at or after (ISO 8601)")
    p.add_argument("--until", help="only runs started before (ISO 8601)")
    p.add_argument("--status", help="only runs that ended so (succeeded, failed)")
    p.add_argument("--filter", help="JMESPath on the run's inputs (truthy selects)")
    p.add_argument("--sample", type=int, default=50, help="newest N matching runs (50)")
    p.add_argument("--effect", action="append", default=[], help="NODE=record|stub|skip|live")
    p.add_argument("--stub", action="append", default=[], help="NODE=JSON (the stub's output)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--no-wait", action="store_true", help="print the replay id and return")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    return p


def _body(args: argparse.Namespace) -> dict[str, Any]:
    stubs: dict[str, Any] = {}
    for node, raw in _pairs(args.stub, "--stub").items():
        try:
            stubs[node] = json.loads(raw)
        except ValueError as exc:
            raise ClientError(f"--stub {node}: expected JSON, but: {exc}") from None
    selection = {
        "workflow_version": args.version,
        "since": args.since,
        "until": args.until,
        "status": args.status,
        "inputs_filter": args.filter,
        "sample_size": args.sample,
    }
    return {
        "workflow_id": args.workflow,
        "selection": {k: v for k, v in selection.items() if v is not None},
        "candidate": {
            "workflow_version": args.candidate_version,
            "mutation_id": args.mutation,
            "node_pins": _pairs(args.pin, "--pin"),
        },
        "policy": {"per_node": _pairs(args.effect, "--effect"), "stubs": stubs},
        "confidence": args.confidence,
    }


def follow(client: httpx.Client, replay_id: str, *, bar: bool = True) -> dict[str, Any]:
    """Reads the SSE stream to its end, drawing progress (reflux/progress.py: stderr, on a
    terminal); returns the final event's data."""
    event, final = "", {}
    with (
        progress_bar("replaying runs", None, enabled=bar) as progress,
        client.stream("GET", f"/v1/replays/{replay_id}/events", timeout=None) as response,
    ):
        if response.status_code >= 400:
            response.read()
            _check(response)
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data = json.loads(line.removeprefix("data:").strip())
                progress.update(int(data.get("done") or 0), data.get("total"))
                if event in {"completed", "failed"}:
                    final = data
    return final


def describe(replay: dict[str, Any]) -> str:
    """A few lines a person reads: verdict, outcomes, rates, latency, cost."""
    report = replay.get("report") or {}
    if replay.get("status") == "failed":
        return f"replay {replay.get('replay_id', '')} failed: {replay.get('error')}"
    comparison = report.get("comparison", {})
    success, latency = comparison.get("success", {}), comparison.get("latency", {})
    outcomes = report.get("outcomes", {})
    lines = [
        f"verdict: {report.get('verdict')} at {comparison.get('confidence')} confidence",
        f"  {comparison.get('reason')}",
        f"runs: {report.get('runs')}  "
        + "  ".join(f"{k}={v}" for k, v in outcomes.items())
        + f"  outputs equal={report.get('outputs_equal')}",
        f"success rate: {success.get('original_rate')} -> {success.get('candidate_rate')}"
        f"  diff {success.get('difference')} CI [{success.get('ci_low')}, "
        f"{success.get('ci_high')}]  Fisher p={success.get('fisher_p')}",
        f"latency p50 ms: {latency.get('original_median_ms')} -> "
        f"{latency.get('candidate_median_ms')}  shift {latency.get('shift_ms')} CI "
        f"[{latency.get('ci_low_ms')}, {latency.get('ci_high_ms')}]  "
        f"Mann-Whitney p={latency.get('mann_whitney_p')}",
        f"cost: {report.get('cost')}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        body = _body(args)
        with api_client(args.api, timeout=30) as client:
            accepted = _check(client.post("/v1/replays", json=body))
            replay_id = accepted["replay_id"]
            if args.no_wait:
                print(replay_id)
                return 0
            print(f"replay {replay_id}", file=sys.stderr)
            follow(client, replay_id, bar=not args.json)
            replay = _check(client.get(f"/v1/replays/{replay_id}", params={"include_runs": False}))
    except ClientError as exc:
        print(f"reflux: {exc}", file=sys.stderr)
        return 2
    except httpx.ConnectError:
        print(f"reflux: cannot reach the API at {args.api}", file=sys.stderr)
        return 2
    print(json.dumps(replay, indent=2, default=str) if args.json else describe(replay))
    if replay["status"] == "failed":
        return 1
    return 0


def _run_runner(args: argparse.Namespace) -> int:
    from processors.replay.runner import ReplayRunner
    from streams.admin import ensure_topics
    from streams.topics import TopicCatalog

    settings = get_settings()
    ensure_topics(TopicCatalog.from_settings(settings), settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    clickhouse = None
    if args.clickhouse:
        from projections.clickhouse import connect
        from projections.traces.migrations import apply

        clickhouse = connect(settings)
        apply(clickhouse, settings, database=args.clickhouse_database)
    runner = ReplayRunner(
        settings,
        schema=args.schema,
        clickhouse=clickhouse,
        clickhouse_database=args.clickhouse_database,
    )
    try:
        runner.run(stop)
    finally:
        runner.close()
        if clickhouse is not None:
            clickhouse.close()
    return 0


def add_replay_runner_command(subparsers: Any) -> None:
    component = subparsers.add_parser(
        "replay-runner", help="run the A/B replay runner (requests on reflux.replays)"
    )
    component.add_argument("--schema", default="reflux", help="read-model schema (replays)")
    component.add_argument(
        "--clickhouse",
        action="store_true",
        help="also write per-step rows to ClickHouse (a server: embedded chdb allows one "
        "process per data folder, the traces owner's)",
    )
    component.add_argument("--clickhouse-database", default="reflux")
    component.set_defaults(handler=_run_runner)


if __name__ == "__main__":
    sys.exit(main())
