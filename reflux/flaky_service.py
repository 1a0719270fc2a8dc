"""A flaky HTTP dependency on loopback, for ``reflux demo improve`` and the loop's end-to-end test.

``GET /quote`` answers ``200 {"price": ..., "n": <request number>}`` after a short lognormal
latency, or ``503`` with probability :attr:`FlakyService.error_rate`, which the caller changes at
a known point (:meth:`FlakyService.degrade`). Outcomes are drawn from one seeded generator in
arrival order, so a seed gives one sequence of outcomes for one sequence of requests.
(``benchmarks/loop/stubs.py`` is the benchmark's richer stub in its own process; this one lives
in the ``reflux`` package so the installed CLI can run the demo without the benchmarks tree.)
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reflux.demo_service import JsonHandler

__all__ = ["FlakyService", "ServiceStats", "flaky_service"]


@dataclass(frozen=True)
class ServiceStats:
    requests: int
    errors: int
    error_rate: float


class FlakyService:
    """The service's state: its error rate, latency and counters (thread-safe)."""

    def __init__(self, error_rate: float, seed: int, median_ms: float = 15.0) -> None:
        self.error_rate = error_rate
        self.median_ms = median_ms
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.url = ""

    def degrade(self, error_rate: float) -> None:
        with self._lock:
            self.error_rate = error_rate

    def draw(self) -> tuple[int, float, bool]:
        """``(request number, latency in s, fails)`` for the next request."""
        with self._lock:
            self.requests += 1
            fails = self._rng.random() < self.error_rate
            self.errors += fails
            latency = self.median_ms * math.exp(0.3 * self._rng.gauss(0.0, 1.0)) / 1000.0
            return self.requests, latency, fails

    def stats(self) -> ServiceStats:
        with self._lock:
            return ServiceStats(self.requests, self.errors, self.error_rate)


def _handler(service: FlakyService) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the node's client pools its connections

        def do_GET(self) -> None:  # noqa: N802 (http.server calls it by this name)
            if not self.path.startswith("/quote"):
                self._send(404, {"error": f"no route {self.path}"})
                return
            n, latency, fails = service.draw()
            time.sleep(latency)  # the dependency's own latency, not a synchronisation
            if fails:
                self._send(503, {"error": "supplier overloaded, try again", "n": n})
            else:
                self._send(200, {"price": round(90 + 0.37 * n, 2), "n": n})

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (a timed-out or cancelled attempt, the engine stopping) is
        # not the service's error: no traceback on the demo's output.
        return


@contextmanager
def flaky_service(error_rate: float = 0.02, seed: int = 7) -> Iterator[FlakyService]:
    """Serves a :class:`FlakyService` on 127.0.0.1 (ephemeral port, ``service.url``)."""
    service = FlakyService(error_rate, seed)
    # An A/B replay sends its ~50 recorded runs' calls at once: the default listen backlog (5)
    # drops SYNs past it, and each dropped one costs a 1 s retransmit -- a +1 s "latency shift"
    # the replay then blames on the candidate.
    server = _Server(("127.0.0.1", 0), _handler(service))
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="flaky-service"
    )
    thread.daemon = True
    thread.start()
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
