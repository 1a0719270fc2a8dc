"""``reflux dev``: the engine (DevEngine) plus the HTTP API in one process."""

from __future__ import annotations

import logging

from foundation.settings import get_settings
from reflux.dev import DevEngine

log = logging.getLogger(__name__)


def serve_dev(host: str = "127.0.0.1", port: int = 8080) -> int:
    import uvicorn

    from api.app import create_app

    settings = get_settings()
    # The historian too: the API's /v1/diagnoses reads what it stores.
    engine = DevEngine(settings, register_nodes=True, historian=True, critic=True).start()
    log.info("engine running: %s", ", ".join(c.name for c in engine.components))
    try:
        # uvicorn owns the main thread and its signals; the engine threads stop afterwards.
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        engine.stop()
    return 0
