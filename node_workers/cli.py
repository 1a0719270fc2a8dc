"""``reflux worker --nodes http,transform --io-concurrency 256``: serve node invocations.

Wire into the main parser with::

    sub = parser.add_subparsers(dest="command", required=True)
    add_worker_commands(sub)
    args = parser.parse_args(argv)
    return args.handler(args)

The node selection comes from ``--nodes``, else from the ``NODES_FILTER`` environment variable
(the seed's name for it, so existing deployment manifests keep working), else every node. This
module is the one place in node_workers that reads the environment.

Concurrency (docs/decisions/0019-worker-concurrency.md): ``--io-concurrency``,
``--cpu-concurrency`` and ``--node-concurrency NODE[@MAJOR]=N`` win over the
``REFLUX_WORKER_IO_CONCURRENCY`` / ``_CPU_CONCURRENCY`` / ``_NODE_CONCURRENCY`` settings (the
flag's entries are added to the setting's, replacing those of the same key).

Custom nodes: ``--module mypkg.nodes`` (repeatable) serves the module's ``@node`` functions
(reflux.sdk_nodes, ADR 0059), registered in the catalog like built-ins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from foundation.errors import ConfigurationError
from foundation.liveness import BEAT_EVERY_S, Heartbeat
from foundation.settings import Settings, get_settings
from node_workers.concurrency import DEFAULT_IO_CONCURRENCY, parse_node_concurrency
from node_workers.limits import DEFAULT_MAX_INLINE_OUTPUT_BYTES
from streams.metrics import add_metrics_port_argument, serve_if_asked

if TYPE_CHECKING:
    from node_workers.node import AnyNode
    from node_workers.registry import NodeRegistry
    from node_workers.runtime import WorkerConfig, WorkerRuntime

__all__ = [
    "NODES_FILTER_ENV",
    "add_worker_commands",
    "handle_worker",
    "select_nodes",
    "served_nodes",
    "worker_config",
]

NODES_FILTER_ENV = "NODES_FILTER"

log = logging.getLogger(__name__)


def add_worker_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``worker`` command to an argparse subparsers object."""
    worker: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="serve node invocations (one worker group per node major version)"
    )
    add_metrics_port_argument(worker)
    worker.add_argument(
        "--nodes",
        help="node groups to serve, e.g. 'http,transform' (name or dotted prefix, 'name@major' "
        f"pins a major; default: ${NODES_FILTER_ENV}, else every node)",
    )
    worker.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="MODULE",
        help="serve the @node functions of this importable module, e.g. 'mypkg.nodes' "
        "(repeatable; with --module, built-ins are served only if --nodes/$"
        f"{NODES_FILTER_ENV} names them; docs/sdk-nodes.md)",
    )
    worker.add_argument(
        "--artifacts",
        action="store_true",
        help="serve every artifact node version in the catalog (nodes that carry their code, "
        "run in the code.run sandbox; follows the catalog, no --nodes/--module; "
        "docs/nodes.md#nodes-that-carry-their-code)",
    )
    worker.add_argument(
        "--io-concurrency",
        type=_limit,
        metavar="N",
        help="attempts of I/O nodes (http.request, database.query, email.send, openai.chat, "
        f"webhook.trigger) running at once, all together (default {DEFAULT_IO_CONCURRENCY}; "
        "$REFLUX_WORKER_IO_CONCURRENCY)",
    )
    worker.add_argument(
        "--cpu-concurrency",
        type=_limit,
        metavar="N",
        help="attempts of CPU nodes (transform, condition) running at once, all together "
        "(default: 4 per core this process may use; code.run: at most the cores; "
        "$REFLUX_WORKER_CPU_CONCURRENCY)",
    )
    worker.add_argument(
        "--node-concurrency",
        action="append",
        default=[],
        metavar="NODE[@MAJOR]=N",
        help="a pool of its own for a node group, e.g. 'http.request=512' or "
        "'database.query@1=32' (repeatable, or comma-separated; added to "
        "$REFLUX_WORKER_NODE_CONCURRENCY)",
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
        "--json", action="store_true", help="with --list: JSON instead of text (for scripts)"
    )
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


def _limit(text: str) -> int:
    # argparse names the flag in its message: "argument --io-concurrency: ..."
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {text!r}")
    return int(text)


def worker_config(
    args: argparse.Namespace, settings: Settings, nodes: Iterable[AnyNode] = ()
) -> WorkerConfig:
    """The worker's configuration: defaults, then the ``REFLUX_WORKER_*`` settings, then the
    flags. A ``--node-concurrency`` (or setting) entry naming no built-in node is an error: a
    typo must not silently leave a group at its class's limit."""
    from node_workers.registry import default_registry
    from node_workers.runtime import WorkerConfig

    overrides: dict[str, int] = {}
    if settings.worker_node_concurrency:
        overrides |= parse_node_concurrency(
            settings.worker_node_concurrency, "REFLUX_WORKER_NODE_CONCURRENCY"
        )
    overrides |= parse_node_concurrency(args.node_concurrency, "--node-concurrency")
    served = [*default_registry(), *nodes]
    known = {key for n in served for key in (n.name, f"{n.name}@{n.major}")}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigurationError(
            f"Expected --node-concurrency / REFLUX_WORKER_NODE_CONCURRENCY entries to name a "
            f"node (one of {sorted({n.name for n in served})}, optionally @MAJOR), "
            f"but {unknown} name none"
        )
    changes: dict[str, Any] = {
        "max_inline_output_bytes": args.max_inline_output,
        "shutdown_grace_s": args.shutdown_grace,
        "client_id": args.client_id,
        "node_concurrency": overrides,
    }
    if args.io_concurrency is not None:
        changes["io_concurrency"] = args.io_concurrency
    if args.cpu_concurrency is not None:
        changes["cpu_concurrency"] = args.cpu_concurrency
    return WorkerConfig.from_settings(settings, **changes)


def select_nodes(node_filter: str | None, environ: Mapping[str, str] | None = None) -> NodeRegistry:
    """The built-in nodes selected by ``node_filter``, else by ``$NODES_FILTER``, else all."""
    from node_workers.registry import default_registry

    env = os.environ if environ is None else environ
    chosen = node_filter if node_filter is not None else env.get(NODES_FILTER_ENV)
    return default_registry().select(chosen)


def served_nodes(
    node_filter: str | None, modules: Sequence[str], environ: Mapping[str, str] | None = None
) -> NodeRegistry:
    """Without ``modules``, :func:`select_nodes`. With them, the modules' ``@node`` functions
    (node_workers.function_nodes), plus the built-ins the filter names, if it names any: a
    custom-node worker serves its own nodes, in their own worker groups (ADR 0059)."""
    from node_workers.function_nodes import load_module_nodes
    from node_workers.registry import NodeRegistry, default_registry

    if not modules:
        return select_nodes(node_filter, environ)
    env = os.environ if environ is None else environ
    chosen = node_filter if node_filter is not None else env.get(NODES_FILTER_ENV)
    if os.getcwd() not in sys.path:
        # As `python -m` does: `reflux worker --module mypkg.nodes` run from a project finds it.
        sys.path.insert(0, os.getcwd())
    builtins = default_registry()
    custom = load_module_nodes(modules, {n.name for n in builtins})
    return NodeRegistry([*(builtins.select(chosen) if chosen else []), *custom])


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
    from node_workers.runtime import WorkerRuntime
    from streams.admin import ensure_topics

    settings = settings or get_settings()
    if getattr(args, "artifacts", False):
        return _serve_artifacts(args, settings)
    nodes = served_nodes(args.nodes, getattr(args, "module", []))
    config = worker_config(args, settings, nodes)
    if args.list:
        listed = []
        for node in nodes:
            flags = [f for f in ("cacheable", "side_effects", "idempotent") if getattr(node, f, 0)]
            limit = config.limit(node)
            listed.append(
                {"node": node.key, "flags": flags, "pool": limit.pool, "size": limit.size}
            )
            if not getattr(args, "json", False):
                print(f"{node.key}\t{', '.join(flags)}\t{limit.pool} pool of {limit.size}")
        if getattr(args, "json", False):
            print(json.dumps({"data": listed}, indent=2))
        return 0
    serve_if_asked(getattr(args, "metrics_port", None), settings)
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


def _serve_artifacts(args: argparse.Namespace, settings: Settings) -> int:
    """``reflux worker --artifacts``: the generic artifact worker group (ADR 0070)."""
    from node_workers.artifacts.worker import ArtifactWorker

    if args.nodes or getattr(args, "module", []) or args.list:
        raise ConfigurationError(
            "Expected --artifacts alone: it serves what the catalog registers, not --nodes, "
            "--module or --list"
        )
    serve_if_asked(getattr(args, "metrics_port", None), settings)
    worker = ArtifactWorker(settings, config=worker_config(args, settings))

    async def serve() -> None:
        stop = asyncio.Event()
        _install_signal_handlers(stop)
        beating = asyncio.create_task(_beat(Heartbeat.from_settings(settings), stop))
        try:
            await worker.run_forever(stop)
        finally:
            beating.cancel()

    log.info("serving the catalog's artifact nodes")
    asyncio.run(serve())
    return 0


if __name__ == "__main__":  # python -m node_workers.cli ...
    parser = argparse.ArgumentParser(prog="reflux")
    add_worker_commands(parser.add_subparsers(dest="command", required=True))
    logging.basicConfig(level=logging.INFO)
    parsed = parser.parse_args()
    sys.exit(parsed.handler(parsed))
