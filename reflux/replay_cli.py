"""``reflux replay RUN``, ``reflux runs diff|export|import``: replay for debugging (docs/replay.md).

- ``reflux replay RUN [--until SEQ] [--step]`` re-folds a run locally with the scheduler's own
  ``evolve``, event by event, and says what changed and why (:mod:`processors.replay.explain`).
  The log comes from the API (``/v1/runs/{id}/events``), from a bundle file (``reflux replay
  run.reflux``) or from Kafka (``--from-kafka``: the run log topic of ``REFLUX_TOPIC_PREFIX``).
- ``reflux replay ab ...`` is the A/B replay: handed to :func:`reflux.replay_ab_cli.main`.
- ``reflux runs diff A B`` prints ``GET /v1/runs/{a}/diff/{b}`` as a side-by-side table.
- ``reflux runs export RUN -o run.reflux`` / ``reflux runs import run.reflux``: ADR 0028.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from foundation.settings import Settings, get_settings
from processors.replay.bundle import BundleError, read_bundle
from processors.replay.explain import (
    ReplayStep,
    UnknownEventError,
    describe_state,
    event_from_json,
    replay,
)
from reflux.client import ClientError, _check, _guard
from reflux.credentials import api_client
from reflux.progress import progress_bar
from schemas.run_log import RunEvent

__all__ = ["add_replay_commands", "diff_table", "main_replay"]

EVENTS_PAGE = 1000


# -- reflux replay --------------------------------------------------------------------------------


def _replay_parser(default_api: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflux replay",
        description="Re-fold a run locally, event by event, explaining each state change. "
        "`reflux replay ab ...` runs an A/B replay instead (docs/replay.md).",
    )
    parser.add_argument("run", help="run id, or a bundle file written by `reflux runs export`")
    parser.add_argument("--until", type=int, metavar="SEQ", help="stop after event SEQ")
    parser.add_argument(
        "--step",
        action="store_true",
        help="wait for Enter between events (q + Enter stops, c + Enter runs on); when stdin "
        "is not a terminal each event takes one line of it, and at its end the replay runs on",
    )
    parser.add_argument(
        "--from-kafka", action="store_true", help="read the run log from Kafka, not the API"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="only print the final state")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the replay as JSON (each event's explanation, the final state) for scripts",
    )
    parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    return parser


def main_replay(
    argv: Sequence[str],
    default_api: str,
    *,
    out: TextIO | None = None,
    stdin: TextIO | None = None,
    client: httpx.Client | None = None,
) -> int:
    """``reflux replay``; ``out``/``stdin``/``client`` are for tests (a TestClient is an
    httpx client)."""
    out = out or sys.stdout
    if argv and argv[0] == "ab":
        return _dispatch_ab(list(argv[1:]))
    args = _replay_parser(default_api).parse_args(list(argv))
    try:
        events = _load_run(args, client)
    except httpx.ConnectError:
        print(f"reflux: cannot reach the API at {args.api}", file=sys.stderr)
        return 2
    except (ClientError, BundleError, UnknownEventError) as exc:
        print(f"reflux: {exc}", file=sys.stderr)
        return 2
    if not events:
        print(f"reflux: run {args.run} has no events", file=sys.stderr)
        return 2
    if args.until is not None and args.until > events[-1].seq:
        print(
            f"reflux: --until: Expected a seq <= {events[-1].seq} (the run's last event), but "
            f"got {args.until}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        steps = list(replay(events, args.until))
        out.write(json.dumps(replay_json(args.run, steps), indent=2, ensure_ascii=False) + "\n")
        return 0
    pause = _stepper(stdin or sys.stdin) if args.step else None
    last: ReplayStep | None = None
    total = len([e for e in events if args.until is None or e.seq <= args.until])
    # A bar only when the events are not printed one by one (they would tear it apart).
    with progress_bar("replaying events", total, enabled=args.quiet and not args.step) as bar:
        for step in replay(events, args.until):
            last = step
            bar.advance()
            if not args.quiet:
                out.write(format_step(step) + "\n")
                out.flush()
            if pause is not None and not pause():
                break
    if last is not None:
        where = f"state after seq {last.seq}"
        out.write(f"\n== {where} ==\n" + "\n".join(describe_state(last.state)) + "\n")
    return 0


def replay_json(run: str, steps: Sequence[ReplayStep]) -> dict[str, Any]:
    """``reflux replay RUN --json``: each event's explanation, and the state after the last."""
    return {
        "run": run,
        "events": [
            {
                "seq": s.seq,
                "event_type": s.event_type,
                "occurred_at": s.occurred_at.isoformat(),
                "explanation": list(s.lines),
            }
            for s in steps
        ],
        "state": steps[-1].state.model_dump(mode="json") if steps else None,
    }


def format_step(step: ReplayStep) -> str:
    head = f"#{step.seq:<4} {step.event_type:<20} {step.occurred_at.isoformat()}"
    return "\n".join([head, *(f"      {line}" for line in step.lines)])


def _stepper(stdin: TextIO) -> Callable[[], bool]:
    """One line per event (Enter). ``q`` stops; ``c`` and end of input run on without waiting."""
    interactive = stdin.isatty()
    running = False

    def pause() -> bool:
        nonlocal running
        if running:
            return True
        if interactive:
            sys.stderr.write("-- Enter: next event, c: run on, q: stop -- ")
            sys.stderr.flush()
        line = stdin.readline()
        if not line:  # end of input: nothing more to wait for
            running = True
            return True
        answer = line.strip().lower()
        if answer == "q":
            return False
        if answer == "c":
            running = True
        return True

    return pause


def _dispatch_ab(argv: list[str]) -> int:
    from reflux import replay_ab_cli  # the A/B replay's own CLI (its parser, progress bar)

    return int(replay_ab_cli.main(argv))


def _ab_parser() -> argparse.ArgumentParser:
    from reflux import replay_ab_cli

    return replay_ab_cli.build_parser()


def _load_run(args: argparse.Namespace, client: httpx.Client | None) -> list[RunEvent]:
    path = Path(args.run)
    if path.is_file():
        bundle = read_bundle(path.read_bytes())
        return list(bundle.events[bundle.run_id])
    if args.from_kafka:
        return events_from_kafka(args.run)
    if client is not None:
        return events_from_api(client, args.run)
    with api_client(args.api, timeout=30) as http:
        return events_from_api(http, args.run)


def events_from_api(client: httpx.Client, run_id: str) -> list[RunEvent]:
    events: list[RunEvent] = []
    after = -1
    while True:
        page = _check(
            client.get(
                f"/v1/runs/{run_id}/events", params={"after_seq": after, "limit": EVENTS_PAGE}
            )
        )
        events += [event_from_json(e["event_type"], e["payload"]) for e in page["data"]]
        if len(page["data"]) < EVENTS_PAGE:
            return events
        after = page["next_after_seq"]


def events_from_kafka(
    run_id: str, settings: Settings | None = None, timeout: float = 60.0
) -> list[RunEvent]:
    """The run's events from the run log topic (every partition is scanned: a debugging tool
    need not know the partitioner; read_committed, as the scheduler reads it)."""
    from processors.scheduler.runtime.recovery import _read, _reader, end_offsets
    from schemas import decode
    from streams.admin import admin_client
    from streams.topics import TopicCatalog

    settings = settings or get_settings()
    topic = TopicCatalog.from_settings(settings).runs.topic
    admin = admin_client(settings)
    metadata = admin.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise ClientError(f"Expected topic {topic} on {settings.kafka_bootstrap}, but it is absent")
    partitions = sorted(metadata.partitions)
    ends = end_offsets(admin, [topic], partitions, timeout=timeout).get(topic, {})
    key = run_id.encode()
    events: list[RunEvent] = []
    reader = _reader(settings)
    try:
        deadline = time.monotonic() + timeout
        for batch in _read(reader, topic, dict.fromkeys(partitions, 0), ends, deadline):
            for message in batch:
                value = message.value()
                if message.key() == key and value is not None:
                    event = decode(value)
                    if event.seq > (events[-1].seq if events else -1):  # type: ignore[attr-defined]
                        events.append(event)  # type: ignore[arg-type]
    finally:
        reader.close()
    if not events:
        raise ClientError(f"run {run_id!r} has no events in {topic}")
    return events


def _client(args: argparse.Namespace, timeout: float) -> contextlib.AbstractContextManager[Any]:
    """An HTTP client on ``--api``; tests put one of their own (a TestClient) in ``args.client``."""
    given = getattr(args, "client", None)
    if given is not None:
        return contextlib.nullcontext(given)
    return api_client(args.api, timeout=timeout)


# -- reflux runs diff -----------------------------------------------------------------------------

_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"


def _cell(value: Any, width: int) -> str:
    if isinstance(value, dict) and value.get("$missing") is True:
        text = "—"
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def diff_table(
    diff: dict[str, Any], *, colour: bool = False, only_changed: bool = False, width: int = 40
) -> str:
    """The diff as a side-by-side table: one row per field, ``≠`` marks a changed one (red A,
    green B in colour), ``~`` a timing (shown, never counted); sub-rows give changed leaves."""

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if colour else text

    rows: list[tuple[str, str, str, str]] = []
    section = None
    for f in diff["fields"]:
        changed = not f["equal"]
        if only_changed and not (changed and f["kind"] == "value"):
            continue
        if f["section"] != section:
            section = f["section"]
            rows.append(("", f"[{section}]", "", ""))
        mark = ("≠" if f["kind"] == "value" else "~") if changed else " "
        rows.append((mark, f["path"], _cell(f["a"], width), _cell(f["b"], width)))
        for change in f.get("changes", [])[:20]:
            rows.append(
                (mark, f"  .{change['path']}", _cell(change["a"], width), _cell(change["b"], width))
            )
    name_w = max([len(r[1]) for r in rows] + [5])
    a_w = max([len(r[2]) for r in rows] + [len(diff["a"]) + 2])
    lines = [
        f"  {'field':<{name_w}}  {'A ' + diff['a']:<{a_w}}  B {diff['b']}",
        f"  {'-' * name_w}  {'-' * a_w}  {'-' * max(len(diff['b']), 8)}",
    ]
    for mark, name, a, b in rows:
        if not mark.strip():
            lines.append(
                f"  {paint(name, _BOLD) if name.startswith('[') else name:<{name_w}}  "
                f"{a:<{a_w}}  {b}"
            )
            continue
        a_text, b_text = a + " " * (a_w - len(a)), b
        if mark == "≠":
            a_text, b_text = paint(a_text, _RED), paint(b, _GREEN)
        lines.append(f"{mark} {name:<{name_w}}  {a_text}  {b_text}")
    verdict = (
        "the runs are equal (timings aside)"
        if diff["equal"]
        else f"{diff['different']} of {diff['compared']} fields differ"
    )
    lines.append("")
    lines.append(verdict)
    return "\n".join(lines)


def runs_diff(args: argparse.Namespace) -> int:
    with _client(args, 60) as client:
        diff = _check(client.get(f"/v1/runs/{args.run_a}/diff/{args.run_b}"))
    if args.json:
        print(json.dumps(diff, indent=2, sort_keys=True))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not args.no_color
        print(diff_table(diff, colour=colour, only_changed=args.changed, width=args.width))
    return 0 if diff["equal"] else 1


# -- reflux runs export / import ------------------------------------------------------------------


def runs_export(args: argparse.Namespace) -> int:
    out = Path(args.output or f"{args.run_id}.reflux")
    with _client(args, 120) as client:
        response = client.get(
            f"/v1/runs/{args.run_id}/export",
            params={"with_children": str(bool(args.with_children)).lower()},
        )
        if response.status_code >= 400:
            _check(response)
        out.write_bytes(response.content)
    bundle = read_bundle(out.read_bytes())
    counts = bundle.manifest.get("counts", {})
    print(
        f"exported run {bundle.run_id} to {out} ({len(response.content)} bytes): "
        f"{len(bundle.runs)} run(s), {counts.get('events')} events, "
        f"{counts.get('workflows')} workflow version(s), {counts.get('payloads')} payload(s)"
    )
    return 0


def runs_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ClientError(f"No such bundle file: {path}")
    data = path.read_bytes()
    bundle = read_bundle(data)  # refuse a damaged file before sending it
    with _client(args, 120) as client:
        result = _check(
            client.post(
                "/v1/runs/import",
                content=data,
                headers={"content-type": "application/vnd.reflux.run-bundle+gzip"},
            )
        )
        print(
            f"imported run {result['run_id']}: {len(result['runs'])} run(s), "
            f"{result['events']} events, {result['payloads']} payload(s); workflows registered "
            f"{result['workflows_registered'] or '-'}, already here "
            f"{result['workflows_present'] or '-'}"
        )
        if args.wait > 0:
            _wait_projected(client, bundle.run_id, bundle.events[bundle.run_id][-1].seq, args.wait)
            print(f"run {bundle.run_id} is projected; try `reflux replay {bundle.run_id}`")
    return 0


def _wait_projected(client: httpx.Client, run_id: str, last_seq: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/runs/{run_id}")
        if response.status_code == 200 and response.json().get("last_seq", -1) >= last_seq:
            return
        time.sleep(0.2)
    raise ClientError(f"run {run_id} was imported but is not projected after {timeout:.0f}s")


# -- registration ---------------------------------------------------------------------------------


def add_replay_commands(subparsers: Any, runs_actions: Any, default_api: str) -> None:
    replay_cmd = subparsers.add_parser(
        "replay",
        help="re-fold a run locally, explaining each event (`reflux replay RUN --until SEQ "
        "--step`); `reflux replay ab ...`: A/B replay",
        add_help=False,
        # Every argument is handed over as is (its own parser, or `ab`'s): none is an option
        # here, not even --help.
        prefix_chars="\x00",
    )
    replay_cmd.add_argument("argv", nargs=argparse.REMAINDER)
    replay_cmd.set_defaults(
        handler=lambda a: main_replay(a.argv, default_api),
        # Its real parsers, for shell completion and the command-tree test (command_tree.py).
        delegated_parsers=lambda: {"": _replay_parser(default_api), "ab": _ab_parser()},
    )

    diff = runs_actions.add_parser(
        "diff", help="two runs side by side (inputs, graph, steps), differences marked"
    )
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--changed", action="store_true", help="only the fields that differ")
    diff.add_argument("--json", action="store_true", help="the API's JSON diff")
    diff.add_argument("--no-color", action="store_true", help="no colour even on a terminal")
    diff.add_argument("--width", type=int, default=40, help="cell width (40)")
    diff.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    diff.set_defaults(handler=_guard(runs_diff))

    export = runs_actions.add_parser(
        "export", help="a run, its workflow versions and payloads in one file (ADR 0028)"
    )
    export.add_argument("run_id")
    export.add_argument("-o", "--output", help="file to write (RUN.reflux)")
    export.add_argument("--with-children", action="store_true", help="include child runs")
    export.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    export.set_defaults(handler=_guard(runs_export))

    imp = runs_actions.add_parser("import", help="load an exported run into this REFLUX")
    imp.add_argument("file")
    imp.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for the projection (0: none)"
    )
    imp.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    imp.set_defaults(handler=_guard(runs_import))
