"""``reflux mutations ...`` (the API's client side for proposals) and ``reflux
mutation-processor`` (the component that owns the proposal lifecycle; docs/mutations.md).

``list`` / ``show`` read ``/v1/mutations``; ``approve`` / ``reject`` / ``keep`` / ``rollback``
post the decision and wait for its outcome; ``propose FILE`` sends a proposal written as JSON
or YAML (the body of ``POST /v1/mutations``); ``policy WORKFLOW off|propose|auto`` sets the
workflow's improvement policy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

from foundation.parse_limits import load_yaml
from foundation.settings import get_settings
from reflux.client import ClientError, _check, _guard
from reflux.credentials import api_client
from reflux.output import add_json_flag, print_json

__all__ = ["add_mutation_commands", "describe_mutation"]

_WAIT_MS = 20_000


def _headers() -> dict[str, str]:
    user = os.environ.get("REFLUX_USER") or os.environ.get("USER") or "anonymous"
    return {"X-Reflux-User": user}


def describe_mutation(m: dict[str, Any]) -> str:
    """A readable proposal: header, diff, report, history, effect."""
    lines = [
        f"mutation {m['mutation_id']}  {m['workflow_id']}@{m['base_version']}"
        + (f" -> v{m['applied_version']}" if m.get("applied_version") else "")
        + f"  status={m['status']}  author={m['author']}",
        f"  rationale: {m['rationale']}",
    ]
    if m.get("canary_weight") is not None:
        lines.append(f"  canary weight: {m['canary_weight']}")
    if m.get("reason"):
        lines.append(f"  reason: {m['reason']}")
    for i, change in enumerate(m.get("changes") or []):
        lines.append(
            f"  changes[{i}] {change['type']} {change['step_id']} {json.dumps(change['data'])}"
        )
    report = m.get("report")
    if report:
        for check in report.get("checks", []):
            mark = "ok" if check["passed"] else ("skipped" if check.get("skipped") else "FAILED")
            lines.append(f"  check {check['name']:<11} {mark}")
            lines += [f"      {e['path']}: {e['message']}" for e in check.get("errors", [])]
        lines += [f"  not run: {n['name']} ({n['why']})" for n in report.get("not_run", [])]
        lines += [
            f"  pending: {p['name']} (replay {p.get('replay_id')})"
            for p in report.get("pending", [])
        ]
        replay = report.get("replay")
        if replay:
            lines.append(
                f"  replay {replay.get('replay_id')}: verdict {replay.get('verdict')} "
                f"({replay.get('runs') or 0} runs; `reflux replay ab` / GET /v1/replays/ID)"
            )
        canary = report.get("canary")
        if isinstance(canary, dict):
            lines += _describe_canary(canary)
    for event in m.get("history") or []:
        why = f"  {event['reason']}" if event.get("reason") else ""
        lines.append(
            f"  {event['occurred_at'][11:23]}  {event['status']:<12} {event['actor']}{why}"
        )
    for e in m.get("effect") or []:
        rate = "-" if e["success_rate"] is None else f"{e['success_rate']:.1%}"
        p50 = "-" if e["p50_ms"] is None else f"{e['p50_ms']:.0f} ms"
        p95 = "-" if e["p95_ms"] is None else f"{e['p95_ms']:.0f} ms"
        lines.append(f"  v{e['version']}: {e['runs']} runs, success {rate}, p50 {p50}, p95 {p95}")
    return "\n".join(lines)


def _describe_canary(canary: dict[str, Any]) -> list[str]:
    """The keep / rollback evidence (the canary judge's, ADR 0033): decision and per-metric
    regression estimate with its always-valid interval."""
    lines = [
        f"  canary: {canary.get('decision', '?')} after {canary.get('canary_runs', '?')} canary "
        f"and {canary.get('baseline_runs', '?')} baseline runs"
    ]
    metrics = (canary.get("statistics") or {}).get("metrics") or {}
    for name, m in metrics.items():
        if not isinstance(m, dict):
            continue
        if not m.get("applicable"):
            lines.append(f"      {name:<12} n/a       {m.get('note') or ''}")
            continue
        flag = "REGRESSED" if m.get("significant_regression") else "ok"
        lines.append(
            f"      {name:<12} {flag:<9} regression {m.get('regression_estimate'):+.3f} "
            f"[{m.get('ci_low'):+.3f}, {m.get('ci_high'):+.3f}] "
            f"always-valid p={m.get('always_valid_p'):.2g}"
        )
    return lines


def _list(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in (
            ("workflow_id", args.workflow),
            ("status", args.status),
            ("author", args.author),
        )
        if v
    }
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get("/v1/mutations", params=params))
    if args.json:
        print_json(body)
        return 0
    for m in body["data"]:
        print(
            f"{m['mutation_id']}  {m['workflow_id']}@{m['base_version']}  {m['status']:<11} "
            f"{m['author']:<16} {m['rationale'][:60]}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get(f"/v1/mutations/{args.mutation_id}"))
    if args.json:
        print_json(body)
    else:
        print(describe_mutation(body))
    return 0


def _decision(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"wait_ms": _WAIT_MS}
    if args.reason:
        body["reason"] = args.reason
    if getattr(args, "canary_weight", None) is not None:
        body["canary_weight"] = args.canary_weight
    with api_client(args.api, timeout=60) as client:
        answer = _check(
            client.post(
                f"/v1/mutations/{args.mutation_id}/{args.action}", json=body, headers=_headers()
            )
        )
    if answer.get("status") == "accepted":
        print(f"{args.action} of {args.mutation_id} accepted (request {answer['request_id']})")
    else:
        print(describe_mutation(answer))
    return 0


def _propose(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise ClientError(f"No such proposal file: {path}")
    try:
        body = load_yaml(path.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as exc:
        raise ClientError(f"Expected {path} to parse, but: {exc}") from exc
    if not isinstance(body, dict):
        raise ClientError(f"Expected {path} to hold an object (the proposal), but it does not")
    body.setdefault("wait_ms", _WAIT_MS)
    with api_client(args.api, timeout=60) as client:
        answer = _check(client.post("/v1/mutations", json=body, headers=_headers()))
    if answer.get("status") == "accepted":
        print(f"proposal {answer['mutation_id']} accepted (request {answer['request_id']})")
    else:
        print(describe_mutation(answer))
    return 0


def _policy(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=60) as client:
        answer = _check(
            client.put(
                f"/v1/workflows/{args.workflow_id}/improvement",
                json={"policy": args.policy, "wait_ms": _WAIT_MS},
                headers=_headers(),
            )
        )
    print(f"{args.workflow_id}: improvement policy {answer['policy']}")
    return 0


def _run_processor(args: argparse.Namespace) -> int:
    from node_workers.registry import default_registry
    from reflux.dev import new_mutation_processor
    from streams.admin import ensure_topics
    from streams.topics import TopicCatalog

    settings = get_settings()
    ensure_topics(TopicCatalog.from_settings(settings), settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from processors.mutations.validation import ReplayValidation

    replay = None if args.replay_sample == 0 else ReplayValidation(sample_size=args.replay_sample)
    processor = new_mutation_processor(settings, default_registry(), args.schema, replay)
    try:
        processor.run(stop)
    finally:
        processor.close()
    return 0


def add_mutation_commands(subparsers: Any, default_api: str) -> None:
    component = subparsers.add_parser(
        "mutation-processor",
        help="run the mutation processor (proposal lifecycle on reflux.mutations)",
    )
    component.add_argument(
        "--schema",
        default="reflux",
        help="read-model schema; versions are allocated in <schema>_api, like the API's",
    )
    component.add_argument(
        "--replay-sample",
        type=int,
        default=50,
        help="validate proposals by an A/B replay of this many recent runs of the base version "
        "(a `reflux replay-runner` must run); 0: static checks only (default 50)",
    )
    component.set_defaults(handler=_run_processor)

    group = subparsers.add_parser("mutations", help="workflow mutation proposals")
    actions = group.add_subparsers(dest="mutations_action", required=True)

    def api_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")

    listing = actions.add_parser("list", help="proposals, newest first")
    listing.add_argument("--workflow")
    listing.add_argument("--status")
    listing.add_argument("--author", help="'user:<name>' or 'optimizer'")
    api_arg(listing)
    add_json_flag(listing)
    listing.set_defaults(handler=_guard(_list))
    show = actions.add_parser("show", help="diff, report, history and measured effect")
    show.add_argument("mutation_id")
    api_arg(show)
    add_json_flag(show)
    show.set_defaults(handler=_guard(_show))
    propose = actions.add_parser("propose", help="propose from a JSON/YAML file")
    propose.add_argument("file")
    api_arg(propose)
    propose.set_defaults(handler=_guard(_propose))
    for action, text in (
        ("approve", "approve a validated proposal (applies it as a canary)"),
        ("reject", "reject a proposal not approved yet"),
        ("keep", "keep an applied proposal: all new runs on the new version"),
        ("rollback", "roll an applied proposal back: new runs on the previous version"),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("mutation_id")
        parser.add_argument("--reason")
        if action == "approve":
            parser.add_argument(
                "--canary-weight",
                type=float,
                help="share of new runs for the new version, in (0, 1] (default 0.2)",
            )
        api_arg(parser)
        parser.set_defaults(handler=_guard(_decision), action=action)
    policy = actions.add_parser("policy", help="set a workflow's improvement policy")
    policy.add_argument("workflow_id")
    policy.add_argument("policy", choices=["off", "propose", "auto"])
    api_arg(policy)
    policy.set_defaults(handler=_guard(_policy))
