"""email.send@1.0.0 against a real SMTP server (aiosmtpd) the tests start: plain, AUTH,
STARTTLS and SMTPS with a certificate made at test time, and the server's refusals."""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from node_workers.attempt import run_attempt
from node_workers.node import NodeContext, NodeError, validate_params
from node_workers.nodes.email_send import EmailSendNode, EmailSendOutput, message_id_for
from schemas.models import NodeInvocation, StepRef, TraceStatus
from tests.integration.smtp_fixtures import (
    SmtpTestServer,
    TlsCert,
    serve_smtp,
    smtp_server,
    tls_cert,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _ctx(invocation: str = "inv-1", key: str = "") -> NodeContext:
    return NodeContext(invocation, "run-1", "notify", 1, idempotency_key=key)


def _params(server: SmtpTestServer, **raw: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "from": "REFLUX <bot@reflux.test>",
        "to": ["ann@example.test"],
        "subject": "Run finished",
        "text": "All steps succeeded.",
        "timeout_s": 5,
        **raw,
    }


def _send(params: dict[str, Any], ctx: NodeContext | None = None) -> EmailSendOutput:
    node = EmailSendNode()
    return asyncio.run(node.execute(validate_params(node, params), ctx or _ctx()))


def _error(params: dict[str, Any]) -> NodeError:
    with pytest.raises(NodeError) as info:
        _send(params)
    return info.value


def test_plain_send_delivers_headers_and_envelope(smtp_server: SmtpTestServer) -> None:
    ctx = _ctx("inv-7", key="idem-7")
    out = _send(
        _params(
            smtp_server,
            to=["Ann <ann@example.test>", "bob@example.test"],
            cc=["carol@example.test"],
            bcc=["audit@example.test", "bob@example.test"],
            headers={"Reply-To": "ops@reflux.test"},
        ),
        ctx,
    )
    recipients = ["ann@example.test", "bob@example.test", "carol@example.test"]
    assert out.accepted == [*recipients, "audit@example.test"]
    assert out.refused == {}
    assert out.message_id == message_id_for("idem-7")
    (received,) = smtp_server.messages
    assert received.mail_from == "bot@reflux.test"
    assert received.rcpt_tos == [*recipients, "audit@example.test"]
    assert received.tls is False and received.login is None
    msg = received.message
    assert msg["Message-ID"] == out.message_id
    assert msg["From"] == "REFLUX <bot@reflux.test>"
    assert msg["To"] == "Ann <ann@example.test>, bob@example.test"
    assert msg["Cc"] == "carol@example.test"
    assert msg["Bcc"] is None  # envelope only
    assert msg["Subject"] == "Run finished"
    assert msg["Reply-To"] == "ops@reflux.test"
    assert msg["X-Reflux-Invocation-Id"] == "inv-7"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "All steps succeeded."
    assert ctx.metrics["recipients"] == 4 and ctx.metrics["refused"] == 0
    assert ctx.metrics["message_bytes"] > 0 and ctx.metrics["elapsed_ms"] > 0


def test_text_and_html_make_an_alternative(smtp_server: SmtpTestServer) -> None:
    _send(_params(smtp_server, subject="Bericht \u00fcber L\u00e4ufe", html="<p>All <b>ok</b></p>"))
    msg = smtp_server.messages[0].message
    assert msg.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in msg.iter_parts()}
    assert parts["text/plain"].strip() == "All steps succeeded."
    assert parts["text/html"].strip() == "<p>All <b>ok</b></p>"
    assert msg["Subject"] == "Bericht \u00fcber L\u00e4ufe"  # RFC 2047 encoded on the wire


def test_redelivery_keeps_the_message_id(smtp_server: SmtpTestServer) -> None:
    # Two attempts of one step share the idempotency key: an inbox can drop the copy.
    first = _send(_params(smtp_server), _ctx("inv-a", key="step-key"))
    again = _send(_params(smtp_server), _ctx("inv-b", key="step-key"))
    other = _send(_params(smtp_server), _ctx("inv-c", key="other-key"))
    assert first.message_id == again.message_id != other.message_id
    ids = [m.message["Message-ID"] for m in smtp_server.messages]
    assert ids == [first.message_id, first.message_id, other.message_id]
    attempts = [m.message["X-Reflux-Invocation-Id"] for m in smtp_server.messages]
    assert attempts == ["inv-a", "inv-b", "inv-c"]


def test_auth_success_and_failure() -> None:
    with serve_smtp(users={"mailer": "s3cret-pw"}) as server:
        _send(_params(server, username="mailer", password="s3cret-pw"))
        assert [m.login for m in server.messages] == ["mailer"]
        error = _error(_params(server, username="mailer", password="wrong-pw"))
        assert (error.error_class, error.retryable) == ("SmtpAuth", False)
        assert "535" in str(error) and "wrong-pw" not in str(error)
        assert len(server.messages) == 1


def test_starttls_with_a_trusted_certificate_then_auth(tls_cert: TlsCert) -> None:
    with serve_smtp(users={"mailer": "s3cret-pw"}, starttls=tls_cert) as server:
        base = _params(server, username="mailer", password="s3cret-pw", starttls=True)
        _send({**base, "ca_cert": tls_cert.pem})
        (received,) = server.messages
        assert received.tls is True and received.login == "mailer"
        # Without trusting the self-signed certificate, verification refuses it for good.
        error = _error(base)
        assert (error.error_class, error.retryable) == ("SmtpTls", False)
        assert "certificate" in str(error).lower()
        # Opting out of verification still encrypts.
        _send({**base, "verify_tls": False})
        assert [m.tls for m in server.messages] == [True, True]


def test_auth_is_not_offered_before_starttls(tls_cert: TlsCert) -> None:
    with serve_smtp(users={"mailer": "s3cret-pw"}, starttls=tls_cert) as server:
        error = _error(_params(server, username="mailer", password="s3cret-pw"))
        assert (error.error_class, error.retryable) == ("SmtpAuth", False)
        assert server.messages == []


def test_implicit_tls(tls_cert: TlsCert) -> None:
    with serve_smtp(implicit_tls=tls_cert) as server:
        out = _send(_params(server, ssl=True, ca_cert=tls_cert.pem))
        assert out.accepted == ["ann@example.test"]
        assert server.messages[0].tls is True


def test_starttls_against_a_server_without_it(smtp_server: SmtpTestServer) -> None:
    error = _error(_params(smtp_server, starttls=True))
    assert (error.error_class, error.retryable) == ("SmtpTls", False)
    assert "STARTTLS" in str(error)


def test_tls_against_a_plain_port_is_a_configuration_error(smtp_server: SmtpTestServer) -> None:
    error = _error(_params(smtp_server, ssl=True))
    assert (error.error_class, error.retryable) == ("SmtpTls", False)


@pytest.mark.parametrize(
    ("reply", "error_class", "retryable"),
    [
        ("550 5.7.1 Message rejected as spam", "SmtpRejected", False),
        ("554 5.6.0 Message content refused", "SmtpRejected", False),
        ("451 4.3.0 Temporary local problem", "SmtpTransient", True),
        ("452 4.3.1 Insufficient system storage", "SmtpTransient", True),
    ],
)
def test_data_replies_are_classified(
    smtp_server: SmtpTestServer, reply: str, error_class: str, retryable: bool
) -> None:
    smtp_server.handler.data_reply = reply
    error = _error(_params(smtp_server))
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert reply in str(error)
    assert smtp_server.messages == []


def test_one_refused_recipient_does_not_fail_the_step(smtp_server: SmtpTestServer) -> None:
    smtp_server.handler.rcpt_replies["gone@example.test"] = "550 5.1.1 No such user"
    ctx = _ctx()
    out = _send(_params(smtp_server, to=["ann@example.test", "gone@example.test"]), ctx)
    assert out.accepted == ["ann@example.test"]
    assert out.refused == {"gone@example.test": "550 5.1.1 No such user"}
    assert smtp_server.messages[0].rcpt_tos == ["ann@example.test"]
    assert ctx.metrics["refused"] == 1


@pytest.mark.parametrize(
    ("reply", "error_class", "retryable"),
    [
        ("550 5.1.1 No such user", "SmtpRejected", False),
        ("450 4.2.1 Mailbox busy", "SmtpTransient", True),
    ],
)
def test_every_recipient_refused(
    smtp_server: SmtpTestServer, reply: str, error_class: str, retryable: bool
) -> None:
    smtp_server.handler.rcpt_replies["ann@example.test"] = reply
    error = _error(_params(smtp_server))
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert "ann@example.test" in str(error)


def _free_port() -> int:
    with socket.socket() as sock:  # free a moment ago, nobody listens now
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_closed_port_is_unavailable() -> None:
    error = _error(
        {
            "host": "127.0.0.1",
            "port": _free_port(),
            "from": "bot@reflux.test",
            "to": ["ann@example.test"],
            "text": "x",
            "timeout_s": 2,
        }
    )
    assert (error.error_class, error.retryable) == ("SmtpUnavailable", True)


def test_a_silent_server_times_out_as_unavailable() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never greets
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        error = _error(
            {
                "host": "127.0.0.1",
                "port": port,
                "from": "bot@reflux.test",
                "to": ["ann@example.test"],
                "text": "x",
                "timeout_s": 0.3,
            }
        )
    assert (error.error_class, error.retryable) == ("SmtpUnavailable", True)
    assert "timed out" in str(error).lower()


def test_through_the_worker_attempt_the_invocation_key_sets_the_message_id(
    smtp_server: SmtpTestServer,
) -> None:
    invocation = NodeInvocation(
        run_id="run-1",
        seq=3,
        invocation_id="inv-2",
        attempt=2,
        workflow_id="wf",
        workflow_version=1,
        step=StepRef(step_id="notify", node="email.send", node_version="1.0.0"),
        params=_params(smtp_server),
        idempotency_key="run-1/notify/key",
    )
    attempt = asyncio.run(run_attempt(EmailSendNode(), invocation))
    assert attempt.status is TraceStatus.OK, attempt.error
    assert attempt.output["message_id"] == message_id_for("run-1/notify/key")
    assert smtp_server.messages[0].message["Message-ID"] == message_id_for("run-1/notify/key")
