"""``reflux diagnoses list|show|similar`` (the API's client side for the critic's findings as
the historian stores them) and ``reflux historian`` (the component that stores them; ADR 0034).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any
from urllib.parse import quote

from foundation.settings import get_settings
from reflux.client import _check, _guard
from reflux.credentials import api_client
from reflux.output import add_json_flag, print_json

__all__ = ["add_diagnoses_commands", "describe_diagnosis"]


def _path(diagnosis_id: str) -> str:
    # Diagnosis ids contain slashes ('<kind>/<subject>/<ms>'); the route takes them either way.
    return "/v1/diagnoses/" + quote(diagnosis_id, safe="/:@")


def _line(d: dict[str, Any]) -> str:
    return (
        f"{d['detected_at'][:19]}  {d['severity']:<8} {d['kind']:<22} {d['subject']}  "
        f"{d['explanation'][:70]}"
    )


def _proposal_lines(proposals: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    lines = []
    for p in proposals:
        verdict = f" replay {p['replay_verdict']}" if p.get("replay_verdict") else ""
        lines.append(
            f"{indent}{p['mutation_id']}  {p['status']:<11} {p.get('strategy') or '-':<12} "
            f"{p['author']}{verdict}"
        )
        if p.get("effect"):
            lines.append(f"{indent}  effect: {json.dumps(p['effect'], sort_keys=True)}")
    return lines


def describe_diagnosis(d: dict[str, Any]) -> str:
    """A readable diagnosis: header, where, evidence, the embedded text, what was tried."""
    lines = [
        f"diagnosis {d['diagnosis_id']}",
        f"  {d['kind']} ({d['severity']}) by {d['detector']} at {d['detected_at']} "
        f"after {d['traces_seen']} traces",
        f"  subject: {d['subject']}",
    ]
    if d.get("error_class"):
        lines.append(f"  error class: {d['error_class']}")
    lines.append(f"  {d['explanation']}")
    if d.get("metrics"):
        lines.append(f"  metrics: {json.dumps(d['metrics'], sort_keys=True)}")
    if d.get("evidence"):
        lines.append(f"  evidence: {json.dumps(d['evidence'], sort_keys=True)[:500]}")
    if d.get("example_run_ids"):
        lines.append(f"  example runs: {', '.join(d['example_run_ids'][:5])}")
    lines.append(f"  embedded ({d['embedding_model']}): {d['context'][:300]}")
    proposals = d.get("proposals") or []
    lines.append(f"  proposals: {len(proposals)}")
    lines += _proposal_lines(proposals, "    ")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        k: v
        for k, v in (
            ("workflow_id", args.workflow),
            ("kind", args.kind),
            ("severity", args.severity),
            ("since", args.since),
            ("limit", args.limit),
        )
        if v is not None
    }
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get("/v1/diagnoses", params=params))
    if args.json:
        print_json(body)
        return 0
    for d in body["data"]:
        print(f"{d['diagnosis_id']}\n  {_line(d)}")
    if not body["data"]:
        print("no diagnoses")
    return 0


def _show(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get(_path(args.diagnosis_id)))
    if args.json:
        print_json(body)
    else:
        print(describe_diagnosis(body))
    return 0


def _similar(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get(_path(args.diagnosis_id) + "/similar", params={"k": args.k}))
    if args.json:
        print_json(body)
        return 0
    print(f"past incidents like {body['diagnosis_id']} ({body['embedding_model']}):")
    for n, d in enumerate(body["data"], 1):
        kept = "  kept fix" if d["kept"] else ""
        print(
            f"{n}. similarity {d['similarity']:.3f} score {d['score']:.3f}{kept}  "
            f"{d['diagnosis_id']}"
        )
        print(f"   {_line(d)}")
        print("\n".join(_proposal_lines(d["proposals"], "   ")) or "   nothing tried")
    if not body["data"]:
        print("none")
    return 0


def _run_historian(args: argparse.Namespace) -> int:
    from processors.historian.runtime import HistorianProjector, rebuild_history
    from streams.admin import ensure_topics
    from streams.topics import TopicCatalog

    settings = get_settings()
    ensure_topics(TopicCatalog.from_settings(settings), settings=settings)
    if args.rebuild:
        records = rebuild_history(settings, args.schema, timeout=args.timeout)
        print(f"historian: rebuilt schema {args.schema} from {records} records")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with HistorianProjector(settings, args.schema, batch_size=args.batch_size) as historian:
        stats = historian.run(stop)
    print(f"historian: stopped after {stats.records} records ({stats.applied} stored)")
    return 0


def add_diagnoses_commands(subparsers: Any, default_api: str) -> None:
    component = subparsers.add_parser(
        "historian",
        help="run the historian: diagnoses and proposal outcomes, with embeddings, into "
        "Postgres + pgvector (runs until stopped)",
    )
    component.add_argument("--schema", default="reflux", help="Postgres schema (default reflux)")
    component.add_argument("--batch-size", type=int, default=500, help="records per transaction")
    component.add_argument(
        "--rebuild",
        action="store_true",
        help="empty the historian's tables and re-read both topics from the beginning, then "
        "exit (stop the running historians first)",
    )
    component.add_argument("--timeout", type=float, default=None, help="--rebuild: give up after")
    component.set_defaults(handler=_run_historian)

    group = subparsers.add_parser("diagnoses", help="the critic's findings (historian)")
    actions = group.add_subparsers(dest="diagnoses_action", required=True)

    def api_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")

    listing = actions.add_parser("list", help="diagnoses, newest first")
    listing.add_argument("--workflow")
    listing.add_argument("--kind", help="latency_drift, failure_drift, ... (see docs/api.md)")
    listing.add_argument("--severity", help="info, warning or critical")
    listing.add_argument("--since", help="ISO 8601 time (UTC without a zone)")
    listing.add_argument("--limit", type=int)
    api_arg(listing)
    add_json_flag(listing)
    listing.set_defaults(handler=_guard(_list))
    show = actions.add_parser("show", help="evidence, embedded context, proposals")
    show.add_argument("diagnosis_id")
    api_arg(show)
    add_json_flag(show)
    show.set_defaults(handler=_guard(_show))
    similar = actions.add_parser(
        "similar", help="past incidents like this one, best first, with what was tried"
    )
    similar.add_argument("diagnosis_id")
    similar.add_argument("-k", type=int, default=5, help="how many (default 5)")
    api_arg(similar)
    add_json_flag(similar)
    similar.set_defaults(handler=_guard(_similar))
