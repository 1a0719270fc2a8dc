"""email.send@1.0.0, pure parts: params validation (header injection included), Message-ID
derivation, MIME building and SMTP error classification. Sending is tested against a real
SMTP server in tests/integration/test_node_email.py."""

from __future__ import annotations

import hashlib
import re
import smtplib
import socket
import ssl
from typing import Any

import pytest

from node_workers.node import NonRetryableNodeError, validate_params
from node_workers.nodes.email_send import (
    RESERVED_HEADERS,
    EmailSendInput,
    EmailSendNode,
    build_message,
    classify_smtp_error,
    envelope_address,
    message_id_for,
)


def _params(**raw: Any) -> EmailSendInput:
    base = {"host": "smtp.example.com", "from": "bot@example.com", "to": ["a@example.com"]}
    return validate_params(EmailSendNode(), {**base, "text": "hi", **raw})


def test_defaults_and_ports() -> None:
    params = _params()
    assert params.from_addr == "bot@example.com"
    assert (params.starttls, params.use_ssl, params.verify_tls) == (False, False, True)
    assert params.timeout_s == 30 and params.headers == {} and params.subject == ""
    assert params.effective_port == 25
    assert _params(starttls=True).effective_port == 587
    assert _params(ssl=True).effective_port == 465
    assert _params(ssl=True, port=2465).effective_port == 2465


def test_message_id_is_derived_from_the_key() -> None:
    first = message_id_for("run-1/notify/params-abc")
    assert first == message_id_for("run-1/notify/params-abc")
    assert first != message_id_for("run-1/notify/params-abd")
    assert re.fullmatch(r"<[0-9a-f]{32}@reflux>", first)
    digest = hashlib.sha256(b"run-1/notify/params-abc").hexdigest()
    assert first == f"<{digest[:32]}@reflux>"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"to": []}, "params.to"),
        ({"to": ["not-an-address"]}, "params.to[0]"),
        ({"to": ["a@example.com", "a@b.c, d@e.f"]}, "params.to[1]"),
        ({"cc": ["x y@example.com"]}, "params.cc[0]"),
        ({"bcc": ["a@example.com\r\nRCPT TO:<evil@x>"]}, "params.bcc[0]"),
        ({"from": "nobody"}, "params.from"),
        ({"subject": "Hi\r\nBcc: victim@example.com"}, "params.subject"),
        ({"headers": {"X-Tag": "a\nBcc: victim@example.com"}}, "params.headers.X-Tag"),
        ({"headers": {"Bad Name": "x"}}, "params.headers"),
        ({"headers": {"bcc": "victim@example.com"}}, "params.headers"),
        ({"headers": {"Message-ID": "<mine@x>"}}, "params.headers"),
        ({"port": 0}, "params.port"),
        ({"timeout_s": 0}, "params.timeout_s"),
        ({"host": ""}, "params.host"),
        ({"tls": True}, "params.tls"),
    ],
)
def test_invalid_params_name_their_path(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _params(**raw)
    assert info.value.error_class == "ValidationError"
    assert str(info.value).startswith(path + ":"), str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"text": None}, "Expected text or html"),
        ({"ssl": True, "starttls": True}, "at most one of ssl, starttls"),
        ({"username": "u"}, "username and password together"),
        ({"password": "p"}, "username and password together"),
        ({"ca_cert": "PEM"}, "Expected ssl or starttls with ca_cert"),
    ],
)
def test_inconsistent_params(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(NonRetryableNodeError, match=message):
        _params(**raw)


def test_reserved_headers_cover_the_structural_ones() -> None:
    assert {"from", "to", "cc", "bcc", "subject", "message-id", "date"} <= RESERVED_HEADERS
    assert _params(headers={"Reply-To": "ops@example.com"}).headers == {
        "Reply-To": "ops@example.com"
    }


def test_the_password_stays_out_of_reprs() -> None:
    params = _params(username="u", password="hunter2-pw")
    assert "hunter2" not in repr(params)
    schema = EmailSendNode().manifest()["input_schema"]
    assert "from" in schema["properties"] and "ssl" in schema["properties"]


def test_recipients_are_bare_and_unique() -> None:
    params = _params(
        to=["Ann <ann@example.com>", "bob@example.com"],
        cc=["bob@example.com"],
        bcc=['"Audit, Team" <audit@example.com>'],
    )
    assert params.recipients == ["ann@example.com", "bob@example.com", "audit@example.com"]
    assert envelope_address("Ann <ann@example.com>") == "ann@example.com"


def test_build_text_message() -> None:
    params = _params(
        to=["Ann <ann@example.com>", "bob@example.com"],
        cc=["c@example.com"],
        bcc=["hidden@example.com"],
        subject="Report",
        headers={"Reply-To": "ops@example.com"},
    )
    msg = build_message(
        params, message_id="<m@reflux>", invocation_id="inv-1", date="Thu, 01 Jan 2026 00:00:00 GMT"
    )
    assert msg["From"] == "bot@example.com"
    assert msg["To"] == "Ann <ann@example.com>, bob@example.com"
    assert msg["Cc"] == "c@example.com"
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Report"
    assert msg["Message-ID"] == "<m@reflux>"
    assert msg["Date"] == "Thu, 01 Jan 2026 00:00:00 +0000"
    assert msg["X-Reflux-Invocation-Id"] == "inv-1"
    assert msg["Reply-To"] == "ops@example.com"
    assert msg.get_content_type() == "text/plain"
    assert b"\r\n" in msg.as_bytes()  # SMTP line endings


def test_build_html_and_alternative_messages() -> None:
    html_only = build_message(
        _params(text=None, html="<p>x</p>"), message_id="<m@r>", invocation_id="i"
    )
    assert html_only.get_content_type() == "text/html"
    assert html_only["Date"]  # filled in when not given
    both = build_message(_params(html="<p>x</p>"), message_id="<m@r>", invocation_id="i")
    assert both.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in both.iter_parts()] == ["text/plain", "text/html"]


SERVER = "SMTP smtp.example.com:25"


@pytest.mark.parametrize(
    ("exc", "error_class", "retryable"),
    [
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), "SmtpAuth", False),
        (smtplib.SMTPAuthenticationError(454, b"4.7.0 try later"), "SmtpTransient", True),
        (smtplib.SMTPDataError(550, b"spam"), "SmtpRejected", False),
        (smtplib.SMTPDataError(451, b"local problem"), "SmtpTransient", True),
        (smtplib.SMTPSenderRefused(553, b"not allowed", "a@b.c"), "SmtpRejected", False),
        (smtplib.SMTPConnectError(421, b"too busy"), "SmtpTransient", True),
        (smtplib.SMTPConnectError(554, b"go away"), "SmtpRejected", False),
        (smtplib.SMTPResponseException(-1, b"garbled"), "SmtpUnavailable", True),
        (smtplib.SMTPRecipientsRefused({"a@b.c": (550, b"no")}), "SmtpRejected", False),
        (
            smtplib.SMTPRecipientsRefused({"a@b.c": (550, b"no"), "d@e.f": (450, b"busy")}),
            "SmtpTransient",
            True,
        ),
        (smtplib.SMTPServerDisconnected("closed"), "SmtpUnavailable", True),
        (ConnectionRefusedError(111, "refused"), "SmtpUnavailable", True),
        (TimeoutError("timed out"), "SmtpUnavailable", True),
        (socket.gaierror(-2, "Name or service not known"), "SmtpUnavailable", True),
        (ssl.SSLCertVerificationError("self-signed"), "SmtpTls", False),
        (ssl.SSLError("wrong version number"), "SmtpTls", False),
        (ssl.SSLEOFError("eof"), "SmtpUnavailable", True),
        (
            smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."),
            "SmtpTls",
            False,
        ),
        (
            smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server."),
            "SmtpAuth",
            False,
        ),
        (smtplib.SMTPException("No suitable authentication method found."), "SmtpAuth", False),
    ],
)
def test_error_classification(exc: BaseException, error_class: str, retryable: bool) -> None:
    error = classify_smtp_error(exc, server=SERVER)
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert SERVER in str(error)


def test_reply_text_is_in_the_message() -> None:
    error = classify_smtp_error(smtplib.SMTPDataError(550, b"5.7.1 spam\n  detected"), server="s")
    assert str(error) == "s replied 550 5.7.1 spam detected"
    refused = classify_smtp_error(
        smtplib.SMTPRecipientsRefused({"a@b.c": (550, b"No such user")}), server="s"
    )
    assert "a@b.c" in str(refused) and "550 No such user" in str(refused)
