"""foundation.redact.redact_credentials: credentials out of loggable text."""

from __future__ import annotations

import pytest

from foundation.redact import redact_credentials


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Expected Postgres at postgresql://reflux:s3cr3t-pw@127.0.0.1:15432/reflux, but: x",
            "Expected Postgres at postgresql://reflux:***@127.0.0.1:15432/reflux, but: x",
        ),
        ("redis://:r3dis-pw@127.0.0.1:16379/0", "redis://:***@127.0.0.1:16379/0"),
        ("rediss://default:pw-2@cache:6380", "rediss://default:***@cache:6380"),
        ("http://user:ch-pw@clickhouse:8123", "http://user:***@clickhouse:8123"),
        ("host=db user=app password=topsecret dbname=x", "host=db user=app password=*** dbname=x"),
        ("host=db password='a b c' port=1", "host=db password='***' port=1"),
        (
            "postgresql://u@h/d?password=qs-pw&sslmode=require",
            "postgresql://u@h/d?password=***&sslmode=require",
        ),
        ("sasl.password=kafka-pw, sasl.username=app", "sasl.password=***, sasl.username=app"),
        ("aws_secret_access_key=AKIAxyz", "aws_secret_access_key=***"),
        (
            str({"bootstrap.servers": "h:9093", "sasl.username": "app", "sasl.password": "k-1"}),
            "{'bootstrap.servers': 'h:9093', 'sasl.username': 'app', 'sasl.password': '***'}",
        ),
        ("REFLUX_S3_SECRET_KEY=abc123", "REFLUX_S3_SECRET_KEY=***"),
        ('{"api_key": "k-1", "user": "u"}', '{"api_key": "***", "user": "u"}'),
    ],
)
def test_credentials_are_masked(text: str, expected: str) -> None:
    assert redact_credentials(text) == expected
    assert redact_credentials(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://reflux@127.0.0.1:15432/reflux?passfile=/var/credentials/postgres.pgpass",
        "redis://127.0.0.1:16379/0",
        "http://example.com/a:b@c",  # '/' ends the authority: no user info here
        "secrets_dir=/etc/reflux tokens used: 12",
        "Kafka at 127.0.0.1:19092 is unavailable",
    ],
)
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact_credentials(text) == text
