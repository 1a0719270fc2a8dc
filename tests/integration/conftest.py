"""Integration tests run against the real local services.

The session fixture starts them through the project's own scripts (idempotent: a no-op when
`make up` already ran). A service that cannot start fails the tests; nothing is ever skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from foundation.settings import Settings, get_settings
from infra.services.base import ServiceError
from infra.stack import up


@pytest.fixture(scope="session", autouse=True)
def local_services() -> Settings:
    settings = get_settings()
    try:
        up(settings)
    except ServiceError as exc:
        pytest.fail(f"local services could not start: {exc}", pytrace=False)
    return settings


@pytest.fixture
def isolated_settings(local_services: Settings) -> Iterator[Settings]:
    """Settings with a unique topic prefix, so tests never see each other's records."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    yield local_services.model_copy(update={"topic_prefix": prefix})


# Shared Kafka fixtures (kafka_settings, admin, catalog, topics) for every integration test.
from tests.integration.engine_fixtures import harness  # noqa: E402, F401
from tests.integration.kafka_fixtures import admin, catalog, kafka_settings, topics  # noqa: E402, F401
