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
    # The critic (traces -> diagnoses), the historian (the API's /v1/diagnoses reads what it
    # stores), the optimizer (it turns diagnoses into proposals) and the canary judge (it keeps
    # or rolls back applied proposals); docs/learning.md.
    engine = DevEngine(
        settings, register_nodes=True, critic=True, historian=True, optimizer=True, canary=True
    ).start()
    log.info("engine running: %s", ", ".join(c.name for c in engine.components))
    try:
        # uvicorn owns the main thread and its signals; the engine threads stop afterwards.
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        engine.stop()
    return 0
