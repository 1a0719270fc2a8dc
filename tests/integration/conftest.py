"""Integration tests run against the real local services.

The session fixture starts them through the project's own scripts (idempotent: a no-op when
`make up` already ran). A service that cannot start fails the tests; nothing is ever skipped.

Everything a test creates on the shared services is its own and is removed afterwards: topics by
prefix (``isolated_settings``), engine read models by schema (the harness factory in
engine_fixtures.py). ``no_leftovers`` checks at the end of the session (of each xdist worker)
that nothing of this session is left, and fails the run loudly if something is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# The egress policy denies loopback by default; the stub servers these tests call (HTTP, SMTP,
# OpenAI-compatible) listen on 127.0.0.1 at ephemeral ports. The harness's operator therefore
# allows exactly that address, every port except the platform's own (Redis, Postgres, Kafka...
# need an exact host:port entry, which this is not). Set before any Settings is built, so the
# engines, the unbound nodes and the `reflux` subprocesses all see it; tests of the policy
# itself (test_egress.py) build their own settings. An environment that sets it wins.
os.environ.setdefault("REFLUX_EGRESS_ALLOW", '["127.0.0.1"]')

import pytest

from foundation.settings import Settings, get_settings
from infra.services.base import ServiceError
from infra.stack import up
from tests.integration.http_fixtures import HttpTestServer, serve
from tests.integration.kafka_fixtures import check_session_leftovers, isolated_kafka


@pytest.fixture(scope="session", autouse=True)
def local_services() -> Settings:
    settings = get_settings()
    try:
        up(settings)
    except ServiceError as exc:
        pytest.fail(f"local services could not start: {exc}", pytrace=False)
    return settings


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(local_services: Settings) -> Iterator[None]:
    """After the last test of this process: no topic of this session's prefix and no registered
    Postgres schema may remain on the shared services (an error at teardown fails the run)."""
    yield
    check_session_leftovers(local_services)


@pytest.fixture
def isolated_settings(
    local_services: Settings, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """Settings with a unique topic prefix, so tests never see each other's records; every
    topic of the prefix is deleted after the test, whatever created it."""
    with isolated_kafka(local_services, request.node.nodeid) as settings:
        yield settings


# Shared fixtures (kafka_settings, admin, catalog, topics, the engine harness) for every
# integration test.
from tests.integration.console_fixtures import (  # noqa: E402, F401
    browser,
    console,
    console_api,
    metrics_console,
    playwright_driver,
    traces_store,
)
from tests.integration.engine_fixtures import engine_harness, harness  # noqa: E402, F401
from tests.integration.kafka_fixtures import admin, catalog, kafka_settings, topics  # noqa: E402, F401


@pytest.fixture
def http() -> Iterator[HttpTestServer]:
    """A local HTTP service for the nodes to call (tests/integration/http_fixtures.py)."""
    with serve() as server:
        yield server
