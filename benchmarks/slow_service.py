"""A local HTTP service with a fixed latency, counting the requests it holds at once.

``python -m benchmarks.slow_service --latency-ms 200`` listens on 127.0.0.1 (an ephemeral port,
printed as the first line of stdout) until its stdin closes. Every request waits the latency and
answers ``200 {"ok": true}`` (HTTP/1.1 keep-alive), except ``GET /stats``: ``{"requests",
"in_flight", "in_flight_max"}``. It runs in its own process, on asyncio, so it holds thousands of
requests without threads and takes no CPU or GIL from the worker being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass

__all__ = ["serve"]


@dataclass
class _Counts:
    requests: int = 0
    in_flight: int = 0
    in_flight_max: int = 0


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """The request target, after reading the head and any body; None when the client left."""
    line = await reader.readline()
    if not line.strip():
        return None
    parts = line.decode("latin-1").split()
    length = 0
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return parts[1] if len(parts) > 1 else "/"


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def serve(latency_s: float) -> None:
    counts = _Counts()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (target := await _read_request(reader)) is not None:
                if target.startswith("/stats"):
                    body = json.dumps(counts.__dict__).encode()
                else:
                    counts.requests += 1
                    counts.in_flight += 1
                    counts.in_flight_max = max(counts.in_flight_max, counts.in_flight)
                    try:
                        await asyncio.sleep(latency_s)  # the service's latency: what is measured
                    finally:
                        counts.in_flight -= 1
                    body = b'{"ok": true}'
                writer.write(_response(body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    # Runs until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_service")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    asyncio.run(serve(args.latency_ms / 1000))


if __name__ == "__main__":
    main()
