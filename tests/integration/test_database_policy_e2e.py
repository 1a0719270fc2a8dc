"""The whole engine: a workflow's database.query reaches the database its operator configured
and never the platform's own PostgreSQL, even when an operator configured that too."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.settings import Settings
from infra.services.postgres import Postgres
from tests.integration.engine_fixtures import Harness, HarnessFactory
from tests.integration.postgres_fixtures import password_dsn, second_postgres  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _query(workflow_id: str, connection: str) -> dict[str, object]:
    return {
        "id": workflow_id,
        "steps": [
            {
                "id": "q",
                "node": "database.query@^1",
                "retry": {"max_attempts": 1},
                "params": {
                    "connection": connection,
                    "sql": "SELECT current_database() AS db, current_user AS who",
                },
            }
        ],
        "outputs": {"rows": "{{ steps.q.output.rows }}"},
    }


@pytest.fixture
def harness(
    tmp_path: Path,
    kafka_settings: Settings,
    second_postgres: Postgres,  # noqa: F811
    engine_harness: HarnessFactory,
) -> Harness:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SHOP_DSN").write_text(password_dsn(second_postgres))
    (secrets / "PLATFORM_DSN").write_text(kafka_settings.postgres_dsn)
    (secrets / "databases.yaml").write_text("shop: SHOP_DSN\nplatform: PLATFORM_DSN\n")
    (secrets / "grants.yaml").write_text("SHOP_DSN: ['dbq-*']\nPLATFORM_DSN: ['dbq-*']\n")
    settings = kafka_settings.model_copy(update={"secrets_dir": secrets})
    return engine_harness(settings, client_id="dbq-policy-test")


def test_a_run_reaches_its_configured_database_and_not_the_platforms(harness: Harness) -> None:
    harness.register(_query("dbq-shop", "shop"))
    harness.register(_query("dbq-platform", "platform"))
    shop_run = harness.start("dbq-shop")
    platform_run = harness.start("dbq-platform")
    shop, platform = harness.wait(shop_run, timeout=90), harness.wait(platform_run, timeout=90)

    assert shop.status == "succeeded", shop
    assert shop.outputs["rows"] == [{"db": "reflux", "who": "reflux"}]

    assert platform.status == "failed", platform
    error = harness.steps(platform_run)["q"].error
    assert error is not None
    assert error["error_class"] == "DatabasePolicy" and not error["retryable"]
    assert "platform-database" in error["message"]
    assert "platform's own PostgreSQL" in error["message"]
