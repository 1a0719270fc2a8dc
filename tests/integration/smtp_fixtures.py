"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, an ephemeral port, a recording handler.

Use the ``smtp_server`` fixture (plain, no auth) or ``serve_smtp(...)`` for TLS and AUTH:

- ``serve_smtp(users={"u": "pw"})``: AUTH PLAIN/LOGIN against that table (allowed without TLS);
- ``serve_smtp(starttls=cert)``: offers STARTTLS with a self-signed certificate from the
  ``tls_cert`` fixture (made with the ``openssl`` CLI at test time); with ``users`` too, AUTH is
  only accepted after STARTTLS, as on a real submission server;
- ``serve_smtp(implicit_tls=cert)``: SMTPS, TLS from the first byte.

``server.messages`` holds what was delivered (envelope, parsed message, login, TLS or not).
``server.handler.data_reply = "451 ..."`` makes DATA answer that instead of delivering;
``server.handler.rcpt_replies["x@y"] = "550 ..."`` refuses one recipient.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = [
    "ReceivedMessage",
    "RecordingHandler",
    "SmtpTestServer",
    "TlsCert",
    "serve_smtp",
    "smtp_server",
    "tls_cert",
]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    tls: bool

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    messages: list[ReceivedMessage] = field(default_factory=list)
    data_reply: str | None = None
    """Answer DATA with this (e.g. ``"451 try later"``) instead of delivering."""
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    """Answer RCPT TO for these addresses with this reply instead of accepting them."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        login = session.auth_data.login.decode() if session.authenticated else None
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or envelope.content,
            login=login,
            # session.ssl is set by STARTTLS only; implicit TLS shows on the transport.
            tls=session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
        )
        with self.lock:
            self.messages.append(received)
        return "250 Message accepted for delivery"


class _EphemeralController(Controller):
    """aiosmtpd's controller wants a fixed port; bind port 0 and learn the real one before
    the controller's own readiness probe connects (no free-port race)."""

    def _trigger_server(self) -> None:
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class TlsCert:
    cert_path: Path
    key_path: Path

    @property
    def pem(self) -> str:
        return self.cert_path.read_text()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


class SmtpTestServer:
    def __init__(self, controller: Controller, handler: RecordingHandler) -> None:
        self._controller = controller
        self.handler = handler
        self.host = "127.0.0.1"
        self.port: int = controller.port

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self.handler.lock:
            return list(self.handler.messages)


@contextmanager
def serve_smtp(
    *,
    users: dict[str, str] | None = None,
    starttls: TlsCert | None = None,
    implicit_tls: TlsCert | None = None,
) -> Iterator[SmtpTestServer]:
    handler = RecordingHandler()
    kwargs: dict[str, Any] = {}
    if users is not None:

        def authenticate(
            server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
        ) -> AuthResult:
            ok = (
                isinstance(auth_data, LoginPassword)
                and users.get(auth_data.login.decode()) == auth_data.password.decode()
            )
            # handled=False: aiosmtpd answers a failure with 535 itself.
            return AuthResult(success=ok, handled=ok, auth_data=auth_data if ok else None)

        kwargs["authenticator"] = authenticate
        # A real submission server refuses AUTH before STARTTLS; keep that when TLS is on.
        kwargs["auth_require_tls"] = starttls is not None
    if starttls is not None:
        kwargs["tls_context"] = starttls.server_context()
    controller = _EphemeralController(
        handler,
        hostname="127.0.0.1",
        port=0,
        ssl_context=implicit_tls.server_context() if implicit_tls else None,
        server_hostname="smtp.test",
        ready_timeout=5.0,
        **kwargs,
    )
    controller.start()
    try:
        yield SmtpTestServer(controller, handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A fresh plain SMTP server per test (no TLS, no AUTH)."""
    with serve_smtp() as server:
        yield server


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> TlsCert:
    """A self-signed certificate for 127.0.0.1, made now with the openssl CLI."""
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return TlsCert(cert, key)
