"""A real local HTTP server for tests: loopback only, ephemeral port, bounded work per request.

Use the ``http_server`` fixture (``from tests.integration.http_fixtures import http_server``) or
the ``serve()`` context manager outside pytest. Endpoints:

- ``/echo`` (any method): JSON ``{method, path, query, headers, json, body}`` of the request;
- ``/flaky?key=K&fail=N``: ``503`` for the first ``N`` calls with that key, then ``200``;
- ``/status/{code}``: that status with a small JSON body (``429``/``503`` add ``Retry-After: 1``);
- ``/slow?ms=N``: waits ``N`` ms (at most 10 s), then ``200``; ``in_flight_max`` is the most
  ``/slow`` requests the server held at once (each request has its own thread);
- ``/gate?name=G``: held until the test calls :meth:`HttpTestServer.open_gate` with ``G`` (at
  most 60 s, then ``504``), then ``200``: a step that stays running exactly as long as a test
  needs it to, whatever the machine's load;
- ``/big?bytes=N``: ``N`` bytes of text (at most 16 MiB); ``&json=1`` wraps them as
  ``{"data": "..."}`` with a JSON content type;
- ``/redirect?to=PATH&status=N``: ``N`` (default ``302``) to ``PATH``.
- ``/prices/{sku}?currency=C``: a typed answer for the OpenAPI forge's tests,
  ``{"sku", "price", "currency"}`` (``price``: ``len(sku) * 1.5``); a ``sku`` starting with
  ``bad-`` answers ``price`` as a string, which the service's document says it never does.
- ``/odds?run=R&step=S&seed=N&fail=F&hang=H&hang_ms=MS``: a sick dependency with fixed odds:
  the n-th call for ``(run, step)`` answers ``500`` with probability ``F``, hangs ``MS`` ms
  then answers ``200`` with probability ``H``, else ``200`` at once; the draw is
  :func:`odds_outcome` (seeded, so a test knows each call's fate in advance).

Every request is recorded (method, path, query, lower-cased headers, body) so tests can assert
what a node sent, e.g. its ``Idempotency-Key``.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["HttpTestServer", "RecordedRequest", "http_server", "odds_outcome", "serve"]

MAX_SLOW_MS = 10_000
MAX_BIG_BYTES = 16 * 1024 * 1024
MAX_REQUEST_BODY = 8 * 1024 * 1024
MAX_GATE_S = 60.0


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


def odds_outcome(seed: str, run: str, step: str, call: int, fail: float, hang: float) -> str:
    """``"fail"``, ``"hang"`` or ``"ok"``: the fate of the ``call``-th call (1-based) of
    ``(run, step)`` at ``/odds`` (string seeds hash the same in every process)."""
    draw = random.Random(f"{seed}:{run}:{step}:{call}").random()  # test odds
    if draw < fail:
        return "fail"
    if draw < fail + hang:
        return "hang"
    return "ok"


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    flaky_calls: dict[str, int] = field(default_factory=dict)
    odds_calls: dict[tuple[str, str], int] = field(default_factory=dict)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    slow_in_flight: int = 0
    slow_in_flight_max: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        return

    def _send(
        self,
        status: int,
        body: bytes | str | Any,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        length = min(int(self.headers.get("Content-Length") or 0), MAX_REQUEST_BODY)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        with state.lock:
            state.requests.append(RecordedRequest(self.command, parts.path, query, headers, body))

        def arg(name: str, default: str = "") -> str:
            return query.get(name, [default])[0]

        path = parts.path
        if path == "/echo":
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            self._send(
                200,
                {
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "headers": headers,
                    "json": parsed,
                    "body": body.decode(errors="replace"),
                },
            )
        elif path == "/flaky":
            key, fail = arg("key", "default"), int(arg("fail", "1"))
            with state.lock:
                calls = state.flaky_calls.get(key, 0) + 1
                state.flaky_calls[key] = calls
            if calls <= fail:
                self._send(503, {"error": "flaky", "call": calls}, headers={"Retry-After": "1"})
            else:
                self._send(200, {"key": key, "calls": calls})
        elif path == "/odds":
            run, step = arg("run"), arg("step")
            with state.lock:
                call = state.odds_calls.get((run, step), 0) + 1
                state.odds_calls[(run, step)] = call
            fate = odds_outcome(
                arg("seed"), run, step, call, float(arg("fail", "0")), float(arg("hang", "0"))
            )
            if fate == "fail":
                self._send(500, {"error": "odds", "call": call})
            else:
                if fate == "hang":
                    # The sick dependency's hang is the behaviour under test, not a wait.
                    time.sleep(min(int(arg("hang_ms", "2500")), MAX_SLOW_MS) / 1000)
                self._send(200, {"run": run, "step": step, "call": call, "fate": fate})
        elif path.startswith("/status/"):
            code = int(path.removeprefix("/status/"))
            extra = {"Retry-After": "1"} if code in {429, 503} else {}
            self._send(code, {"status": code, "detail": f"status {code} on request"}, headers=extra)
        elif path == "/slow":
            ms = min(int(arg("ms", "100")), MAX_SLOW_MS)
            with state.lock:
                state.slow_in_flight += 1
                state.slow_in_flight_max = max(state.slow_in_flight_max, state.slow_in_flight)
            try:
                time.sleep(ms / 1000)  # the slow server is the thing under test, not a wait
            finally:
                with state.lock:
                    state.slow_in_flight -= 1
            self._send(200, {"slept_ms": ms})
        elif path == "/gate":
            with state.lock:
                gate = state.gates.setdefault(arg("name"), threading.Event())
            if gate.wait(MAX_GATE_S):
                self._send(200, {"gate": arg("name")})
            else:
                self._send(504, {"error": f"gate {arg('name')!r} was never opened"})
        elif path == "/big":
            size = min(int(arg("bytes", "1024")), MAX_BIG_BYTES)
            if arg("json") == "1":
                self._send(200, {"data": "x" * size})
            else:
                self._send(200, b"x" * size, content_type="text/plain; charset=utf-8")
        elif path.startswith("/prices/"):
            sku = unquote(path.removeprefix("/prices/"))
            price: Any = "twelve" if sku.startswith("bad-") else len(sku) * 1.5
            self._send(200, {"sku": sku, "price": price, "currency": arg("currency", "EUR")})
        elif path == "/redirect":
            status = int(arg("status", "302"))
            location = {"Location": arg("to", "/echo")}
            self._send(status, "", content_type="text/plain", headers=location)
        else:
            self._send(404, {"error": f"no route {path}"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a /slow request must not hold up shutdown
    # socketserver's default backlog (5) drops connections when hundreds arrive at once (a
    # worker's I/O attempts); a dropped SYN is retried only after a second.
    request_queue_size = 1024
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (timeouts, cancelled attempts) close the socket mid-response;
        # that is what the tests provoke, not a server failure worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class HttpTestServer:
    """A running server; ``url`` is its base URL (no trailing slash)."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    @property
    def log(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far."""
        with self._server.state.lock:
            return list(self._server.state.requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.log if r.path == path]

    @property
    def in_flight_max(self) -> int:
        """The most ``/slow`` requests held at once since the start (or the last reset)."""
        with self._server.state.lock:
            return self._server.state.slow_in_flight_max

    def open_gate(self, name: str) -> None:
        """Answer every request held (and every later one) at ``/gate?name={name}``."""
        with self._server.state.lock:
            gate = self._server.state.gates.setdefault(name, threading.Event())
        gate.set()

    def reset(self) -> None:
        with self._server.state.lock:
            self._server.state.requests.clear()
            self._server.state.flaky_calls.clear()
            self._server.state.slow_in_flight_max = self._server.state.slow_in_flight


@contextmanager
def serve() -> Iterator[HttpTestServer]:
    """Run the server on ``127.0.0.1`` and an ephemeral port for the duration of the block."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = _State()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield HttpTestServer(server)
    finally:
        for gate in list(server.state.gates.values()):
            gate.set()  # nothing held past the block
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_server() -> Iterator[HttpTestServer]:
    """A fresh local HTTP server per test: ``http_server.url``, ``http_server.log``."""
    with serve() as server:
        yield server
