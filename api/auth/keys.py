"""API keys: created by an admin (or ``reflux api-keys create``), shown once, stored hashed.

A key reads ``rfx_<id>_<secret>``: the id (16 hex) is public and finds the row in one primary
key lookup; the secret (43 url-safe characters, 256 random bits) is stored only as its SHA-256.
A slow password hash would add nothing against a secret with 256 bits of entropy (ADR 0046), and
one hash per request keeps authentication at one indexed read.

Rotation replaces the stored hash (same id, name and role): the old secret stops working at
once. Revocation stamps ``revoked_at``; expiry is ``expires_at``. Both stay in the table, so a
refused key is refused with its reason (``revoked``, ``expired``) instead of "unknown".
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from api.auth.roles import Role
from foundation.errors import RefluxError
from foundation.tenancy import DEFAULT_TENANT, check_tenant_id
from projections.postgres.identifiers import quote_schema

__all__ = [
    "KEY_PREFIX",
    "NAME_PATTERN",
    "ApiKey",
    "KeyRefusedError",
    "check_key",
    "create_key",
    "get_key",
    "hash_secret",
    "list_keys",
    "parse_key",
    "revoke_key",
    "rotate_key",
]

KEY_PREFIX: Final = "rfx_"
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}$"
"""A key's name becomes its actor (``user:<name>``): no spaces, at most 100 characters."""

_KEY: Final = re.compile(r"^rfx_([0-9a-f]{16})_([A-Za-z0-9_-]{20,200})$")
_COLUMNS: Final = (
    "key_id, name, role, tenant, created_at, created_by, expires_at, rotated_at, revoked_at"
)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    name: str
    role: Role
    tenant: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    rotated_at: datetime | None
    revoked_at: datetime | None

    def refusal(self, now: datetime) -> str | None:
        """Why this key cannot be used now, or None."""
        if self.revoked_at is not None:
            return f"API key {self.key_id} was revoked at {self.revoked_at.isoformat()}"
        if self.expires_at is not None and self.expires_at <= now:
            return f"API key {self.key_id} expired at {self.expires_at.isoformat()}"
        return None


class KeyRefusedError(RefluxError):
    """The presented key is unknown, malformed, revoked, expired or has a wrong secret."""

    error_class = "KeyRefused"

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = _KEY.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def _row(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        key_id=row[0],
        name=row[1],
        role=Role(row[2]),
        tenant=row[3],
        created_at=row[4],
        created_by=row[5],
        expires_at=row[6],
        rotated_at=row[7],
        revoked_at=row[8],
    )


def create_key(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    name: str,
    role: Role,
    tenant: str = DEFAULT_TENANT,
    expires_at: datetime | None = None,
    created_by: str,
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and the full key text (``rfx_<id>_<secret>``), which is
    never stored and cannot be read again."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"Expected a key name matching {NAME_PATTERN}, but got {name!r}")
    check_tenant_id(tenant)
    key_id = secrets.token_hex(8)
    secret = _new_secret()
    row = conn.execute(
        f"INSERT INTO {quote_schema(schema)}.api_keys "
        "(key_id, name, role, tenant, secret_sha256, created_by, expires_at) "
        f"VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (key_id, name, role.value, tenant, hash_secret(secret), created_by, expires_at),
    ).fetchone()
    assert row is not None
    return _row(row), f"{KEY_PREFIX}{key_id}_{secret}"


def get_key(conn: psycopg.Connection[Any], schema: str, key_id: str) -> ApiKey | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM {quote_schema(schema)}.api_keys WHERE key_id = %s", (key_id,)
    ).fetchone()
    return None if row is None else _row(row)


def list_keys(conn: psycopg.Connection[Any], schema: str) -> list[ApiKey]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM {quote_schema(schema)}.api_keys ORDER BY created_at, key_id"
    ).fetchall()
    return [_row(row) for row in rows]


def rotate_key(
    conn: psycopg.Connection[Any], schema: str, key_id: str
) -> tuple[ApiKey, str] | None:
    """A new secret for a usable key (None: no such key). The old secret stops working with
    this commit. A revoked key cannot be rotated back to life (``ValueError``)."""
    current = get_key(conn, schema, key_id)
    if current is None:
        return None
    if current.revoked_at is not None:
        raise ValueError(f"API key {key_id} is revoked; create a new key instead")
    secret = _new_secret()
    row = conn.execute(
        f"UPDATE {quote_schema(schema)}.api_keys SET secret_sha256 = %s, rotated_at = now() "
        f"WHERE key_id = %s AND revoked_at IS NULL RETURNING {_COLUMNS}",
        (hash_secret(secret), key_id),
    ).fetchone()
    if row is None:  # revoked between the two statements
        raise ValueError(f"API key {key_id} is revoked; create a new key instead")
    return _row(row), f"{KEY_PREFIX}{key_id}_{secret}"


def revoke_key(conn: psycopg.Connection[Any], schema: str, key_id: str) -> ApiKey | None:
    """Revoke (idempotent: a revoked key keeps its first ``revoked_at``); None: no such key."""
    row = conn.execute(
        f"UPDATE {quote_schema(schema)}.api_keys SET revoked_at = COALESCE(revoked_at, now()) "
        f"WHERE key_id = %s RETURNING {_COLUMNS}",
        (key_id,),
    ).fetchone()
    return None if row is None else _row(row)


def check_key(conn: psycopg.Connection[Any], schema: str, token: str) -> ApiKey:
    """The usable key ``token`` names; :class:`KeyRefusedError` with the reason otherwise."""
    parsed = parse_key(token)
    if parsed is None:
        raise KeyRefusedError("malformed API key (expected rfx_<id>_<secret>)")
    key_id, secret = parsed
    row = conn.execute(
        f"SELECT {_COLUMNS}, secret_sha256 FROM {quote_schema(schema)}.api_keys WHERE key_id = %s",
        (key_id,),
    ).fetchone()
    if row is None:
        raise KeyRefusedError(f"unknown API key {key_id}", key_id)
    key = _row(row[:-1])
    if not hmac.compare_digest(row[-1], hash_secret(secret)):
        # A rotated-away secret lands here: the id is right, the secret is not the current one.
        raise KeyRefusedError(f"API key {key_id}: wrong secret (rotated or mistyped)", key_id)
    refusal = key.refusal(datetime.now(UTC))
    if refusal is not None:
        raise KeyRefusedError(refusal, key_id)
    return key
