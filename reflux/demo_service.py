"""The demo's stand-in for a supplier's HTTP API, on loopback (started and stopped by the demo)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

OFFERS = {
    "lyon": [
        {"supplier": "Rhone Parts", "price": 140.0, "days": 2},
        {"supplier": "Saone Supply", "price": 120.0, "days": 5},
        {"supplier": "Fourviere Tools", "price": 155.0, "days": 1},
    ],
    "nantes": [
        {"supplier": "Loire Depot", "price": 80.0, "days": 3},
        {"supplier": "Erdre Co", "price": 95.0, "days": 2},
    ],
}


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet request handler that answers JSON (the demos' local services)."""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Handler(JsonHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != "/offers":
            self._send(404, {"error": f"no route {url.path}"})
            return
        city = parse_qs(url.query).get("city", [""])[0].lower()
        self._send(200, {"city": city, "offers": OFFERS.get(city, [])})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if urlparse(self.path).path != "/approvals":
            self._send(404, {"error": "no route"})
            return
        key = self.headers.get("Idempotency-Key", "")
        self._send(200, {"approved": True, "supplier": body.get("supplier"), "ticket": key[:12]})


@contextmanager
def offers_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
