"""Keys without the API: the first admin key, and the local one of ``reflux dev`` / ``make
demo`` (ADR 0046). Straight to the API's Postgres schema, the same rows ``POST /v1/api-keys``
writes; the secret goes to a file only its owner can read."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import psycopg

from api.auth.keys import ApiKey, KeyRefusedError, check_key, create_key
from api.auth.roles import Role
from api.config import ApiSettings
from api.store import ensure_api_schema
from foundation.settings import Settings

__all__ = [
    "LOCAL_ADMIN",
    "bearer_headers",
    "create_api_key",
    "ensure_local_admin_key",
    "write_key_file",
]

LOCAL_ADMIN = "local-admin"


def write_key_file(path: Path, key: str) -> Path:
    """Write ``key`` to ``path`` readable by its owner only (0600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key + "\n").encode())
    finally:
        os.close(fd)
    return path


def create_api_key(
    settings: Settings,
    api: ApiSettings,
    *,
    name: str,
    role: Role,
    tenant: str = "default",
    expires_at: datetime | None = None,
    created_by: str = "cli:reflux api-keys create",
) -> tuple[ApiKey, str]:
    """Create a key in Postgres (the API's schema, created if missing); returns the full key."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        ensure_api_schema(conn, api.api_schema)
        return create_key(
            conn,
            api.api_schema,
            name=name,
            role=role,
            tenant=tenant,
            expires_at=expires_at,
            created_by=created_by,
        )


def bearer_headers(
    settings: Settings,
    api: ApiSettings,
    *,
    name: str,
    role: Role = Role.ADMIN,
    created_by: str = "cli",
) -> dict[str, str]:
    """``Authorization`` of a new key: for in-process clients (benchmarks, demos, tests)."""
    _, key = create_api_key(settings, api, name=name, role=role, created_by=created_by)
    return {"Authorization": f"Bearer {key}"}


def ensure_local_admin_key(settings: Settings, api: ApiSettings, path: Path) -> tuple[Path, bool]:
    """An admin key in ``path`` for a local engine: the one there if it still works, else a new
    one (``created`` True). Never prints or logs the secret."""
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            ensure_api_schema(conn, api.api_schema)
            try:
                key = check_key(conn, api.api_schema, existing)
            except KeyRefusedError:
                key = None
        if key is not None and key.role is Role.ADMIN:
            write_key_file(path, existing)  # re-asserts mode 0600
            return path, False
    _, secret = create_api_key(
        settings, api, name=LOCAL_ADMIN, role=Role.ADMIN, created_by="cli:reflux dev"
    )
    return write_key_file(path, secret), True
