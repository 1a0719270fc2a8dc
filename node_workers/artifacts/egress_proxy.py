"""The artifact sandbox's only way out: an allow-listing HTTP proxy on a unix socket.

The sandbox has no network of its own (``network: off``). Per attempt the worker serves this
proxy on ``<job folder>/egress.sock``, bound into the sandbox at ``/run/reflux/egress.sock``;
``reflux_node.Context.http`` sends plain HTTP/1.1 with an absolute-form request line
(``GET https://host/path HTTP/1.1``). For each request the proxy

1. checks the host against the node's declared egress (``manifest.egress``, allow-entry
   syntax), then resolves it and checks each address against the platform's egress policy (the
   one ``http.request`` enforces: loopback, private, metadata and platform endpoints denied
   unless the operator's lists open them; :mod:`node_workers.egress.policy`), and refuses a
   request carrying a secret to a host the secret's grant does not list;
2. connects to the checked address itself (pinned: no second resolution, so DNS rebinding
   cannot slip through), with TLS from the proxy for ``https`` (certificate verified against the
   host name), sends the request, and answers with the destination's response (redirects are
   not followed: each hop is a new request, checked again).

A refusal is a ``403`` carrying ``X-Reflux-Egress-Denied`` and the reason, which the guest
raises as ``EgressDenied``; an unreachable destination a ``502``/``504`` with
``X-Reflux-Egress-Error`` naming the error class. Every reason names its rule, e.g. ``host
evil.example is not in the node's declared egress [api.example.com:443]``.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import ipaddress
import logging
import os
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from node_workers.egress.policy import AllowEntry, EgressPolicy, IPAddress, parse_allow_entries
from node_workers.secrets.destinations import SecretDestinations

__all__ = [
    "DENIED_HEADER",
    "ERROR_HEADER",
    "EgressDecision",
    "EgressProxy",
    "decide",
    "declared_refusal",
]

log = logging.getLogger(__name__)

DENIED_HEADER: Final = "X-Reflux-Egress-Denied"
ERROR_HEADER: Final = "X-Reflux-Egress-Error"
TIMEOUT_HEADER: Final = "X-Reflux-Timeout"
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        TIMEOUT_HEADER.lower(),
    }
)


@dataclass(frozen=True, slots=True)
class EgressDecision:
    address: IPAddress | None
    """The address to connect to (allowed by both lists), or None when refused."""
    reason: str = ""


def declared_refusal(
    declared: Sequence[AllowEntry], host: str, port: int, addresses: Sequence[IPAddress]
) -> str | None:
    """Why ``host:port`` is outside the node's declared egress, or None (pure)."""
    if any(
        entry.matches_port(port)
        and (entry.matches_host(host) or any(entry.matches_address(a) for a in addresses))
        for entry in declared
    ):
        return None
    if not declared:
        return f"host {host} is not reachable: the node declares no egress (manifest.egress)"
    listed = ", ".join(entry.text for entry in declared)
    where = host if port in _DEFAULT_PORTS.values() else f"{host}:{port}"
    return f"host {where} is not in the node's declared egress [{listed}]"


def decide(
    declared: Sequence[AllowEntry],
    policy: EgressPolicy,
    host: str,
    port: int,
    addresses: Sequence[IPAddress],
    *,
    node: str,
) -> EgressDecision:
    """The address to use for ``host:port``, allowed by the node's declaration and the
    platform's policy (pure; ``addresses`` as resolved)."""
    refusal = declared_refusal(declared, host, port, addresses)
    if refusal is not None:
        return EgressDecision(None, f"{node}: {refusal}")
    if not addresses:
        return EgressDecision(None, f"{node}: {host} resolved to no address")
    decisions = [policy.check(host, port, address) for address in addresses]
    for decision in decisions:
        if decision.allowed and any(e.matches(host, port, decision.address) for e in declared):
            return EgressDecision(decision.address)
    denied = next((d for d in decisions if not d.allowed), decisions[0])
    return EgressDecision(None, f"{node}: platform egress policy: {denied.explain()}")


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTP(S) to ``address`` (already checked), speaking to ``host`` (Host header, SNI and
    certificate check)."""

    def __init__(self, host: str, port: int, address: IPAddress, *, tls: bool, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address
        self._tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self.port), self.timeout)
        if self._tls:
            assert self._context is not None  # type: ignore[attr-defined]
            sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
        self.sock = sock


@dataclass
class EgressProxy:
    """One attempt's proxy settings; :meth:`serve` runs it on a socket in a job folder."""

    node: str
    declared: tuple[AllowEntry, ...]
    policy: EgressPolicy
    secrets: SecretDestinations = field(default_factory=SecretDestinations)
    timeout_s: float = 30.0
    requests: int = 0
    denied: list[str] = field(default_factory=list)

    @classmethod
    def for_manifest(
        cls,
        node: str,
        egress: Sequence[str],
        policy: EgressPolicy,
        *,
        secrets: SecretDestinations | None = None,
        timeout_s: float = 30.0,
    ) -> EgressProxy:
        return cls(
            node, parse_allow_entries(egress), policy, secrets or SecretDestinations(), timeout_s
        )

    @contextlib.contextmanager
    def serve(self, folder: Path) -> Iterator[Path]:
        """Serve on ``folder/egress.sock`` (connectable by the sandbox's uid) until the block
        ends."""
        path = folder / "egress.sock"
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _Server(str(path), Handler)
        # The sandbox runs as another uid; the folder (0711) is not listable.
        os.chmod(path, 0o666)  # noqa: S103
        thread = threading.Thread(target=server.serve_forever, name="egress-proxy", daemon=True)
        thread.start()
        try:
            yield path
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: EgressProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # stdlib's signature
        log.debug("egress proxy: " + format, *args)

    def address_string(self) -> str:  # a unix socket has no client address
        return "sandbox"

    def _answer(self, status: int, header: str, value: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header(header, value.replace("\r", " ").replace("\n", " ")[:500])
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _deny(self, reason: str) -> None:
        self.owner.denied.append(reason)
        log.info("egress denied: %s", reason)
        self._answer(403, DENIED_HEADER, reason, reason)

    def _fail(self, status: int, error_class: str, message: str) -> None:
        self._answer(status, ERROR_HEADER, error_class, message)

    def _checked(self) -> _Checked | None:
        """The request, once every check passed; else the refusal was answered."""
        owner = self.owner
        owner.requests += 1
        url = self.path
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            self._fail(400, "InvalidUrl", f"Expected an absolute http(s) URL, but got {url!r}")
            return None
        host = parts.hostname
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            self._fail(400, "InvalidUrl", f"Expected a valid port in {url!r}")
            return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self._fail(400, "RequestTooLarge", f"Expected at most {MAX_REQUEST_BYTES} bytes")
            return None
        body = self.rfile.read(length) if length else None
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        # Refused by name before any DNS query, unless a CIDR entry needs the addresses.
        refusal = declared_refusal(owner.declared, host, port, _literal(host))
        if refusal is not None and all(e.host is not None for e in owner.declared):
            self._deny(f"{owner.node}: {refusal}")
            return None
        try:
            addresses = _resolve(host, port)
        except OSError as exc:
            if refusal is not None:  # an undeclared name: its (missing) address changes nothing
                self._deny(f"{owner.node}: {refusal}")
            else:
                self._fail(502, "NetworkError", f"{owner.node}: could not resolve {host}: {exc}")
            return None
        decision = decide(owner.declared, owner.policy, host, port, addresses, node=owner.node)
        if decision.address is None:
            self._deny(decision.reason)
            return None
        if owner.secrets:
            try:
                owner.secrets.check(
                    host,
                    port,
                    node=owner.node,
                    target=f"{parts.scheme}://{host}:{port}",
                    parts=[url, *(v for _, v in headers), body or b""],
                )
            except Exception as exc:  # SecretHostDenied: the secret's grant lists other hosts
                self._deny(f"{owner.node}: {exc}")
                return None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return _Checked(url, parts.scheme, host, port, decision.address, target, headers, body)

    def _handle(self) -> None:
        request = self._checked()
        if request is None:
            return
        timeout = _timeout(self.headers.get(TIMEOUT_HEADER), self.owner.timeout_s)
        connection = _PinnedConnection(
            request.host,
            request.port,
            request.address,
            tls=request.scheme == "https",
            timeout=timeout,
        )
        url = request.url
        try:
            connection.putrequest(self.command, request.target, skip_accept_encoding=True)
            for name, value in request.headers:
                connection.putheader(name, value)
            if request.body is not None or self.command in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(request.body or b"")))
            connection.endheaders(request.body)
            answer = connection.getresponse()
            payload = answer.read(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            self._fail(504, "HttpTimeout", f"Timed out after {timeout:g}s: {self.command} {url}")
            return
        except (OSError, http.client.HTTPException) as exc:
            self._fail(502, "NetworkError", f"Network error on {self.command} {url}: {exc!r}")
            return
        finally:
            connection.close()
        if len(payload) > MAX_RESPONSE_BYTES:
            self._fail(
                502, "ResponseTooLarge", f"Expected at most {MAX_RESPONSE_BYTES} bytes from {url}"
            )
            return
        self.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    # BaseHTTPRequestHandler dispatches on these names.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815


@dataclass(frozen=True, slots=True)
class _Checked:
    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None


def _literal(host: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        return []


def _timeout(header: str | None, cap: float) -> float:
    try:
        asked = float(header) if header else cap
    except ValueError:
        asked = cap
    return max(0.1, min(asked, cap))
