"""Deterministic run ids: one rule for every source.

A run started with an idempotency key gets ``uuid5(TRIGGER_NAMESPACE, f"{source}:{key}")`` --
the trigger router's rule (:func:`processors.triggers.mapping.run_id_for_trigger`), reused here so
the API, the trigger router and a retried request all compute the same id without coordinating,
and the scheduler dedupes ``StartRun`` on it. Without a key a run gets a random UUID.

Keys are a tenant's own (ADR 0051): :func:`tenant_key` puts another tenant's keys in a namespace
of their own, so the same key sent by two tenants names two runs. The separator is a control
character, which keys may not contain (:data:`IDEMPOTENCY_KEY_PATTERN`), so no key of one tenant
can spell another's; the default tenant's keys stay as they are (run ids of keys used before
tenancy do not change).
"""

from __future__ import annotations

import uuid
from typing import Final

from foundation.tenancy import DEFAULT_TENANT
from processors.triggers.mapping import run_id_for_trigger

__all__ = [
    "API_SOURCE",
    "IDEMPOTENCY_KEY_PATTERN",
    "WEBHOOK_SOURCE",
    "new_command_id",
    "run_id_for",
    "tenant_key",
]

IDEMPOTENCY_KEY_PATTERN: Final = r"^[^\x00-\x1f\x7f]+$"
"""No control characters (a header cannot carry them either; see :func:`tenant_key`)."""

_TENANT_SEPARATOR: Final = "\x1f"

API_SOURCE = "api"
WEBHOOK_SOURCE = "webhook"


def run_id_for(source: str, idempotency_key: str | None) -> str:
    """The run id of a start request from ``source`` (``"api"``, ``"webhook"``, ...)."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    if not idempotency_key:
        raise ValueError("Expected a non-empty idempotency key, but got ''")
    return run_id_for_trigger(source, idempotency_key)


def new_command_id() -> str:
    return str(uuid.uuid4())


def tenant_key(tenant: str, key: str) -> str:
    """``key`` in ``tenant``'s namespace: the key itself for the default tenant."""
    return key if tenant == DEFAULT_TENANT else f"{tenant}{_TENANT_SEPARATOR}{key}"
