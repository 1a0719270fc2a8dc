"""``reflux traces migrate`` / ``reflux traces serve``.

Wire into the main parser with ``add_traces_commands(subparsers)``; each action sets
``args.handler``, which returns the exit code.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from foundation.errors import RefluxError
from foundation.settings import get_settings
from projections.clickhouse import connect
from projections.traces.migrations import DEFAULT_DATABASE, IngestTuning, apply
from projections.traces.owner import TracesOwner

__all__ = ["add_traces_commands", "handle_migrate", "handle_serve"]


def add_traces_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``traces`` command (with ``migrate`` and ``serve``) to an argparse subparsers."""
    traces: argparse.ArgumentParser = subparsers.add_parser(
        "traces", help="the ClickHouse traces store (reflection layer)"
    )
    actions = traces.add_subparsers(dest="traces_action", required=True)
    migrate = actions.add_parser(
        "migrate",
        help="apply the ClickHouse migrations and exit (embedded: consumption stops on exit)",
    )
    serve = actions.add_parser(
        "serve", help="own the store: migrate, then keep consuming the traces topic until stopped"
    )
    for action in (migrate, serve):
        action.add_argument(
            "--database", default=DEFAULT_DATABASE, help=f"default {DEFAULT_DATABASE!r}"
        )
        action.add_argument(
            "--flush-interval-ms",
            type=int,
            default=IngestTuning().flush_interval_ms,
            help="Kafka engine flush interval, set when the queue is created",
        )
    migrate.set_defaults(handler=handle_migrate)
    serve.add_argument(
        "--report-every", type=float, default=60.0, help="seconds between status log lines"
    )
    serve.set_defaults(handler=handle_serve)
    return traces


def handle_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    ch = connect(settings)
    try:
        tuning = IngestTuning(flush_interval_ms=args.flush_interval_ms)
        applied = apply(ch, settings, database=args.database, tuning=tuning)
    except RefluxError as exc:
        print(f"error [{exc.error_class}]: {exc}", file=sys.stderr)
        return 2
    finally:
        ch.close()
    print(f"traces store {args.database}: applied {applied or 'nothing (up to date)'}")
    return 0


def handle_serve(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    owner = TracesOwner(
        get_settings(),
        database=args.database,
        tuning=IngestTuning(flush_interval_ms=args.flush_interval_ms),
    )
    owner.run(stop, report_every_s=args.report_every)
    return 0
