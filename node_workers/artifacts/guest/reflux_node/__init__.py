"""``reflux_node``: what a node artifact's code sees inside the sandbox (ADR 0070).

Standard library only: this package runs under the sandbox's own interpreter (the host's /usr
python under bubblewrap, the image's under Docker), where nothing else is installed. The worker
copies it into every job and puts it on ``PYTHONPATH``.

- :class:`Context` (``ctx``): ``http`` through the worker's allow-listing egress proxy (a unix
  socket bind-mounted at :data:`EGRESS_SOCKET`; the sandbox has no network of its own),
  ``secret`` (only the declared, granted secrets the worker wrote for this attempt), ``log``.
- :class:`NodeFailure`: fail the attempt with an error class of the code's choosing.
- :class:`EgressDenied`: the proxy refused the host; the attempt fails with ``EgressDenied``.
"""

from __future__ import annotations

import http.client
import json as _json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = [
    "DENIED_HEADER",
    "EGRESS_SOCKET",
    "ERROR_HEADER",
    "Context",
    "EgressDenied",
    "NodeFailure",
    "Response",
]

EGRESS_SOCKET = "/run/reflux/egress.sock"
DENIED_HEADER = "X-Reflux-Egress-Denied"
"""Set by the proxy on a 403 it answered itself: the refusal's reason."""
ERROR_HEADER = "X-Reflux-Egress-Error"
TIMEOUT_HEADER = "X-Reflux-Timeout"
"""Set by the proxy on a 502/504 it answered itself: the destination could not be reached."""


class NodeFailure(Exception):  # noqa: N818  # the contract's name (bundle.py)
    """Fail the attempt with ``error_class`` (retryable or not)."""

    def __init__(
        self, message: str, error_class: str = "NodeFailure", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_class = error_class
        self.retryable = retryable


class EgressDenied(NodeFailure):
    """The egress proxy refused the destination (or the node declared no egress)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, error_class="EgressDenied", retryable=False)
        self.reason = reason


class Response:
    """An HTTP answer: ``status``, ``headers`` (lower-case names), ``body`` bytes."""

    def __init__(
        self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return _json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def build_url(url: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return url
    query = urlencode([(k, v) for k, v in params.items() if v is not None], doseq=True)
    if not query:
        return url
    return url + ("&" if urlsplit(url).query else "?") + query


def encode_body(
    headers: dict[str, str], json: Any, data: bytes | str | Mapping[str, Any] | None
) -> bytes | None:
    """The request body; sets Content-Type unless the caller did."""
    names = {k.lower() for k in headers}
    if json is not None:
        if "content-type" not in names:
            headers["Content-Type"] = "application/json"
        return _json.dumps(json).encode()
    if data is None:
        return None
    if isinstance(data, Mapping):
        if "content-type" not in names:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return urlencode(list(data.items()), doseq=True).encode()
    return data.encode() if isinstance(data, str) else bytes(data)


class Context:
    """The ``ctx`` of ``run(input, ctx)``."""

    def __init__(
        self,
        secrets: Mapping[str, str] | None = None,
        *,
        egress_socket: str | None = EGRESS_SOCKET,
        log_stream: Any = None,
    ) -> None:
        self._secrets = dict(secrets or {})
        self._socket = egress_socket
        self._log = log_stream if log_stream is not None else sys.stderr
        self.requests: list[dict[str, Any]] = []
        """Every request made, in order (method, url, headers, body)."""

    def secret(self, name: str) -> str:
        if name not in self._secrets:
            raise NodeFailure(
                f"Expected secret {name!r} to be declared in manifest.secrets and granted to "
                "this node and the run's tenant, but it is not",
                error_class="SecretNotAvailable",
            )
        return self._secrets[name]

    def log(self, *values: Any) -> None:
        print(*values, file=self._log, flush=True)

    def http(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: bytes | str | Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        sent = dict(headers or {})
        request = {
            "method": method.upper(),
            "url": build_url(url, params),
            "headers": sent,
            "body": encode_body(sent, json, data),
            "params": dict(params or {}),
            "json": json,
        }
        self.requests.append(request)
        return self._send(request, timeout)

    def _send(self, request: dict[str, Any], timeout: float) -> Response:
        """Sends a recorded request through the egress proxy (``testing`` answers it itself)."""
        method, url = request["method"], request["url"]
        headers, body = request["headers"], request["body"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NodeFailure(
                f"Expected an absolute http(s) URL, but got {url!r}", error_class="InvalidUrl"
            )
        if self._socket is None or not os.path.exists(self._socket):
            raise EgressDenied(
                f"host {parts.hostname} is not reachable: this node declares no egress "
                "(manifest.egress is empty), so its sandbox has no network"
            )
        connection = _UnixHTTPConnection(self._socket, timeout)
        try:
            # Absolute-form request line (GET https://host/path HTTP/1.1), as to any forward
            # proxy; the proxy makes the TLS connection itself for https.
            sent = {**headers, TIMEOUT_HEADER: f"{timeout:g}"}  # the proxy's own limit
            connection.request(method, url, body=body, headers=sent)
            answer = connection.getresponse()
            payload = answer.read()
            received = {k: v for k, v in answer.getheaders()}
        except TimeoutError:
            raise NodeFailure(
                f"Timed out after {timeout:g}s: {method} {url}",
                error_class="HttpTimeout",
                retryable=True,
            ) from None
        except OSError as exc:
            raise NodeFailure(
                f"The egress proxy did not answer {method} {url}: {exc}",
                error_class="NetworkError",
                retryable=True,
            ) from None
        finally:
            connection.close()
        lowered = {k.lower(): v for k, v in received.items()}
        if answer.status == 403 and DENIED_HEADER.lower() in lowered:
            raise EgressDenied(payload.decode("utf-8", "replace") or lowered[DENIED_HEADER.lower()])
        if ERROR_HEADER.lower() in lowered:
            retryable = answer.status != 400
            raise NodeFailure(
                payload.decode("utf-8", "replace") or lowered[ERROR_HEADER.lower()],
                error_class=lowered[ERROR_HEADER.lower()],
                retryable=retryable,
            )
        return Response(answer.status, received, payload)
