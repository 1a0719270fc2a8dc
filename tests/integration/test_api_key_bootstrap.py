"""Keys without the API (ADR 0046): ``reflux api-keys create|list|revoke`` and the local admin
key of ``reflux dev`` / ``make demo``, against the real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from api.auth.bootstrap import ensure_local_admin_key
from api.auth.keys import check_key, revoke_key
from api.auth.roles import Role
from api.config import ApiSettings
from foundation.settings import Settings
from reflux.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiSettings]:
    schema = f"t_api_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("REFLUX_API_API_SCHEMA", schema)
    yield ApiSettings(api_schema=schema)
    with psycopg.connect(Settings().postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_cli_creates_a_key_in_postgres_and_writes_it_0600(
    api: ApiSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "api-key"
    args = ["api-keys", "create", "--role", "admin", "--name", "local-admin"]
    assert main([*args, "--write-to", str(key_file)]) == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    secret = key_file.read_text().strip()
    out = capsys.readouterr().out
    assert f"written to {key_file}" in out and secret not in out
    with psycopg.connect(Settings().postgres_dsn, autocommit=True) as conn:
        key = check_key(conn, api.api_schema, secret)
    assert (key.name, key.role, key.tenant) == ("local-admin", Role.ADMIN, "default")

    assert main(["api-keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key.key_id in listing and "local-admin" in listing and secret not in listing
    assert main(["api-keys", "revoke", key.key_id]) == 0
    assert main(["api-keys", "revoke", "0123456789abcdef"]) == 1
    assert main(["api-keys", "list"]) == 0
    assert "revoked" in capsys.readouterr().out


def test_the_local_admin_key_is_reused_while_it_works_and_replaced_when_not(
    api: ApiSettings, tmp_path: Path
) -> None:
    settings = Settings()
    key_file = tmp_path / "var" / "api-key"
    path, created = ensure_local_admin_key(settings, api, key_file)
    assert (path, created) == (key_file, True)
    first = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert ensure_local_admin_key(settings, api, key_file) == (key_file, False)
    assert key_file.read_text().strip() == first
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        revoke_key(conn, api.api_schema, check_key(conn, api.api_schema, first).key_id)
    assert ensure_local_admin_key(settings, api, key_file) == (key_file, True)
    assert key_file.read_text().strip() != first
