"""``reflux dev``: the engine (DevEngine) plus the HTTP API in one process; with ``--processes
N``, N scheduler and N worker processes (and a projector and a trigger router process), each
under ``reflux supervise``, beside the rest in this process (docs/decisions/0066)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from foundation.settings import Settings, get_settings
from node_workers.registry import NodeRegistry
from reflux.dev import DevEngine
from reflux.processes import ProcessEngine

log = logging.getLogger(__name__)

PROCESS_LOGS = "log/dev"
"""Where the component processes of ``reflux dev --processes`` log, under the data dir."""


@contextlib.contextmanager
def component_processes(
    settings: Settings,
    nodes: NodeRegistry,
    schema: str,
    *,
    count: int,
    modules: Sequence[str] = (),
    log_dir: Path | None = None,
) -> Iterator[ProcessEngine | None]:
    """``count`` scheduler and worker processes plus a projector and a trigger router, each
    supervised; stopped (with their children) however this process ends. None for 0."""
    if count < 1:
        yield None
        return
    worker_args = ["--catalog-status", "none"]
    if modules:
        # As in this process: every built-in, plus the modules' nodes.
        worker_args += ["--nodes", "*", *(a for m in modules for a in ("--module", m))]
    engine = ProcessEngine(
        settings,
        schema=schema,
        schedulers=count,
        workers=count,
        supervised=True,
        instance_prefix="dev",
        worker_args=worker_args,
        nodes=nodes,
        log_dir=log_dir or settings.data_dir / PROCESS_LOGS,
    )
    # SIGTERM before uvicorn installs its handlers (or after it restored the default) would
    # end this process without a word to the children: make it an exception that unwinds.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        engine.start()
        pids = engine.wait_started()
        print(
            f"reflux dev: {count} scheduler and {count} worker processes "
            f"(supervised; logs in {engine.log_dir}):",
            flush=True,
        )
        for line in engine.describe():
            print(f"  {line}", flush=True)
        log.info("component processes: %s", pids)
        yield engine
    finally:
        engine.stop()
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.strsignal(signum))


def serve_dev(
    host: str = "127.0.0.1",
    port: int = 8080,
    modules: Sequence[str] = (),
    processes: int = 0,
    log_dir: Path | None = None,
) -> int:
    """``modules``: import their ``@node`` functions and serve them beside the built-ins
    (``reflux dev --module mypkg.nodes``; ADR 0059). ``processes``: run the schedulers, the
    workers, the projector and the trigger router as that many separate processes (0: all in
    this process)."""
    import uvicorn

    from api.app import create_app
    from api.auth.bootstrap import ensure_local_admin_key
    from api.config import ApiSettings
    from node_workers.cli import served_nodes
    from reflux.credentials import console_link, default_key_file

    settings = get_settings()
    api_settings = ApiSettings()
    # The engine projects into the schema the API reads (REFLUX_API_READ_SCHEMA).
    schema = api_settings.read_schema
    nodes = served_nodes("*", modules)  # every built-in, plus the modules' nodes
    # A local admin key (ADR 0046): every /v1 route wants one; the reflux CLI reads this file.
    key_file, created = ensure_local_admin_key(settings, api_settings, default_key_file(settings))
    print(
        f"reflux dev: admin API key {'created in' if created else 'reused from'} {key_file} "
        "(mode 0600; the reflux CLI sends it, or set REFLUX_API_KEY)",
        flush=True,
    )
    # The critic (traces -> diagnoses), the historian (the API's /v1/diagnoses reads what it
    # stores), the optimizer (it turns diagnoses into proposals) and the canary judge (it keeps
    # or rolls back applied proposals); docs/learning.md.
    from streams.metrics import serve_if_asked

    # REFLUX_METRICS_PORT: every component's /metrics on one port (one registry per process).
    metrics_port = serve_if_asked(None, settings)
    if metrics_port is not None:
        print(f"reflux dev: Prometheus /metrics on port {metrics_port}", flush=True)
    apart = processes > 0
    with component_processes(
        settings, nodes, schema, count=processes, modules=modules, log_dir=log_dir
    ) as children:
        if children is not None:
            # The worker processes register nothing (several would race): this process does.
            from node_workers.registration import register_nodes

            register_nodes(settings, nodes)
        engine = DevEngine(
            settings,
            nodes=nodes,
            schema=schema,
            scheduler=not apart,
            workers=not apart,
            projector=not apart,
            trigger_router=not apart,
            register_nodes=not apart,
            critic=True,
            historian=True,
            optimizer=True,
            canary=True,
            schedules=True,
        ).start()
        log.info("engine running: %s", ", ".join(c.name for c in engine.components))
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - a wildcard is
        # not an address a browser can open
        console = console_link(f"http://{shown}:{port}", sign_in=sys.stdout.isatty())
        print(f"reflux dev: web console on {console}", flush=True)
        try:
            # uvicorn owns the main thread and its signals; the engine threads stop afterwards.
            uvicorn.run(create_app(settings, api_settings), host=host, port=port, log_level="info")
        finally:
            engine.stop()
    return 0
