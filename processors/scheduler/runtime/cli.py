"""``reflux scheduler`` and ``reflux trigger-router``: the run engine's stream processors."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from foundation.settings import get_settings
from streams.metrics import add_metrics_port_argument, serve_if_asked

__all__ = ["add_scheduler_commands"]

log = logging.getLogger(__name__)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def add_scheduler_commands(subparsers: Any) -> None:
    scheduler = subparsers.add_parser(
        "scheduler", help="run the step scheduler (consumes commands + results, writes runs)"
    )
    scheduler.add_argument(
        "--instance-id",
        help="stable id of this instance (its Kafka transactional id derives from it; "
        "default: REFLUX_SCHEDULER_INSTANCE_ID or '0')",
    )
    add_metrics_port_argument(scheduler)
    scheduler.set_defaults(handler=_run_scheduler)
    router = subparsers.add_parser(
        "trigger-router", help="turn records on the triggers topic into StartRun commands"
    )
    router.set_defaults(handler=_run_router)


def _run_scheduler(args: argparse.Namespace) -> int:
    from processors.scheduler.runtime.loop import SchedulerRuntime
    from streams.admin import ensure_topics
    from streams.topics import TopicCatalog

    settings = get_settings()
    ensure_topics(TopicCatalog.from_settings(settings), settings=settings)
    stop = _stop_on_signals()
    serve_if_asked(args.metrics_port, settings)
    runtime = SchedulerRuntime(settings, instance_id=args.instance_id)
    try:
        runtime.run(stop)
    except Exception as exc:
        # The one line a supervisor's log shows for this exit (the traceback follows).
        log.critical(
            "scheduler %s exiting on %s: %s (its supervisor starts it again)",
            runtime.instance_id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return 1
    log.info("scheduler %s stopped on request", runtime.instance_id)
    return 0


def _run_router(args: argparse.Namespace) -> int:
    from processors.triggers.router import TriggerRouter

    stop = _stop_on_signals()
    router = TriggerRouter(get_settings())
    try:
        router.run(stop)
    finally:
        router.close()
    return 0
