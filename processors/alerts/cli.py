"""``reflux alerts serve``: run the alert evaluator as its own process.

Use it with a ClickHouse server (``REFLUX_CLICKHOUSE_DSN=http://...``), where any process may
query. With embedded chdb the process that owns the store evaluates alerts (the API of
``reflux dev`` / ``reflux api``); ``serve`` then owns the store itself (migrates it and keeps the
Kafka engine consuming), so it must not run next to another owner.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from foundation.settings import Settings, get_settings
from projections.traces.migrations import DEFAULT_DATABASE

if TYPE_CHECKING:
    from projections.clickhouse import ClickHouse

__all__ = ["add_alerts_commands", "handle_serve"]

log = logging.getLogger(__name__)


def add_alerts_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``alerts serve`` to an argparse subparsers."""
    alerts: argparse.ArgumentParser = subparsers.add_parser(
        "alerts", help="SLO alerts over the traces store (published on the alerts topic)"
    )
    actions = alerts.add_subparsers(dest="alerts_action", required=True)
    serve = actions.add_parser(
        "serve", help="evaluate the alert rules every --interval seconds until stopped"
    )
    serve.add_argument("--database", default=DEFAULT_DATABASE, help="ClickHouse database")
    serve.add_argument(
        "--interval", type=float, default=None, help="seconds between evaluations (default 15)"
    )
    serve.add_argument("--once", action="store_true", help="evaluate once, print, and exit")
    serve.set_defaults(handler=handle_serve)
    return alerts


@contextlib.contextmanager
def _store(settings: Settings, database: str) -> Iterator[ClickHouse]:
    # The store's clients (chdb) load only when the command runs, not for `reflux --help`.
    from projections.clickhouse import connect
    from projections.traces.owner import TracesOwner

    if settings.resolved_clickhouse_dsn().startswith("chdb://"):
        with TracesOwner(settings, database=database) as owner:
            yield owner.ch
    else:
        ch = connect(settings)
        try:
            yield ch
        finally:
            ch.close()


def handle_serve(args: argparse.Namespace) -> int:
    from processors.alerts.config import AlertSettings
    from processors.alerts.evaluator import AlertEvaluator

    settings = get_settings()
    with _store(settings, args.database) as ch:
        evaluator = AlertEvaluator(
            settings,
            ch,
            alert_settings=AlertSettings(),
            database=args.database,
            interval_s=args.interval,
        )
        try:
            if args.once:
                for event in evaluator.run_once():
                    print(f"{event.state.value:<8} {event.rule_id:<22} {event.message}")
                return 0
            stop = threading.Event()

            def _stop(signum: int, frame: FrameType | None) -> None:
                stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _stop)
            log.info(
                "evaluating %d alert rules every %ss", len(evaluator.rules), evaluator.interval_s
            )
            evaluator.run(stop)
        finally:
            evaluator.stop()
    return 0
