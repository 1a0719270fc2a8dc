"""``reflux projector`` and ``reflux projections migrate|rebuild``.

Wire into the main parser with::

    subparsers = parser.add_subparsers(dest="command", required=True)
    add_projections_commands(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Any, TextIO

import psycopg

from foundation.errors import RefluxError
from foundation.settings import Settings, get_settings
from projections.postgres.identifiers import DEFAULT_SCHEMA
from projections.postgres.migrations import apply_migrations, load_migrations
from projections.projector import DEFAULT_NAME, Progress, Projector, rebuild
from streams.metrics import add_metrics_port_argument, serve_if_asked

__all__ = ["add_projections_commands"]


def add_projections_commands(subparsers: Any) -> None:
    """Add ``projector`` (run forever) and ``projections`` (``migrate``, ``rebuild``)."""
    projector = subparsers.add_parser(
        "projector", help="project the runs and workflows topics into Postgres (runs forever)"
    )
    _common(projector)
    projector.add_argument("--batch-size", type=int, default=500, help="records per transaction")
    projector.add_argument(
        "--progress-interval", type=float, default=30.0, help="seconds between progress logs"
    )
    add_metrics_port_argument(projector)
    projector.set_defaults(handler=handle_projector)

    projections: argparse.ArgumentParser = subparsers.add_parser(
        "projections", help="manage the Postgres read models"
    )
    actions = projections.add_subparsers(dest="projections_action", required=True)
    migrate = actions.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    _common(migrate, name=False)
    migrate.set_defaults(handler=handle_migrate)
    rebuild_cmd = actions.add_parser(
        "rebuild",
        help="truncate the read models and replay the topics from the beginning "
        "(stop the projectors first)",
    )
    _common(rebuild_cmd)
    rebuild_cmd.add_argument("--batch-size", type=int, default=2000)
    rebuild_cmd.add_argument(
        "--timeout", type=float, default=None, help="give up after this many seconds"
    )
    rebuild_cmd.set_defaults(handler=handle_rebuild)


def _common(parser: argparse.ArgumentParser, *, name: bool = True) -> None:
    parser.add_argument(
        "--schema", default=DEFAULT_SCHEMA, help=f"Postgres schema (default {DEFAULT_SCHEMA})"
    )
    parser.add_argument("--dsn", help="Postgres DSN (default: settings)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: settings)")
    parser.add_argument("--prefix", help="topic prefix (default: settings)")
    if name:
        parser.add_argument(
            "--name", default=DEFAULT_NAME, help=f"projector name (default {DEFAULT_NAME})"
        )


def _settings(args: argparse.Namespace) -> Settings:
    updates: dict[str, Any] = {}
    if args.dsn:
        updates["postgres_dsn"] = args.dsn
    if args.bootstrap:
        updates["kafka_bootstrap"] = args.bootstrap
    if args.prefix:
        updates["topic_prefix"] = args.prefix
    return get_settings().model_copy(update=updates)


def _fail(exc: RefluxError | psycopg.Error, err: TextIO) -> int:
    print(f"error: {exc}", file=err)
    return 1


def handle_migrate(
    args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    settings = _settings(args)
    try:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            applied = apply_migrations(conn, args.schema)
    except (RefluxError, psycopg.Error) as exc:
        return _fail(exc, err)
    known = {m.version: m.name for m in load_migrations()}
    if applied:
        for version in applied:
            print(f"applied {version:03d}_{known[version]} to schema {args.schema}", file=out)
    else:
        print(f"schema {args.schema} is up to date ({len(known)} migration(s))", file=out)
    return 0


def handle_projector(
    args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %s: stopping after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        settings = _settings(args)
        serve_if_asked(args.metrics_port, settings)
        with Projector(settings, args.schema, args.name, batch_size=args.batch_size) as projector:
            stats = projector.run(stop, progress_interval=args.progress_interval)
    except (RefluxError, psycopg.Error) as exc:
        return _fail(exc, err)
    print(f"stopped after {stats.records} records ({stats.applied} applied)", file=out)
    return 0


def handle_rebuild(
    args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    started = time.monotonic()

    def progress(p: Progress) -> None:
        percent = 100.0 if p.total == 0 else 100.0 * p.done / p.total
        print(
            f"rebuild {args.schema}: {p.done}/{p.total} records ({percent:.1f}%), "
            f"{p.stats.applied} applied, {p.stats.dead_lettered} dead-lettered, "
            f"{time.monotonic() - started:.1f}s",
            file=out,
            flush=True,
        )

    try:
        stats = rebuild(
            _settings(args),
            args.schema,
            name=args.name,
            timeout=args.timeout,
            on_progress=progress,
            batch_size=args.batch_size,
        )
    except (RefluxError, psycopg.Error) as exc:
        return _fail(exc, err)
    print(
        f"rebuilt schema {args.schema} from {stats.records} records in "
        f"{time.monotonic() - started:.1f}s ({stats.applied} applied, "
        f"{stats.duplicates} duplicates, {stats.dead_lettered} dead-lettered)",
        file=out,
    )
    return 0
