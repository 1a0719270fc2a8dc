"""``reflux schedules ...``: the API's client side for schedules, and ``reflux schedules run``,
the schedule processor as its own process (ADR 0056)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any
from urllib.parse import quote

from foundation.settings import get_settings
from reflux.client import _check, _guard, parse_inputs
from reflux.credentials import api_client
from reflux.output import add_json_flag, print_json

__all__ = ["add_schedules_commands", "describe_schedule"]

log = logging.getLogger(__name__)


def _path(schedule_id: str, action: str = "") -> str:
    return f"/v1/schedules/{quote(schedule_id, safe='')}{action}"


def describe_schedule(s: dict[str, Any]) -> str:
    state = "paused" if s["paused"] else "active"
    lines = [
        f"schedule {s['schedule_id']} ({state}) -> workflow {s['workflow_id']}"
        + (f" v{s['workflow_version']}" if s.get("workflow_version") else ""),
        f"  cron {s['cron']!r} in {s['timezone']}; catch-up {s['catchup']} "
        f"(window {s['catchup_window_s']:g} s), overlap {s['overlap']}, jitter {s['jitter_s']:g} s",
    ]
    if s.get("start_at") or s.get("end_at"):
        lines.append(f"  from {s.get('start_at') or '-'} until {s.get('end_at') or '-'}")
    lines.append(f"  next: {', '.join(s['next_slots']) or '-'}")
    return "\n".join(lines)


def _create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "workflow_id": args.workflow_id,
        "cron": args.cron,
        "timezone": args.timezone,
        "catchup": args.catchup,
        "overlap": args.overlap,
        "jitter_s": args.jitter,
        "catchup_window_s": args.catchup_window,
        "inputs": parse_inputs(args.input or []),
        "paused": args.paused,
    }
    for name, value in (
        ("schedule_id", args.id),
        ("workflow_version", args.version),
        ("start_at", args.start),
        ("end_at", args.end),
    ):
        if value is not None:
            body[name] = value
    with api_client(args.api, timeout=30) as client:
        print(describe_schedule(_check(client.post("/v1/schedules", json=body))))
    return 0


def _list(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get("/v1/schedules"))
    if args.json:
        print_json(body)
        return 0
    for s in body["data"]:
        print(describe_schedule(s))
    if not body["data"]:
        print("no schedules")
    return 0


def _show(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get(_path(args.schedule_id)))
    if args.json:
        print_json(body)
    else:
        print(describe_schedule(body))
    return 0


def _action(action: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        with api_client(args.api, timeout=30) as client:
            print(describe_schedule(_check(client.post(_path(args.schedule_id, action)))))
        return 0

    return handler


def _delete(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        response = client.delete(_path(args.schedule_id))
        if response.status_code != 204:
            _check(response)
    print(f"deleted schedule {args.schedule_id}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from processors.schedules.runtime import ScheduleProcessor
    from streams.admin import ensure_topics
    from streams.topics import TopicCatalog

    settings = get_settings()
    ensure_topics(TopicCatalog.from_settings(settings), settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    processor = ScheduleProcessor(
        settings, schema=args.schema, instance_id=args.instance_id, tick_s=args.tick
    )
    try:
        processor.run(stop)
    except Exception as exc:
        log.critical(
            "schedule processor %s exiting on %s: %s",
            processor.instance_id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return 1
    log.info("schedule processor %s stopped after %d fires", processor.instance_id, processor.fired)
    return 0


def add_schedules_commands(subparsers: Any, default_api: str) -> None:
    group = subparsers.add_parser(
        "schedules", help="cron schedules that start runs (create, list, pause, ...; run)"
    )
    actions = group.add_subparsers(dest="schedules_action", required=True)

    def api_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")

    run = actions.add_parser(
        "run", help="run the schedule processor: fires due slots exactly once (until stopped)"
    )
    run.add_argument(
        "--instance-id",
        help="stable id of this instance (its static group membership; default host-pid)",
    )
    run.add_argument(
        "--schema", default="reflux", help="read-model schema for overlap checks (reflux)"
    )
    run.add_argument("--tick", type=float, default=0.1, help="seconds between plans (0.1)")
    run.set_defaults(handler=_run)

    create = actions.add_parser("create", help="create a schedule for a workflow")
    create.add_argument("workflow_id")
    create.add_argument("--cron", required=True, help="'0 2 * * *'; 6 fields: seconds first")
    create.add_argument("--timezone", default="UTC", help="IANA zone (UTC)")
    create.add_argument("--id", help="schedule id (default: a new UUID)")
    create.add_argument("--version", type=int, help="workflow version (default: latest)")
    create.add_argument("--start", help="no slot before (ISO 8601 with a zone)")
    create.add_argument("--end", help="no slot after (ISO 8601 with a zone)")
    create.add_argument("--jitter", type=float, default=0, help="seconds, at most (0)")
    create.add_argument("--catchup", choices=["skip", "one", "all"], default="skip")
    create.add_argument(
        "--catchup-window", type=float, default=60, help="seconds late = missed (60)"
    )
    create.add_argument("--overlap", choices=["skip", "allow", "cancel_previous"], default="skip")
    create.add_argument("--input", action="append", help="KEY=VALUE (JSON values parsed)")
    create.add_argument("--paused", action="store_true", help="create it paused")
    api_arg(create)
    create.set_defaults(handler=_guard(_create))
    listing = actions.add_parser("list", help="your tenant's schedules")
    api_arg(listing)
    add_json_flag(listing)
    listing.set_defaults(handler=_guard(_list))
    for name, handler, text in (
        ("show", _show, "one schedule and its next slots"),
        ("pause", _action("/pause"), "stop firing until resumed"),
        ("resume", _action("/resume"), "fire again (slots passed while paused do not fire)"),
        ("delete", _delete, "delete it"),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("schedule_id")
        api_arg(parser)
        if name == "show":
            add_json_flag(parser)
        parser.set_defaults(handler=_guard(handler))
