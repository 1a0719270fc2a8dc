"""Authenticated API clients for tests: a real key, created the real way (ADR 0046).

The key is written to the API's own Postgres schema by :func:`api.auth.bootstrap.create_api_key`
-- what ``reflux api-keys create`` does -- and the client sends it on every request. There is no
switch that turns authentication off.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from api.auth.bootstrap import create_api_key
from api.auth.roles import Role
from api.config import ApiSettings
from foundation.settings import Settings

__all__ = ["authorized_client", "key_headers"]


def key_headers(
    settings: Settings,
    api: ApiSettings,
    *,
    role: Role = Role.ADMIN,
    name: str = "test-admin",
    tenant: str = "default",
) -> dict[str, str]:
    """``Authorization`` for a new key of ``role`` in ``api.api_schema``."""
    _, key = create_api_key(settings, api, name=name, role=role, tenant=tenant, created_by="tests")
    return {"Authorization": f"Bearer {key}"}


def authorized_client(
    settings: Settings,
    api: ApiSettings | None = None,
    *,
    role: Role = Role.ADMIN,
    name: str = "test-admin",
    **app_kwargs: Any,
) -> TestClient:
    """``TestClient(create_app(settings, api))`` sending a new key of ``role``; enter it
    (``with``) to start the app."""
    api = api or ApiSettings()
    headers = key_headers(settings, api, role=role, name=name)
    return TestClient(create_app(settings, api, **app_kwargs), headers=headers)
