"""Each local service answers its own protocol, with the features the product relies on."""

from __future__ import annotations

import uuid

import psycopg
import redis
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from infra.services.docker import docker_api
from infra.services.s3 import S3
from node_workers.sandbox.image import sandbox_image_tag
from node_workers.sandbox.limits import DEFAULT_SANDBOX_GID, DEFAULT_SANDBOX_UID
from streams.security import kafka_client_config


def test_kafka_is_apache_kafka_in_kraft_mode(local_services: Settings) -> None:
    admin = AdminClient({**kafka_client_config(local_services)})
    cluster = admin.describe_cluster().result(timeout=10)
    assert len(cluster.nodes) == 1
    # KRaft brokers report a controller; there is no ZooKeeper in this deployment.
    assert cluster.controller is not None


def test_postgres_has_pgvector(local_services: Settings) -> None:
    with psycopg.connect(local_services.postgres_dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        assert version is not None and version[0].startswith("18.")
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        assert row is not None
        distance = conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector").fetchone()
        assert distance == (2.0,)


def test_redis_round_trip(local_services: Settings) -> None:
    client = redis.Redis.from_url(local_services.redis_url)
    key = f"test:{uuid.uuid4()}"
    client.set(key, b"value", ex=30)
    assert client.get(key) == b"value"


def test_s3_put_get_with_boto3(local_services: Settings) -> None:
    s3 = S3(local_services).client()
    key = f"tests/{uuid.uuid4()}.bin"
    body = bytes(range(256)) * 1024
    s3.put_object(Bucket=local_services.s3_bucket, Key=key, Body=body)
    got = s3.get_object(Bucket=local_services.s3_bucket, Key=key)["Body"].read()
    assert got == body
    s3.delete_object(Bucket=local_services.s3_bucket, Key=key)


def test_docker_is_the_projects_own_engine_with_the_sandbox_image(
    local_services: Settings,
) -> None:
    host = local_services.resolved_docker_host()
    assert host == f"unix://{local_services.data_dir / 'run' / 'docker.sock'}"
    client = docker_api(host)
    try:
        assert client.ping()
        info = client.info()
        assert info["DockerRootDir"] == str((local_services.data_dir / "docker/data").resolve())
        # Built locally by `make up` (nothing can be pulled), for the sandbox's user.
        config = client.images.get(sandbox_image_tag()).attrs["Config"]
        assert config["User"] == f"{DEFAULT_SANDBOX_UID}:{DEFAULT_SANDBOX_GID}"
        assert config["WorkingDir"] == "/work"
    finally:
        client.close()


# ClickHouse (chdb) is exercised in test_traces.py: chdb allows one data folder per process,
# so every test that opens a store lives in that one module.
