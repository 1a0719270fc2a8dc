"""``reflux worker --nodes http,transform --concurrency 8``: serve node invocations.

Wire into the main parser with::

    sub = parser.add_subparsers(dest="command", required=True)
    add_worker_commands(sub)
    args = parser.parse_args(argv)
    return args.handler(args)

The node selection comes from ``--nodes``, else from the ``NODES_FILTER`` environment variable
(the seed's name for it, so existing deployment manifests keep working), else every node. This
module is the one place in node_workers that reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from foundation.liveness import BEAT_EVERY_S, Heartbeat
from foundation.settings import Settings, get_settings
from node_workers.registry import NodeRegistry, default_registry
from node_workers.runtime import DEFAULT_MAX_INLINE_OUTPUT_BYTES, WorkerConfig, WorkerRuntime
from streams.admin import ensure_topics

__all__ = ["NODES_FILTER_ENV", "add_worker_commands", "handle_worker", "select_nodes"]

NODES_FILTER_ENV = "NODES_FILTER"

log = logging.getLogger(__name__)


def add_worker_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``worker`` command to an argparse subparsers object."""
    worker: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="serve node invocations (one worker group per node major version)"
    )
    worker.add_argument(
        "--nodes",
        help="node groups to serve, e.g. 'http,transform' (name or dotted prefix, 'name@major' "
        f"pins a major; default: ${NODES_FILTER_ENV}, else every node)",
    )
    worker.add_argument(
        "--concurrency", type=int, default=8, help="attempts running at once (default 8)"
    )
    worker.add_argument(
        "--max-inline-output",
        type=int,
        default=DEFAULT_MAX_INLINE_OUTPUT_BYTES,
        metavar="BYTES",
        help="larger outputs go to the object store (default 256 KiB)",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, let in-flight attempts finish this long (default 10)",
    )
    worker.add_argument("--client-id", default="reflux-worker", help="Kafka client id")
    worker.add_argument(
        "--create-topics",
        action="store_true",
        help="create the served invoke topics (and the fixed topics) if missing",
    )
    worker.add_argument("--list", action="store_true", help="print the selected nodes and exit")
    worker.add_argument(
        "--catalog-status",
        choices=["draft", "staging", "production", "none"],
        default="production",
        help="register the served node versions in the catalog with this status when the "
        "catalog lacks them (default production; 'none' registers nothing). Never changes a "
        "version the catalog already has (an operator's promotion, weight or deprecation).",
    )
    worker.set_defaults(handler=handle_worker)
    return worker


def select_nodes(node_filter: str | None, environ: Mapping[str, str] | None = None) -> NodeRegistry:
    """The built-in nodes selected by ``node_filter``, else by ``$NODES_FILTER``, else all."""
    env = os.environ if environ is None else environ
    chosen = node_filter if node_filter is not None else env.get(NODES_FILTER_ENV)
    return default_registry().select(chosen)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / not POSIX
            return


async def _serve(runtime: WorkerRuntime) -> None:
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    beating = asyncio.create_task(_beat(Heartbeat.from_settings(runtime.settings), stop))
    try:
        await runtime.run_forever(stop)
    finally:
        beating.cancel()


async def _beat(heartbeat: Heartbeat, stop: asyncio.Event) -> None:
    """The liveness heartbeat, from the worker's event loop: a loop that stops turning (blocked
    by a call that never returns) stops beating, and the probe restarts the process."""
    while not stop.is_set():
        heartbeat.beat()
        await asyncio.sleep(BEAT_EVERY_S)


def handle_worker(args: argparse.Namespace, settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    nodes = select_nodes(args.nodes)
    if args.list:
        for node in nodes:
            flags = [f for f in ("cacheable", "side_effects") if getattr(node, f)]
            print(f"{node.key}\t{', '.join(flags)}")
        return 0
    config = WorkerConfig(
        concurrency=args.concurrency,
        max_inline_output_bytes=args.max_inline_output,
        shutdown_grace_s=args.shutdown_grace,
        client_id=args.client_id,
    )
    runtime = WorkerRuntime(settings, nodes, config=config)
    if args.create_topics:
        ensure_topics(
            runtime.catalog, [*runtime.catalog, *runtime.invoke_topics()], settings=settings
        )
    if args.catalog_status != "none":
        from node_workers.registration import register_nodes
        from schemas.models import NodeStatus

        registered = register_nodes(settings, nodes, status=NodeStatus(args.catalog_status))
        log.info("catalog: %s", registered)
    log.info("serving %s in groups %s", nodes.names(), runtime.consumer_groups())
    asyncio.run(_serve(runtime))
    return 0


if __name__ == "__main__":  # python -m node_workers.cli ...
    parser = argparse.ArgumentParser(prog="reflux")
    add_worker_commands(parser.add_subparsers(dest="command", required=True))
    logging.basicConfig(level=logging.INFO)
    parsed = parser.parse_args()
    sys.exit(parsed.handler(parsed))
