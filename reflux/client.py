"""``reflux run FILE [--count N]``, ``reflux runs list|show|graph|mutate|redrive|rebind|signal``:
the API's client side, for people.

Both talk to the HTTP API (``REFLUX_API_URL`` or ``--api``), the product's front door, so they
work the same against ``reflux dev`` on a laptop and against a deployed API.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from foundation.errors import RefluxError
from foundation.parse_limits import load_json, load_yaml
from reflux.credentials import api_client
from reflux.output import add_json_flag, print_json
from reflux.progress import progress_bar
from schemas.statuses import TERMINAL_RUN_STATUSES, RunStatus

DEFAULT_API = "http://127.0.0.1:8080"


class ClientError(RefluxError):
    """The API refused a request (the message has its status and detail) or the input is bad."""

    error_class = "ClientError"


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        if isinstance(detail, list):
            detail = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
            )
        raise ClientError(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code}: {detail}"
        )
    return response.json()


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON is used as JSON (``n=3`` is a number)."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"Expected --input KEY=VALUE, but got {pair!r}")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


def _time(value: str | None) -> str:
    if not value:
        return "            "
    return datetime.fromisoformat(value).strftime("%H:%M:%S.%f")[:-3]


def describe_event(event: dict[str, Any]) -> str:
    payload = event.get("payload") or {}
    kind = event.get("event_type", "?")
    step = (payload.get("step") or {}).get("step_id")
    parts = [f"{_time(event.get('occurred_at'))}  #{event.get('seq'):<3} {kind:<18}"]
    if step:
        parts.append(f"{step:<14}")
    if payload.get("attempt"):
        parts.append(f"attempt {payload['attempt']}")
    if payload.get("cache_hit"):
        parts.append("(cache hit)")
    if payload.get("error"):
        parts.append(f"[{payload['error'].get('error_class')}] {payload['error'].get('message')}")
    if kind == "StepRetryScheduled":
        parts.append(f"at {_time(payload.get('next_attempt_at'))}")
        if payload.get("reason", "backoff") != "backoff":
            # Held by the retry budget or the dependency's circuit (docs/decisions/0020).
            parts.append(
                f"held {payload.get('held_ms')} ms: {payload['reason']} "
                f"(circuit {payload.get('circuit')}, {payload.get('dependency')})"
            )
    elif kind == "GraphMutated":
        mutation = payload.get("mutation") or {}
        who = payload.get("requested_by") or "?"
        why = f": {payload['reason']}" if payload.get("reason") else ""
        parts.append(f"{mutation.get('type')} {mutation.get('step_id')} by {who}{why}")
    elif payload.get("reason"):
        parts.append(str(payload["reason"]))
    if kind == "StepsReset":
        parts.append(f"steps {', '.join(payload.get('step_ids') or [])}")
    elif kind == "RunRebound":
        parts.append(f"v{payload.get('previous_version')} -> v{payload.get('workflow_version')}")
    if kind in ("ChildRunRequested", "ChildRunEnded"):
        # meta.workflow / meta.loop: the child run (and loop iteration) of the step.
        if payload.get("iteration"):
            parts.append(f"iteration {payload['iteration']}")
        parts.append(f"child {payload.get('child_run_id')}")
        if kind == "ChildRunEnded":
            parts.append(str(payload.get("status")))
    if kind == "StepWaitStarted":
        # meta.wait / meta.signal (ADR 0057): waits in the scheduler, no worker.
        if payload.get("signal"):
            parts.append(f"waits for signal {payload['signal']!r}")
        if payload.get("due_at"):
            word = "times out" if payload.get("signal") else "until"
            parts.append(f"{word} {_time(payload['due_at'])}")
    if kind == "RunSucceeded":
        parts.append(f"outputs={json.dumps(payload.get('outputs'))}")
    parts += _describe_map(kind, payload)
    return " ".join(parts)


def _describe_map(kind: str, payload: dict[str, Any]) -> list[str]:
    """meta.map bookkeeping (docs/decisions/0024-chunked-map.md), one line per chunk."""
    if kind == "MapStarted" and payload.get("workflow_id"):
        return [
            f"{payload.get('item_count')} items, a child run of {payload['workflow_id']} "
            f"v{payload.get('workflow_version')} each ({payload.get('max_chunks_in_flight')} in "
            f"flight), {payload.get('on_failure')}"
        ]
    if kind == "MapStarted":
        return [
            f"{payload.get('item_count')} items, chunks of {payload.get('chunk_size')} "
            f"({payload.get('max_chunks_in_flight')} in flight), {payload.get('on_failure')}"
        ]
    if kind == "MapChunkDispatched":
        retry = (
            f", item attempt {payload['item_attempt']}"
            if payload.get("item_attempt", 1) > 1
            else ""
        )
        return [
            f"chunk {payload.get('chunk')}: {payload.get('item_count')} items from "
            f"#{payload.get('first_item')}{retry}"
        ]
    if kind == "MapChunkFinished":
        failed = len(payload.get("failed_items") or [])
        retrying = len(payload.get("retry_items") or [])
        return [
            f"chunk {payload.get('chunk')}: {payload.get('succeeded')} ok, {failed} failed, "
            f"{retrying} to retry"
        ]
    if kind == "MapChildEnded":
        return [
            f"item {payload.get('item')} (attempt {payload.get('item_attempt')}): child run "
            f"{payload.get('child_run_id')} {payload.get('status')} -> {payload.get('outcome')}"
        ]
    return []


def timeline(client: httpx.Client, run_id: str) -> str:
    run = _check(client.get(f"/v1/runs/{run_id}"))
    events = _check(client.get(f"/v1/runs/{run_id}/events"))["data"]
    lines = [
        f"run {run['run_id']}  {run['workflow_id']}@{run['workflow_version']}  "
        f"status={run['status']}",
    ]
    if run.get("parent_run_id"):
        lines.append(f"  child of run {run['parent_run_id']} (step {run.get('parent_step_id')})")
    lines += [f"  {describe_event(e)}" for e in events]
    steps = run.get("steps") or []
    if steps:
        lines.append("  steps:")
        for s in steps:
            hit = " (cache)" if s.get("cache_hit") else ""
            lines.append(f"    {s['step_id']:<16} {s['status']:<10} attempt {s['attempt']}{hit}")
    children = run.get("children") or []
    if children:
        lines.append("  child runs:")
        for c in children:
            iteration = f" iteration {c['iteration']}" if c.get("iteration") else ""
            lines.append(
                f"    {c['run_id']}  {c['workflow_id']}  step {c['step_id']} attempt "
                f"{c['attempt']}{iteration}  {c['status']}"
            )
    return "\n".join(lines)


def run_file(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise ClientError(f"No such workflow file: {path}")
    content_type = "application/yaml" if path.suffix in {".yaml", ".yml"} else "application/json"
    with api_client(args.api, timeout=30) as client:
        registered = _check(
            client.post(
                "/v1/workflows", content=path.read_bytes(), headers={"content-type": content_type}
            )
        )
        print(f"registered {registered['workflow_id']} version {registered['version']}")
        wait_registered(client, registered["workflow_id"], registered["version"])
        body = {
            "workflow_id": registered["workflow_id"],
            "version": registered["version"],
            "inputs": parse_inputs(args.input),
        }
        if args.count > 1:
            return _start_many(client, body, args)
        accepted = _check(client.post("/v1/runs", json=body))
        run_id = accepted["run_id"]
        print(f"run {run_id} accepted")
        if not args.wait:
            return 0
        return _follow(client, run_id, args.timeout)


def _start_many(client: httpx.Client, body: dict[str, Any], args: argparse.Namespace) -> int:
    """``reflux run FILE --count N``: N runs of one version, ``--concurrency`` requests at a
    time, a line per accepted run (as for one run); with ``--wait``, until every one ended."""
    run_ids: list[str] = []

    def start(_: int) -> str:
        return str(_check(client.post("/v1/runs", json=body))["run_id"])

    with (
        progress_bar("starting runs", args.count) as bar,
        ThreadPoolExecutor(max_workers=args.concurrency) as pool,
    ):
        for run_id in pool.map(start, range(args.count)):
            run_ids.append(run_id)
            bar.advance()
            print(f"run {run_id} accepted", flush=True)
    if not args.wait:
        return 0
    return _wait_all(client, run_ids, args.timeout)


def _wait_all(client: httpx.Client, run_ids: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    pending = set(run_ids)
    ended: dict[str, str] = {}
    with progress_bar("runs ended", len(run_ids)) as bar:
        while pending and time.monotonic() < deadline:
            for run_id in sorted(pending):
                response = client.get(f"/v1/runs/{run_id}")
                if response.status_code == 404:
                    continue  # the projection has not seen the run yet
                status = _check(response)["status"]
                if status in TERMINAL_RUN_STATUSES:
                    ended[run_id] = status
                    pending.discard(run_id)
                    bar.advance()
            if pending:
                time.sleep(0.2)
    counts: dict[str, int] = {}
    for status in ended.values():
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none ended"
    print(f"{len(run_ids)} runs: {summary}")
    if pending:
        print(f"{len(pending)} runs still running after {timeout:.0f}s", file=sys.stderr)
        return 3
    return 0 if counts.get(RunStatus.SUCCEEDED, 0) == len(run_ids) else 1


def wait_registered(client: httpx.Client, workflow_id: str, version: int) -> None:
    """Registration is asynchronous (a record on Kafka, then the projection): wait until the
    API can see the version, since starting a run needs it."""
    deadline = time.monotonic() + 15
    while client.get(f"/v1/workflows/{workflow_id}/versions/{version}").status_code != 200:
        if time.monotonic() > deadline:
            raise ClientError(
                f"{workflow_id} version {version} was registered but is still not "
                "visible after 15s; is the projector running?"
            )
        time.sleep(0.1)


def _follow(client: httpx.Client, run_id: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = -1
    status = "accepted"
    while time.monotonic() < deadline:
        response = client.get(f"/v1/runs/{run_id}/events", params={"after_seq": seen})
        if response.status_code == 404:
            time.sleep(0.1)  # the projection has not seen the run yet
            continue
        for event in _check(response)["data"]:
            print(f"  {describe_event(event)}", flush=True)
            seen = max(seen, event["seq"])
        run = client.get(f"/v1/runs/{run_id}")
        if run.status_code == 200:
            status = run.json()["status"]
            if status in TERMINAL_RUN_STATUSES:
                print(timeline(client, run_id))
                return 0 if status == RunStatus.SUCCEEDED else 1
        time.sleep(0.1)
    print(f"run {run_id} is still {status} after {timeout:.0f}s", file=sys.stderr)
    return 3


def show_run(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        if args.json:
            # The two API bodies the timeline is drawn from, each as is.
            run = _check(client.get(f"/v1/runs/{args.run_id}"))
            events = _check(client.get(f"/v1/runs/{args.run_id}/events"))["data"]
            print_json({"run": run, "events": events})
            return 0
        print(timeline(client, args.run_id))
    return 0


def list_runs(args: argparse.Namespace) -> int:
    params = {"workflow_id": args.workflow, "status": args.status, "limit": args.limit}
    params |= {"cursor": args.cursor}
    with api_client(args.api, timeout=30) as client:
        body = _check(client.get("/v1/runs", params={k: v for k, v in params.items() if v}))
    if args.json:
        print_json(body)
        return 0
    for run in body["data"]:
        print(
            f"{run['run_id']}  {run['workflow_id']}@{run['workflow_version']:<4} "
            f"{run['status']:<10} started {run['started_at']}"
        )
    if not body["data"]:
        print("no runs")
    elif body.get("next_cursor"):
        print(f"more: --cursor {body['next_cursor']}")
    return 0


MUTATION_TYPES = ("add_step", "remove_step", "update_params", "replace_node")


def mutation_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /v1/runs/{id}/mutations`` body of ``reflux runs mutate``: one mutation from
    ``--op/--step/--data``, or (``--file``) a list applied all or nothing."""
    if getattr(args, "file", None) is not None:
        return mutations_file_body(args)
    if args.op is None or args.step is None:
        raise ClientError("Expected --op and --step (one mutation), or --file (a list of them)")
    data: Any = {}
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise ClientError(f"Expected --data to be JSON, but it does not parse: {exc}") from exc
    if args.node is not None:
        if args.op != "replace_node":
            raise ClientError("--node goes with --op replace_node (add_step takes --data)")
        data = {"node": args.node, **({"node_version": args.version} if args.version else {})}
    body: dict[str, Any] = {"type": args.op, "step_id": args.step, "data": data}
    return _who_why(body, args)


def mutations_file_body(args: argparse.Namespace) -> dict[str, Any]:
    """``--file ops.json`` (``-``: stdin; ``.yaml``/``.yml`` read as YAML): a list of operations
    ``[{"type", "step_id", "data"}, ...]``, or ``{"mutations": [...], "reason", "requested_by"}``
    (``--reason``/``--by`` win over the file's)."""
    single = ("op", "step", "data", "node", "version")
    given = [f"--{name}" for name in single if getattr(args, name, None) is not None]
    if given:
        raise ClientError(f"--file carries the operations: drop {', '.join(given)}")
    path = str(args.file)
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"Expected --file {path} to be readable, but: {exc}") from exc
    try:
        if path.endswith((".yaml", ".yml")):
            content: Any = load_yaml(text)
        else:
            content = load_json(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ClientError(f"Expected --file {path} to parse, but: {exc}") from exc
    body: dict[str, Any]
    if isinstance(content, list):
        body = {"mutations": content}
    elif isinstance(content, dict) and isinstance(content.get("mutations"), list):
        body = dict(content)
    else:
        raise ClientError(
            f"Expected --file {path} to hold a list of operations or "
            '{"mutations": [...]}, but it holds ' + type(content).__name__
        )
    if not body["mutations"]:
        raise ClientError(f"Expected --file {path} to hold at least one operation")
    return _who_why(body, args)


def _who_why(body: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if args.reason:
        body["reason"] = args.reason
    if args.by:
        body["requested_by"] = args.by
    return body


def mutate_run(args: argparse.Namespace) -> int:
    return _send_command(args, f"/v1/runs/{args.run_id}/mutations", mutation_body(args))


def graph_text(graph: dict[str, Any]) -> str:
    lines = [f"run {graph['run_id']}  status={graph['status']}  last_seq={graph['last_seq']}"]
    for step in graph["steps"]:
        needs = f" needs {', '.join(step['needs'])}" if step["needs"] else ""
        lines.append(f"  {step['step_id']:<16} {step['status']:<10} {step['node']}{needs}")
    if graph["mutations"]:
        lines.append("  mutations:")
    for m in graph["mutations"]:
        who = m.get("requested_by") or "?"
        why = f": {m['reason']}" if m.get("reason") else ""
        lines.append(
            f"    #{m['seq']:<4} {m['type']:<14} {m['step_id']:<16} by {who}{why}  "
            f"{json.dumps(m['data'])}"
        )
    return "\n".join(lines)


def show_graph(args: argparse.Namespace) -> int:
    with api_client(args.api, timeout=30) as client:
        graph = _check(client.get(f"/v1/runs/{args.run_id}/graph"))
    if args.json:
        print_json(graph)
    else:
        print(graph_text(graph))
    return 0


def _send_command(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    """POST a run command, wait for its effect (``--wait-ms``), print what happened."""
    body = {k: v for k, v in body.items() if v is not None}
    with api_client(args.api, timeout=30 + args.wait_ms / 1000) as client:
        params = {"wait_ms": args.wait_ms} if args.wait_ms else {}
        answer = _check(client.post(path, json=body, params=params))
        if answer.get("status") == "applied":
            print(f"{answer['command_id']} applied: {answer['event_type']} at seq {answer['seq']}")
        else:
            print(f"{answer['command_id']} accepted (not applied yet)")
    return 0


def redrive_step(args: argparse.Namespace) -> int:
    return _send_command(
        args,
        f"/v1/runs/{args.run_id}/steps/{args.step_id}/redrive",
        {"downstream": args.downstream, "reason": args.reason, "requested_by": args.by},
    )


def rebind_run(args: argparse.Namespace) -> int:
    return _send_command(
        args,
        f"/v1/runs/{args.run_id}/rebind",
        {
            "version": args.version,
            "redrive_failed": not args.no_redrive_failed,
            "reason": args.reason,
            "requested_by": args.by,
        },
    )


def signal_run(args: argparse.Namespace) -> int:
    """``reflux runs signal RUN NAME --payload JSON``: end a meta.signal wait (ADR 0057)."""
    try:
        payload = json.loads(args.payload) if args.payload is not None else None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--payload: expected JSON, but {exc}") from None
    body = {"payload": payload, "reason": args.reason, "requested_by": args.by}
    return _send_command(args, f"/v1/runs/{args.run_id}/signals/{args.name}", body)


def send_feedback(args: argparse.Namespace) -> int:
    """``reflux runs feedback RUN --score 0.8``: a quality score on the run (ADR 0035)."""
    body = {"score": args.score, "label": args.label, "comment": args.comment, "step_id": args.step}
    with api_client(args.api, timeout=30) as client:
        answer = _check(
            client.post(
                f"/v1/runs/{args.run_id}/feedback",
                json={k: v for k, v in body.items() if v is not None},
            )
        )
    print(f"feedback {answer['feedback_id']} on run {answer['run_id']}: score {answer['score']}")
    return 0


def _command_options(parser: argparse.ArgumentParser, default_api: str) -> None:
    parser.add_argument("--reason", help="why (kept in the run log)")
    parser.add_argument("--by", help="who asks (requested_by)")
    parser.add_argument(
        "--wait-ms",
        type=int,
        default=10_000,
        help="wait this long for the command to take effect (0: do not wait; default 10000)",
    )
    parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")


def _add_signal_command(actions: Any, default_api: str) -> None:
    signal = actions.add_parser(
        "signal",
        help="deliver a named signal to the run's waiting meta.signal steps (e.g. an approval)",
        description="e.g. reflux runs signal RUN approval --payload '{\"approved\": true}' "
        "(POST /v1/runs/RUN/signals/NAME; refused when no step waits for the signal)",
    )
    signal.add_argument("run_id")
    signal.add_argument("name", help="the signal's name (a meta.signal step's params.name)")
    signal.add_argument("--payload", help="JSON: the step's output.payload (default: null)")
    _command_options(signal, default_api)
    signal.set_defaults(handler=_guard(signal_run))


def _add_run_command(subparsers: Any, default_api: str) -> None:
    run = subparsers.add_parser("run", help="register a workflow file and start a run")
    run.add_argument("file", help="workflow definition (.yaml or .json)")
    run.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run input (repeatable); JSON values are parsed (n=3 is a number)",
    )
    run.add_argument("--wait", action="store_true", help="follow the run until it ends")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    run.add_argument(
        "--count",
        type=_positive,
        default=1,
        metavar="N",
        help="start N runs with these inputs (a progress bar on a terminal; --wait: until "
        "every one ended, then a count per status)",
    )
    run.add_argument(
        "--concurrency",
        type=_positive,
        default=8,
        metavar="C",
        help="--count: requests in flight at a time (8)",
    )
    run.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    run.set_defaults(handler=_guard(run_file))


def _add_list_command(actions: Any, default_api: str) -> None:
    listing = actions.add_parser("list", help="runs, newest first (GET /v1/runs)")
    listing.add_argument("--workflow", help="only runs of this workflow id")
    listing.add_argument("--status", help="only runs with this status (e.g. failed)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    listing.add_argument("--cursor", help="the next page (printed after a full page)")
    listing.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    add_json_flag(listing)
    listing.set_defaults(handler=_guard(list_runs))


def add_client_commands(subparsers: Any, default_api: str) -> Any:
    """Adds ``run`` and ``runs ...``; returns the ``runs`` actions (other modules add theirs)."""
    _add_run_command(subparsers, default_api)
    runs = subparsers.add_parser("runs", help="inspect runs")
    actions = runs.add_subparsers(dest="runs_action", required=True)
    _add_list_command(actions, default_api)
    show = actions.add_parser("show", help="a run's timeline")
    show.add_argument("run_id")
    show.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    add_json_flag(show)
    show.set_defaults(handler=_guard(show_run))
    graph = actions.add_parser("graph", help="a run's current graph and its mutations")
    graph.add_argument("run_id")
    graph.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    add_json_flag(graph)
    graph.set_defaults(handler=_guard(show_graph))
    mutate = actions.add_parser(
        "mutate",
        help="change a running run's graph (one mutation, or --file: a list, all or nothing)",
        description="e.g. reflux runs mutate RUN --op update_params --step fetch "
        '--data \'{"url": "https://b.test"}\' --reason "new host" --by alice; '
        "reflux runs mutate RUN --file ops.json (a JSON list of "
        '{"type", "step_id", "data"} applied all or nothing, in order)',
    )
    mutate.add_argument("run_id")
    mutate.add_argument("--op", choices=MUTATION_TYPES)
    mutate.add_argument("--step", help="the step added, removed or changed")
    mutate.add_argument(
        "--file",
        help="a list of operations applied all or nothing (JSON, or YAML by extension; - reads "
        'stdin): [{"type": ..., "step_id": ..., "data": ...}, ...] or {"mutations": [...]}',
    )
    mutate.add_argument(
        "--data", help="JSON: the step (add_step), the new params (update_params), {} (remove)"
    )
    mutate.add_argument("--node", help="replace_node: the node name (or name@constraint)")
    mutate.add_argument("--version", help="replace_node: the version constraint, e.g. ^2")
    _command_options(mutate, default_api)
    mutate.set_defaults(handler=_guard(mutate_run))
    redrive = actions.add_parser(
        "redrive",
        help="re-run a failed step, or (--downstream) a step and everything downstream of it",
    )
    redrive.add_argument("run_id")
    redrive.add_argument("step_id")
    redrive.add_argument(
        "--downstream",
        action="store_true",
        help="re-drive from the step: it and its transitive dependents run again, on the "
        "upstream outputs the run has (a succeeded or failed run reopens)",
    )
    _command_options(redrive, default_api)
    redrive.set_defaults(handler=_guard(redrive_step))
    rebind = actions.add_parser(
        "rebind", help="continue a failed or paused run on another version of its workflow"
    )
    rebind.add_argument("run_id")
    rebind.add_argument("--version", type=int, help="workflow version (default: the latest)")
    rebind.add_argument(
        "--no-redrive-failed",
        action="store_true",
        help="only rebind: leave a failed run failed (re-drive its steps later)",
    )
    _command_options(rebind, default_api)
    rebind.set_defaults(handler=_guard(rebind_run))
    _add_signal_command(actions, default_api)
    feedback = actions.add_parser(
        "feedback",
        help="score a run (or one of its steps): 0 = wrong/bad .. 1 = right/good",
        description="e.g. reflux runs feedback RUN --score 0.2 --label wrong --comment 'VAT id' "
        "(becomes a trace with metrics.quality_score; read back with GET /v1/runs/RUN/feedback)",
    )
    feedback.add_argument("run_id")
    feedback.add_argument("--score", type=float, required=True, help="0..1")
    feedback.add_argument("--label", help="a short category (<= 64 chars)")
    feedback.add_argument("--comment", help="free text (<= 2000 chars)")
    feedback.add_argument("--step", help="the step the feedback is about (default: the run)")
    feedback.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    feedback.set_defaults(handler=_guard(send_feedback))
    return actions


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"Expected a number >= 1, but got {value}")
    return value


def _guard(handler: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except ClientError as exc:
            print(f"reflux: {exc}", file=sys.stderr)
            return 2
        except httpx.ConnectError:
            print(
                f"reflux: cannot reach the API at {args.api} (is `reflux dev` or `reflux api` "
                "running?)",
                file=sys.stderr,
            )
            return 2

    return wrapped
