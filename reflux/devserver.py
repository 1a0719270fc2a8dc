"""``reflux dev``: the engine (DevEngine) plus the HTTP API in one process."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from foundation.settings import get_settings
from reflux.dev import DevEngine

log = logging.getLogger(__name__)


def serve_dev(host: str = "127.0.0.1", port: int = 8080, modules: Sequence[str] = ()) -> int:
    """``modules``: import their ``@node`` functions and serve them beside the built-ins
    (``reflux dev --module mypkg.nodes``; ADR 0059)."""
    import uvicorn

    from api.app import create_app
    from api.auth.bootstrap import ensure_local_admin_key
    from api.config import ApiSettings
    from node_workers.cli import served_nodes
    from reflux.credentials import default_key_file

    settings = get_settings()
    nodes = served_nodes("*", modules)  # every built-in, plus the modules' nodes
    # A local admin key (ADR 0046): every /v1 route wants one; the reflux CLI reads this file.
    key_file, created = ensure_local_admin_key(settings, ApiSettings(), default_key_file(settings))
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
    engine = DevEngine(
        settings,
        nodes=nodes,
        register_nodes=True,
        critic=True,
        historian=True,
        optimizer=True,
        canary=True,
        schedules=True,
    ).start()
    log.info("engine running: %s", ", ".join(c.name for c in engine.components))
    try:
        # uvicorn owns the main thread and its signals; the engine threads stop afterwards.
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        engine.stop()
    return 0
