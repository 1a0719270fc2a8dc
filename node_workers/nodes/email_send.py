"""``email.send@1.0.0``: send one email over SMTP (stdlib ``smtplib`` in a worker thread).

Workload: I/O. ``smtplib`` blocks, so each send runs in the node's own thread pool
(:class:`~node_workers.pools.BlockingPool`), sized by the runtime to the number of attempts of
this node it runs at once: a started attempt never queues for a thread behind other sends, and
never takes asyncio's small default pool from the worker's lanes.

Delivery is at-least-once, so the ``Message-ID`` is derived from the invocation's idempotency
key (:func:`message_id_for`): a redelivered attempt sends the *same* message, and a server or
inbox that deduplicates by Message-ID drops the copy. SMTP itself has no idempotency, so a
crash between the server's ``250`` and the worker's commit can still deliver twice.

Classification (what the retry policy and the critic group by):

- connection refused/reset, DNS failure, socket timeouts, the server hanging up ->
  retryable ``SmtpUnavailable``;
- a ``4xx`` reply (greeting, ``MAIL``, ``RCPT``, ``DATA``, ``AUTH``) -> retryable
  ``SmtpTransient``; a ``5xx`` reply -> non-retryable ``SmtpRejected``;
- authentication refused (``5xx`` to ``AUTH``, or no usable AUTH mechanism) -> non-retryable
  ``SmtpAuth``;
- certificate verification failure, STARTTLS not offered, TLS against a plain port ->
  non-retryable ``SmtpTls``.

A recipient refused while others are accepted does not fail the step: the message went out;
``refused`` names who did not get it.

Header injection is refused at validation: no CR/LF in addresses, subject or headers, and the
structural headers (From, To, Message-ID, ...) cannot be overridden through ``headers``.

Egress policy: ``host`` is the workflow's, so the connection goes through
:func:`node_workers.egress.net.connect_checked` (resolved, checked, connected to the checked
address; TLS still verifies the certificate against ``host``). A denied address fails the step
with non-retryable ``EgressDenied`` naming the host, the address and the rule.
"""

from __future__ import annotations

import hashlib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterable
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, getaddresses
from typing import Annotated, Final, Self

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from foundation.settings import Settings
from node_workers.egress.net import OperatorPolicy, connect_checked
from node_workers.egress.policy import EgressPolicy
from node_workers.node import (
    Node,
    NodeContext,
    NodeError,
    NodeModel,
    NonRetryableNodeError,
    RetryableNodeError,
    Workload,
)
from node_workers.pools import BlockingPool

__all__ = [
    "RESERVED_HEADERS",
    "EmailSendInput",
    "EmailSendNode",
    "EmailSendOutput",
    "build_message",
    "classify_smtp_error",
    "envelope_address",
    "message_id_for",
]

INVOCATION_HEADER: Final = "X-Reflux-Invocation-Id"
RESERVED_HEADERS: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        INVOCATION_HEADER.lower(),
    }
)
# RFC 5322 field name: printable ASCII except ':' and space.
_HEADER_NAME: Final = re.compile(r"^[!-9;-~]+$")
_ADDR_SPEC: Final = re.compile(r"^[^@\s]+@[^@\s]+$")


def _no_newlines(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("Expected a single line, but the value contains a line break")
    return value


def envelope_address(value: str) -> str:
    """The bare ``local@domain`` of ``"Name <local@domain>"`` or ``"local@domain"``."""
    return getaddresses([value])[0][1]


def _address(value: str) -> str:
    _no_newlines(value)
    parsed = getaddresses([value])
    if len(parsed) != 1 or not _ADDR_SPEC.fullmatch(parsed[0][1]):
        raise ValueError(
            f"Expected one email address like 'a@example.com' or 'Name <a@example.com>', "
            f"but got {value!r}"
        )
    return value


Address = Annotated[str, AfterValidator(_address)]
Line = Annotated[str, AfterValidator(_no_newlines)]


class EmailSendInput(NodeModel):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Default: 465 with ``ssl``, 587 with ``starttls``, else 25."""
    from_addr: Address = Field(alias="from")
    to: list[Address] = Field(min_length=1)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    """Envelope recipients only: never written into a header."""
    subject: Line = ""
    text: str | None = None
    html: str | None = None
    starttls: bool = False
    """Upgrade a plain connection with STARTTLS (port 587)."""
    use_ssl: bool = Field(default=False, alias="ssl")
    """Implicit TLS from the first byte (SMTPS, port 465)."""
    verify_tls: bool = True
    ca_cert: str | None = None
    """PEM certificate(s) to trust instead of the system CAs (a private relay)."""
    username: str | None = None
    password: SecretStr | None = None
    """Later ``{{ secrets.NAME }}``; never logged or echoed."""
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Per network operation (connect, each reply), also capped by the invocation deadline."""
    headers: dict[str, Line] = Field(default_factory=dict)
    """Extra headers (e.g. ``Reply-To``, ``List-Unsubscribe``); structural ones are refused."""

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"Expected a header name of printable ASCII, but got {name!r}")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(
                    f"Expected no {name!r} header (it is set from the params or by the node); "
                    f"reserved: {sorted(RESERVED_HEADERS)}"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.text is None and self.html is None:
            raise ValueError("Expected text or html (or both), but got neither")
        if self.starttls and self.use_ssl:
            raise ValueError("Expected at most one of ssl, starttls, but got both")
        if (self.username is None) != (self.password is None):
            raise ValueError("Expected username and password together, but got only one")
        if self.ca_cert is not None and not (self.starttls or self.use_ssl):
            raise ValueError("Expected ssl or starttls with ca_cert, but neither is set")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.use_ssl else 587 if self.starttls else 25

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients: to, cc, bcc as bare addresses, duplicates dropped."""
        return list(dict.fromkeys(envelope_address(a) for a in [*self.to, *self.cc, *self.bcc]))


class EmailSendOutput(NodeModel):
    message_id: str
    accepted: list[str]
    refused: dict[str, str]
    """Recipients the server refused while accepting others: address -> ``"550 reason"``."""


def message_id_for(key: str) -> str:
    """``<{sha256(key)[:32]}@reflux>``: same idempotency key, same Message-ID."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@reflux>"


def build_message(
    params: EmailSendInput, *, message_id: str, invocation_id: str, date: str | None = None
) -> EmailMessage:
    """The MIME message: text, html, or ``multipart/alternative`` with both."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = params.from_addr
    msg["To"] = ", ".join(params.to)
    if params.cc:
        msg["Cc"] = ", ".join(params.cc)
    msg["Subject"] = params.subject
    msg["Date"] = date or formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    # Names the attempt, so a receiver (and our tests) can tell a retry from a redelivery.
    msg[INVOCATION_HEADER] = invocation_id
    for name, value in params.headers.items():
        msg[name] = value
    if params.text is not None:
        msg.set_content(params.text)
        if params.html is not None:
            msg.add_alternative(params.html, subtype="html")
    else:
        msg.set_content(params.html or "", subtype="html")
    return msg


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


def _by_code(code: int, what: str) -> NodeError:
    if 400 <= code < 500:
        return RetryableNodeError(what, error_class="SmtpTransient")
    if 500 <= code < 600:
        return NonRetryableNodeError(what, error_class="SmtpRejected")
    return RetryableNodeError(what, error_class="SmtpUnavailable")  # garbled or no reply


def classify_smtp_error(exc: BaseException, *, server: str) -> NodeError:
    """The node error for an exception from ``smtplib`` or the socket under it."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        what = f"Authentication refused by {server}: {_reply(exc.smtp_code, exc.smtp_error)}"
        if 400 <= exc.smtp_code < 500:
            return RetryableNodeError(what, error_class="SmtpTransient")
        return NonRetryableNodeError(what, error_class="SmtpAuth")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {rcpt: _reply(code, msg) for rcpt, (code, msg) in exc.recipients.items()}
        what = f"Every recipient refused by {server}: {replies}"
        permanent = all(500 <= code < 600 for code, _ in exc.recipients.values())
        return _by_code(550 if permanent else 450, what)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, f"{server} replied {_reply(exc.smtp_code, exc.smtp_error)}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        text = str(exc)
        error_class = (
            "SmtpTls" if "STARTTLS" in text else "SmtpAuth" if "AUTH" in text else "SmtpRejected"
        )
        return NonRetryableNodeError(f"{server}: {text}", error_class=error_class)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return RetryableNodeError(f"{server} disconnected: {exc}", error_class="SmtpUnavailable")
    # (SMTPException is an OSError: the rest of smtplib's errors must be sorted out first.)
    if isinstance(exc, smtplib.SMTPException):  # e.g. "No suitable authentication method"
        error_class = "SmtpAuth" if "authentication" in str(exc).lower() else "SmtpRejected"
        return NonRetryableNodeError(f"{server}: {exc}", error_class=error_class)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or exc
        return NonRetryableNodeError(
            f"TLS certificate of {server} not trusted: {reason}", error_class="SmtpTls"
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return RetryableNodeError(
            f"{server} closed the TLS connection: {exc}", error_class="SmtpUnavailable"
        )
    if isinstance(exc, ssl.SSLError):  # e.g. TLS against a plain port: a configuration error
        return NonRetryableNodeError(f"TLS failed with {server}: {exc}", error_class="SmtpTls")
    if isinstance(exc, TimeoutError):
        return RetryableNodeError(f"Timed out talking to {server}", error_class="SmtpUnavailable")
    if isinstance(exc, OSError):
        return RetryableNodeError(f"Cannot reach {server}: {exc!r}", error_class="SmtpUnavailable")
    return NonRetryableNodeError(f"{server}: {exc!r}", error_class="SmtpError")


def _tls_context(params: EmailSendInput) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=params.ca_cert)
    if not params.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _source(smtp: smtplib.SMTP) -> tuple[str, int] | None:
    source = smtp.source_address
    return (str(source[0]), int(source[1])) if isinstance(source, tuple) else None


class _CheckedSMTP(smtplib.SMTP):
    """SMTP whose connection is opened by :func:`connect_checked` (the egress policy)."""

    def __init__(self, policy: EgressPolicy, host: str, port: int, timeout: float) -> None:
        self.egress_policy = policy  # before super().__init__: it connects
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return connect_checked(
            self.egress_policy, host, port, timeout, _source(self), node="email.send"
        )


class _CheckedSMTPSSL(smtplib.SMTP_SSL):
    def __init__(
        self, policy: EgressPolicy, host: str, port: int, timeout: float, context: ssl.SSLContext
    ) -> None:
        self.egress_policy = policy
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = connect_checked(
            self.egress_policy, host, port, timeout, _source(self), node="email.send"
        )
        # The certificate is checked against the name the step gave, not the address.
        return self.context.wrap_socket(sock, server_hostname=host)


def _send(
    params: EmailSendInput,
    msg: EmailMessage,
    recipients: Iterable[str],
    timeout: float,
    policy: EgressPolicy,
) -> dict[str, tuple[int, bytes]]:
    """Blocking: connect, (STARTTLS), (AUTH), send; the server's refusals per recipient."""
    host, port = params.host, params.effective_port
    smtp: smtplib.SMTP
    if params.use_ssl:
        smtp = _CheckedSMTPSSL(policy, host, port, timeout, _tls_context(params))
    else:
        smtp = _CheckedSMTP(policy, host, port, timeout)
    with smtp:  # QUIT on the way out, also after a failure
        smtp.ehlo()
        if params.starttls:
            smtp.starttls(context=_tls_context(params))
            smtp.ehlo()
        if params.username is not None and params.password is not None:
            smtp.login(params.username, params.password.get_secret_value())
        return smtp.send_message(
            msg, from_addr=envelope_address(params.from_addr), to_addrs=list(recipients)
        )


class EmailSendNode(Node[EmailSendInput, EmailSendOutput]):
    name = "email.send"
    version = "1.0.0"
    Input = EmailSendInput
    Output = EmailSendOutput
    cacheable = False
    side_effects = True
    workload = Workload.IO
    description = "Send one email over SMTP; Message-ID derived from the idempotency key."

    def __init__(self) -> None:
        self.pool = BlockingPool("smtp")
        self._egress = OperatorPolicy()

    def bind(self, settings: Settings) -> None:
        self._egress.bind(settings)

    def policy(self) -> EgressPolicy:
        """The operator's policy; outside a worker (never bound), the environment's settings."""
        return self._egress.get()

    def set_concurrency(self, limit: int) -> None:
        self.pool.resize(limit)

    async def aclose(self) -> None:
        self.pool.close()

    async def execute(self, params: EmailSendInput, ctx: NodeContext) -> EmailSendOutput:
        timeout = params.timeout_s
        remaining = ctx.remaining_s()
        if remaining is not None:
            timeout = max(min(timeout, remaining), 0.001)
        message_id = message_id_for(ctx.idempotency_key)
        msg = build_message(params, message_id=message_id, invocation_id=ctx.invocation_id)
        recipients = params.recipients
        server = f"SMTP {params.host}:{params.effective_port}"
        # A secret in the params goes to the SMTP server, and through it to each recipient's
        # domain (its mail exchanger, port 25): both must be among the secret's hosts (ADR 0050).
        ctx.secrets.check(params.host, params.effective_port, node="email.send", target=server)
        for domain in sorted({rcpt.rpartition("@")[2].lower() for rcpt in recipients}):
            ctx.secrets.check(domain, 25, node="email.send", target=f"recipient domain {domain}")
        started = time.perf_counter()
        try:
            # No asyncio timeout around the thread: it could not stop the send, only stop us
            # waiting for it. The socket timeout bounds every step instead.
            policy = self._egress.for_call(workflow_id=ctx.workflow_id, tenant=ctx.tenant)
            refused_raw = await self.pool.run(_send, params, msg, recipients, timeout, policy)
        except (smtplib.SMTPException, OSError) as exc:
            raise classify_smtp_error(exc, server=server) from exc
        finally:
            ctx.record("elapsed_ms", round((time.perf_counter() - started) * 1000, 3))
        refused = {rcpt: _reply(code, text) for rcpt, (code, text) in refused_raw.items()}
        accepted = [rcpt for rcpt in recipients if rcpt not in refused]
        ctx.record("recipients", len(accepted))
        ctx.record("refused", len(refused))
        ctx.record("message_bytes", len(msg.as_bytes()))
        return EmailSendOutput(message_id=message_id, accepted=accepted, refused=refused)
