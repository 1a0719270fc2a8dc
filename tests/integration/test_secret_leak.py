"""Secrets never leave the worker: real runs on DevEngine, then every byte they left is searched.

Workflows use secrets in an HTTP header, a query, a JSON body and a transform's data; the local
echo server sends them all back (so outputs must be redacted); a 500 puts one into an error
message; one workflow asks for a secret it is not granted and one for a secret that is not set;
one run tries to inject a placeholder through its inputs. Afterwards the test reads every record
of every topic of its prefix (raw, uncommitted included), every row of its Postgres schema, its
Redis keys and every log record of the process at DEBUG, and looks for each secret's value in the
usual encodings and for a random core that survives any encoding. ClickHouse is not started here
(chdb is per process): the ``traces`` topic is what it ingests, and it is searched raw.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psycopg
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import Harness, HarnessFactory
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually

CORES = {name: uuid.uuid4().hex for name in ("API_TOKEN", "DB_PASSWORD", "OTHER_TOKEN")}
# A blank, + / = and a quote and backslash: URL, form and JSON encodings all differ from the raw
# text, so redaction has to know them.
SECRETS = {
    "API_TOKEN": f"tok-{CORES['API_TOKEN']} a+b/c=d",
    "DB_PASSWORD": f'pw-{CORES["DB_PASSWORD"]}"q\\z',
    "OTHER_TOKEN": f"other-{CORES['OTHER_TOKEN']}",
}


def needles() -> dict[str, bytes]:
    """Every form a leak could take: raw, JSON-escaped, URL-encoded, base64, and the core."""
    out: dict[str, bytes] = {}
    for name, value in SECRETS.items():
        forms = {
            "raw": value,
            "json": json.dumps(value)[1:-1],
            "quote": quote(value, safe=""),
            "quote_plus": quote_plus(value),
            "base64": base64.b64encode(value.encode()).decode(),
            "base64url": base64.urlsafe_b64encode(value.encode()).decode(),
            "core": CORES[name],
        }
        out.update({f"{name}/{kind}": form.encode() for kind, form in forms.items()})
    return out


def leaks(where: str, blobs: list[bytes]) -> list[str]:
    found = []
    for label, needle in needles().items():
        for blob in blobs:
            if needle in blob:
                found.append(f"{label} in {where}: ...{_around(blob, needle)}...")
                break
    return found


def _around(blob: bytes, needle: bytes) -> str:
    i = blob.index(needle)
    return blob[max(0, i - 60) : i + len(needle) + 20].decode(errors="replace")


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "DB_PASSWORD").write_text(SECRETS["DB_PASSWORD"] + "\n")
    # The legacy form (ADR 0050): still loads (any version, any host, a warning), and this test
    # keeps it so that it stays covered; test_secret_grants_engine.py uses the current form.
    (directory / "grants.yaml").write_text(
        "API_TOKEN: [secret-leak, secret-fail, secret-denied]\n"
        "DB_PASSWORD: ['secret-*']\n"
        "OTHER_TOKEN: [someone-else]\n"
        "NOT_SET: ['*']\n"
    )
    return directory


@pytest.fixture
def harness(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    secrets_dir: Path,
    kafka_settings: Settings,
    engine_harness: HarnessFactory,  # last: the engine stops before the patches are undone
) -> Harness:
    caplog.set_level(logging.DEBUG)  # before any component starts: every record is captured
    monkeypatch.setenv("REFLUX_SECRET_API_TOKEN", SECRETS["API_TOKEN"])
    monkeypatch.setenv("REFLUX_SECRET_OTHER_TOKEN", SECRETS["OTHER_TOKEN"])
    settings = kafka_settings.model_copy(update={"secrets_dir": secrets_dir})
    return engine_harness(settings, client_id="secret-leak-test")


# -- workflows -------------------------------------------------------------------------------------


def leak_workflow(base: str) -> dict[str, Any]:
    return {
        "id": "secret-leak",
        "inputs": {"user": {"type": "string", "required": True}},
        "steps": [
            {
                "id": "call",
                "node": "http.request@^1",
                "params": {
                    "url": f"{base}/echo",
                    "method": "POST",
                    "headers": {
                        "Authorization": "Bearer {{ secrets.API_TOKEN }}",
                        "X-User": "{{ inputs.user }}",
                    },
                    "query": {"key": "{{ secrets.DB_PASSWORD }}", "user": "{{ inputs.user }}"},
                    "json": {"password": "{{ secrets.DB_PASSWORD }}", "user": "{{ inputs.user }}"},
                },
            },
            {
                "id": "shape",
                "node": "transform@^1",
                "params": {
                    "expression": "{t: token, u: user, n: length(token)}",
                    "data": {"token": "{{ secrets.API_TOKEN }}", "user": "{{ inputs.user }}"},
                },
            },
            {
                "id": "use",
                "node": "transform@^1",
                "needs": ["call"],
                "params": {
                    "expression": "headers.authorization",
                    "data": "{{ steps.call.output.body }}",
                },
            },
        ],
        "outputs": {
            "echo": "{{ steps.call.output.body }}",
            "shaped": "{{ steps.shape.output.result }}",
            "auth": "{{ steps.use.output.result }}",
        },
    }


def fail_workflow(base: str) -> dict[str, Any]:
    return {
        "id": "secret-fail",
        "steps": [
            {
                "id": "boom",
                "node": "http.request@^1",
                "params": {"url": f"{base}/status/500?token={{{{ secrets.API_TOKEN }}}}"},
                "retry": {"max_attempts": 2, "initial_backoff": "50ms"},
            }
        ],
    }


def denied_workflow(base: str) -> dict[str, Any]:
    return {
        "id": "secret-denied",
        "steps": [
            {
                "id": "other",
                "node": "http.request@^1",
                "params": {
                    "url": f"{base}/echo",
                    "headers": {"Authorization": "Bearer {{ secrets.OTHER_TOKEN }}"},
                },
            },
            {
                "id": "unset",
                "node": "transform@^1",
                "params": {"expression": "@", "data": "{{ secrets.NOT_SET }}"},
            },
        ],
    }


# -- what the run left behind ---------------------------------------------------------------------


def topic_bytes(settings: Settings, admin: AdminClient) -> dict[str, list[bytes]]:
    """Every record (value, key, headers) of every topic of this test's prefix, read raw."""
    prefix = settings.topic_prefix + "."
    metadata = admin.list_topics(timeout=10)
    return {
        topic.removeprefix(prefix): _raw_records(settings, topic, sorted(info.partitions))
        for topic, info in sorted(metadata.topics.items())
        if topic.startswith(prefix)
    }


def _raw_records(settings: Settings, topic: str, partitions: list[int]) -> list[bytes]:
    """Values, keys and headers of every record of ``topic``, read to the end it has now."""
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"leak-scan-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            # Aborted transactions too: bytes on the broker are what an operator could read.
            "isolation.level": "read_uncommitted",
        }
    )
    blobs: list[bytes] = []
    try:
        assigned = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in assigned}
        consumer.assign(assigned)

        def behind() -> dict[int, int]:
            """partition -> position, for the partitions not read to their end yet."""
            positions = consumer.position([TopicPartition(topic, p) for p in ends if ends[p] > 0])
            return {tp.partition: tp.offset for tp in positions if tp.offset < ends[tp.partition]}

        def read_more() -> dict[int, int]:
            if not behind():
                return {}
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is not None:
                    continue
                blobs.append(message.value() or b"")
                blobs.append(message.key() or b"")
                headers = message.headers() or []
                items = headers.items() if isinstance(headers, dict) else headers
                for name, value in items:
                    data = value.encode() if isinstance(value, str) else (value or b"")
                    blobs.append(name.encode() + b"=" + data)
            return behind()

        eventually(
            read_more,
            30,
            f"{topic} read to its end {ends}",
            until=lambda left: not left,
            interval=0,  # consume() waits
        )
    finally:
        consumer.close()
    return blobs


def postgres_rows(settings: Settings, schema: str) -> dict[str, list[bytes]]:
    """Every row of every table of the read-model schema, as text."""
    out: dict[str, list[bytes]] = {}
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        ]
        for table in tables:
            rows = conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t').fetchall()
            out[table] = [str(row[0]).encode() for row in rows]
    return out


def redis_values(settings: Settings, url: str) -> list[bytes]:
    """Keys and values under this test's prefix on the Redis at ``url``."""
    client = redis.Redis.from_url(url)
    found: list[Any] = []
    try:
        for key in client.scan_iter(match=f"{settings.topic_prefix}*"):
            kind = client.type(key)
            found.append(key)
            if kind == b"string":
                found.append(client.get(key))
            elif kind == b"hash":
                found += [*client.hgetall(key).keys(), *client.hgetall(key).values()]
            elif kind == b"zset":
                found += client.zrange(key, 0, -1)
            elif kind == b"set":
                found += list(client.smembers(key))
            elif kind == b"list":
                found += client.lrange(key, 0, -1)
    finally:
        client.close()
    return [v if isinstance(v, bytes) else str(v).encode() for v in found if v is not None]


# -- the test --------------------------------------------------------------------------------------


def test_secret_values_never_leave_the_worker(
    harness: Harness,
    http: HttpTestServer,
    admin: AdminClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for definition in (
        leak_workflow(http.url),
        fail_workflow(http.url),
        denied_workflow(http.url),
    ):
        harness.register(definition)

    ok_run = harness.start("secret-leak", {"user": "ada"})
    fail_run = harness.start("secret-fail")
    denied_run = harness.start("secret-denied")
    injected_run = harness.start("secret-leak", {"user": "{{ secrets.API_TOKEN }}"})
    runs = {r: harness.wait(r, timeout=60) for r in (ok_run, fail_run, denied_run, injected_run)}

    # The secrets work: the server got the real values.
    echoed = http.requests_to("/echo")
    assert len(echoed) == 1, [r.headers for r in echoed]  # the injected run sent nothing
    request = echoed[0]
    assert request.header("authorization") == f"Bearer {SECRETS['API_TOKEN']}"
    assert request.query["key"] == [SECRETS["DB_PASSWORD"]]
    assert request.json() == {"password": SECRETS["DB_PASSWORD"], "user": "ada"}
    assert len(http.requests_to("/status/500")) == 2
    # Interpolated into URL text, the value is not URL-encoded: the server reads "+" as a
    # blank (docs/secrets.md says to pass secrets through `query` instead, as `call` does).
    token = SECRETS["API_TOKEN"].replace("+", " ")
    assert http.requests_to("/status/500")[0].query["token"] == [token]

    # ... and came back masked.
    ok = runs[ok_run]
    assert ok.status == "succeeded", ok
    outputs = ok.outputs
    assert outputs["shaped"] == {"t": "***", "u": "ada", "n": len(SECRETS["API_TOKEN"])}
    assert outputs["auth"] == "Bearer ***"
    assert outputs["echo"]["headers"]["authorization"] == "Bearer ***"
    assert outputs["echo"]["query"]["key"] == ["***"]
    assert outputs["echo"]["json"] == {"password": "***", "user": "ada"}
    assert "***" in outputs["echo"]["body"]

    failed = runs[fail_run]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["error_class"] == "Http5xx"
    assert "token=***" in failed.error["message"], failed.error

    denied = harness.steps(denied_run)
    assert runs[denied_run].status == "failed"
    other, unset = denied["other"].error, denied["unset"].error
    assert other is not None and unset is not None
    assert other["error_class"] == "SecretUnavailable" and not other["retryable"]
    assert "'OTHER_TOKEN'" in other["message"] and "secret-denied" in other["message"]
    assert "not granted" in other["message"]
    assert unset["error_class"] == "SecretUnavailable" and "'NOT_SET'" in unset["message"]

    injected = harness.steps(injected_run)
    assert runs[injected_run].status == "failed"
    assert injected["call"].error is not None
    assert injected["call"].error["error_class"] == "SecretInjection"

    # Everything is published and flushed once the engine has stopped.
    harness.engine.stop()
    topics = topic_bytes(harness.settings, admin)
    rows = postgres_rows(harness.settings, harness.schema)
    logs = [caplog.text.encode()] + [r.getMessage().encode() for r in caplog.records]
    # The step cache's instance, and the attempt ledger's (it holds encoded results).
    cached = redis_values(harness.settings, harness.settings.redis_url)
    ledger = redis_values(harness.settings, harness.settings.ledger_redis_url)
    stored = cached + ledger

    # The search is not vacuous: each place holds this test's runs, placeholders and masks.
    for name in ("runs", "commands", "results", "traces", "workflows"):
        assert topics.get(name), f"topic {name} is empty: {sorted(topics)}"
    assert any(k.startswith("invoke.http.request") and v for k, v in topics.items())
    assert any(b"{{ secrets.API_TOKEN }}" in blob for blob in topics["runs"])
    assert any(b"***" in blob for blob in topics["results"])
    assert any(b"***" in blob for blob in topics["traces"])
    assert rows.get("runs") and rows.get("run_events"), sorted(rows)
    assert any(b"***" in blob for blob in rows["runs"])
    assert any(b"{{ secrets.API_TOKEN }}" in blob for blob in rows["run_events"])
    assert any(r.name == "httpx" and "token=***" in r.getMessage() for r in caplog.records)
    assert ledger, "the attempt ledger holds results"

    found: list[str] = []
    for topic, blobs in topics.items():
        found += leaks(f"topic {topic}", blobs)
    for table, blobs in rows.items():
        found += leaks(f"table {table}", blobs)
    found += leaks("redis", stored)
    found += leaks("logs", logs)
    assert not found, "\n".join(found)
