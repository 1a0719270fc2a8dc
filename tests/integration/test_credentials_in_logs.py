"""No password in what a component logs or raises at start (foundation/redact.py)."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from foundation.errors import RefluxError
from foundation.settings import Settings
from projections.projector import Projector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PASSWORD = "pg-Pa55word-never-logged"
DSN = f"postgresql://reflux:{PASSWORD}@127.0.0.1:1/reflux"


def test_the_api_start_logs_where_postgres_is_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(postgres_dsn=DSN, kafka_bootstrap="127.0.0.1:1")
    api = ApiSettings(
        publish_timeout_s=1.0, pool_timeout_s=1.0, readiness_timeout_s=1.0, clickhouse_enabled=False
    )
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings, api)) as client:
        assert client.get("/readyz").status_code == 503
    assert "API starting: Postgres postgresql://reflux:***@127.0.0.1:1/reflux" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_projector_that_cannot_reach_postgres_does_not_say_the_password() -> None:
    projector = Projector(Settings(postgres_dsn=DSN), schema="never_created")
    with pytest.raises(RefluxError) as info:
        projector._connect()
    assert "reflux:***@127.0.0.1:1" in str(info.value)
    assert PASSWORD not in str(info.value)
