"""The node catalog on real Kafka, Postgres and S3: the API publishes entries on ``nodes``, the
real projector applies them (offsets in the same transaction), reads come back through the API,
workflow registration validates against the projected catalog, and workers register their
built-in nodes with their manifest in the object store."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.cimpl import NewTopic
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from foundation.objectstore import S3BlobStore
from foundation.settings import Settings
from node_workers.registration import manifest_key, read_catalog_keys, register_nodes
from node_workers.registry import default_registry
from projections.postgres import apply_migrations, queries
from projections.postgres.writer import load_offsets
from projections.projector import Projector
from schemas.models import NodeStatus
from streams.admin import admin_client
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MANIFEST = {"description": "echoes its params", "cacheable": True, "category": "testing"}


@dataclass
class Env:
    client: TestClient
    settings: Settings
    catalog: TopicCatalog
    read_schema: str
    projector_name: str
    project: Callable[[], None]

    def conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.settings.postgres_dsn, autocommit=True)

    def register(self, version: str, **extra: Any) -> dict[str, Any]:
        body = {"name": "echo", "version": version, "manifest": MANIFEST, **extra}
        response = self.client.post("/v1/nodes", json=body)
        assert response.status_code == 202, response.text
        self.project()
        return dict(response.json())

    def versions(self) -> dict[str, dict[str, Any]]:
        response = self.client.get("/v1/nodes/echo/versions")
        assert response.status_code == 200, response.text
        return {v["version"]: v for v in response.json()["data"]}


@pytest.fixture
def env(kafka_settings: Settings, topics: TopicCatalog) -> Iterator[Env]:
    read_schema = f"t_cat_{uuid.uuid4().hex[:10]}"
    api_schema = f"t_catapi_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, read_schema)
    name = f"catalog-test-{uuid.uuid4().hex[:6]}"
    # The real projector runs alongside, as in production; project() waits until it has
    # stored offsets up to the topics' high watermarks (so the API's reads are current).
    projector = Projector(
        kafka_settings, read_schema, name, assignment="manual", migrate=False, poll_timeout=0.05
    )
    stop = threading.Event()
    thread = threading.Thread(target=projector.run, args=(stop,), daemon=True)
    thread.start()
    watched = [topics.runs.topic, topics.workflows.topic, topics.nodes.topic]
    probe = KafkaConsumer({**kafka_client_config(kafka_settings), "group.id": name})

    def project(timeout: float = 20.0) -> None:
        targets: dict[tuple[str, int], int] = {}
        for topic in watched:
            meta = probe.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                _, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                if high > 0:
                    targets[(topic, p)] = high

        def stored_offsets() -> dict[tuple[str, int], int]:
            with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
                return dict(load_offsets(conn, read_schema, name, watched))

        eventually(
            stored_offsets,
            timeout,
            f"the projector to store offsets up to {targets}",
            until=lambda stored: all(stored.get(tp, 0) >= high for tp, high in targets.items()),
        )

    api = ApiSettings(read_schema=read_schema, api_schema=api_schema, poll_interval_s=0.05)
    try:
        headers = key_headers(kafka_settings, api)
        with TestClient(create_app(kafka_settings, api), headers=headers) as client:
            yield Env(client, kafka_settings, topics, read_schema, name, project)
    finally:
        stop.set()
        thread.join(10)
        projector.close()
        probe.close()
        with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
            for schema in (read_schema, api_schema):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_register_promote_rollout_deprecate_through_the_api(env: Env) -> None:
    accepted = env.register("1.0.0")
    assert (accepted["status"], accepted["rollout_weight"]) == ("draft", 0.0)
    version = env.versions()["1.0.0"]
    assert (version["status"], version["manifest"]) == ("draft", MANIFEST)

    # draft -> staging -> production, each step judged against the projected state.
    for expected in ("staging", "production"):
        response = env.client.post(
            "/v1/nodes/echo/versions/1.0.0/promote", params={"wait_ms": 10_000}
        )
        assert response.status_code == 202, response.text
        assert response.json()["status"] == expected
        # wait_ms: answered once the projector shows this entry, so the next call is safe.
        assert response.json()["applied"] is True
    response = env.client.post("/v1/nodes/echo/versions/1.0.0/promote")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "Expected echo@1.0.0 to be draft or staging to promote it, but it is production"
    )

    env.register("2.0.0", status="production")
    response = env.client.put("/v1/nodes/echo/versions/2.0.0/rollout", json={"weight": 0.1})
    assert response.status_code == 202, response.text
    env.project()
    versions = env.versions()
    assert versions["2.0.0"]["rollout_weight"] == 0.1
    assert versions["2.0.0"]["manifest"] == MANIFEST  # every entry repeats the full state

    nodes = env.client.get("/v1/nodes").json()
    assert nodes["count"] == 1
    summary = nodes["data"][0]
    assert summary["name"] == "echo"
    assert summary["latest_version"] == "2.0.0"
    assert summary["category"] == "testing"
    assert summary["production_versions"] == ["1.0.0", "2.0.0"]
    assert env.client.get("/v1/nodes", params={"category": "http"}).json()["count"] == 0

    response = env.client.post("/v1/nodes/echo/versions/1.0.0/deprecate")
    assert response.status_code == 202
    env.project()
    assert env.versions()["1.0.0"]["status"] == "deprecated"
    response = env.client.post("/v1/nodes/echo/versions/1.0.0/deprecate")
    assert response.status_code == 409
    assert "but it is deprecated already" in response.json()["detail"]
    response = env.client.put("/v1/nodes/echo/versions/1.0.0/rollout", json={"weight": 0.5})
    assert response.status_code == 409


def test_api_refusals(env: Env) -> None:
    env.register("1.0.0")
    again = env.client.post("/v1/nodes", json={"name": "echo", "version": "1.0.0"})
    assert again.status_code == 409
    assert again.json()["detail"] == "Expected echo@1.0.0 not to be registered, but it is (draft)"
    bad = env.client.post("/v1/nodes", json={"name": "Echo!", "version": "1.0"})
    assert bad.status_code == 422
    assert {tuple(d["loc"]) for d in bad.json()["detail"]} == {
        ("body", "name"),
        ("body", "version"),
    }
    weight = env.client.put("/v1/nodes/echo/versions/1.0.0/rollout", json={"weight": 1.5})
    assert weight.status_code == 422
    missing = env.client.post("/v1/nodes/echo/versions/9.9.9/promote")
    assert missing.status_code == 404
    assert env.client.get("/v1/nodes/nope/versions").status_code == 404
    assert env.client.get("/v1/nodes/echo/versions/1.0.0").json()["status"] == "draft"


def test_projection_is_exactly_once_with_offsets_in_postgres(env: Env) -> None:
    env.register("1.0.0")
    for weight in (0.2, 0.3, 0.4):
        env.client.put("/v1/nodes/echo/versions/1.0.0/rollout", json={"weight": weight})
    env.project()
    env.project()  # a second pass reads from the stored offsets: nothing changes
    with env.conn() as conn:
        rows = queries.list_node_versions(conn, "echo", schema=env.read_schema)
        assert [(r.version, r.rollout_weight) for r in rows] == [("1.0.0", 0.4)]
        events = conn.execute(
            f'SELECT count(*) FROM "{env.read_schema}".node_catalog_events'
        ).fetchone()
        assert events is not None and events[0] == 4
        offsets = load_offsets(conn, env.read_schema, env.projector_name, [env.catalog.nodes.topic])
        assert sum(offsets.values()) == 4


def test_workflow_registration_validates_against_the_projected_catalog(env: Env) -> None:
    definition = {
        "id": "uses-echo",
        "steps": [
            {"id": "a", "node": "echo@^2", "params": {}},
            {"id": "b", "node": "transform@^1", "params": {"expression": "`1`", "data": {}}},
        ],
    }
    unknown = env.client.post("/v1/workflows", json=definition)
    assert unknown.status_code == 422, unknown.text
    env.register("1.0.0")
    too_new = env.client.post("/v1/workflows", json=definition)
    assert too_new.status_code == 422
    assert "echo" in json.dumps(too_new.json())
    env.register("2.0.0")
    # echo from the catalog, transform from the built-ins (the catalog does not list it).
    ok = env.client.post("/v1/workflows", json=definition)
    assert ok.status_code == 201, ok.text


def test_workers_register_their_nodes_once_with_manifests_in_s3(env: Env) -> None:
    nodes = default_registry().select("transform,condition")
    result = register_nodes(env.settings, nodes, catalog=env.catalog)
    assert sorted(result.published) == ["condition@1.0.0", "transform@1.0.0"]
    # Registering creates the served majors' invoke topics (none existed in this catalog).
    assert result.topics_created == sorted(
        env.catalog.invoke_topic(name, 1).topic for name in ("condition", "transform")
    )
    assert read_catalog_keys(env.settings, env.catalog) == set(result.published)
    env.project()
    with env.conn() as conn:
        rows = {r.name: r for r in queries.list_node_versions(conn, schema=env.read_schema)}
    transform = rows["transform"]
    assert (transform.status, transform.rollout_weight) == ("production", 1.0)
    key = manifest_key("transform", "1.0.0")
    assert transform.code_url == f"s3://{env.settings.s3_bucket}/{key}"
    stored = json.loads(S3BlobStore(env.settings).get(transform.code_url))
    assert stored == next(n for n in nodes if n.name == "transform").manifest()
    assert transform.manifest == stored

    # An operator deprecates; a restarted worker must not undo it.
    env.client.post("/v1/nodes/transform/versions/1.0.0/deprecate")
    again = register_nodes(env.settings, nodes, catalog=env.catalog, status=NodeStatus.PRODUCTION)
    assert again.published == [] and sorted(again.skipped) == sorted(result.published)
    assert again.topics_created == []
    env.project()
    with env.conn() as conn:
        row = queries.get_node_version(conn, "transform", "1.0.0", schema=env.read_schema)
    assert row is not None and row.status == "deprecated"


def _topics(env: Env) -> set[str]:
    return set(admin_client(env.settings).list_topics(timeout=10).topics)


def test_registering_a_version_creates_its_invoke_topic(env: Env) -> None:
    v1, v2 = env.catalog.invoke_topic("echo", 1).topic, env.catalog.invoke_topic("echo", 2).topic
    assert not {v1, v2} & _topics(env)
    env.register("1.0.0")
    assert v1 in _topics(env) and v2 not in _topics(env)
    env.register("1.1.0")  # same major: the topic is there already
    env.register("2.0.0")
    assert {v1, v2} <= _topics(env)
    # A topic Kafka refuses for good (its name collides with echo_x's): 409, nothing published.
    clash = env.catalog.invoke_topic("echo_x", 1).topic
    admin = admin_client(env.settings)
    for future in admin.create_topics([NewTopic(clash, 1, 1)]).values():
        future.result(10)
    refused = env.client.post("/v1/nodes", json={"name": "echo.x", "version": "1.0.0"})
    assert refused.status_code == 409, refused.text
    assert "collides" in refused.json()["detail"]
    env.project()
    assert env.client.get("/v1/nodes/echo.x/versions").status_code == 404
