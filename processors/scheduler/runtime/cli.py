"""``reflux scheduler`` and ``reflux trigger-router``: the run engine's stream processors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, NoReturn

from foundation.settings import get_settings
from streams.metrics import add_metrics_port_argument, serve_if_asked

__all__ = ["add_scheduler_commands", "exit_at_once"]

log = logging.getLogger(__name__)


def exit_at_once(code: int) -> NoReturn:
    """End the process now, without waiting for its threads.

    A scheduler that gives up must really exit so its supervisor starts a new one. A normal
    exit joins every non-daemon thread, among them the transaction executor's
    (``streams.producer``), which may be blocked for good in librdkafka (the producer it
    belongs to was abandoned for that reason): seen in the chaos test after a broker restart,
    the process logged its exit and then hung for minutes, and no run moved. Logs and the
    standard streams are flushed first; Kafka needs nothing: uncommitted transactions are
    aborted by the next owner of the transactional id."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe must not keep the process alive either.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


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
        exit_at_once(1)
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
