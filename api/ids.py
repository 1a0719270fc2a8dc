"""Deterministic run ids: one rule for every source.

A run started with an idempotency key gets ``uuid5(TRIGGER_NAMESPACE, f"{source}:{key}")`` --
the trigger router's rule (:func:`processors.triggers.mapping.run_id_for_trigger`), reused here so
the API, the trigger router and a retried request all compute the same id without coordinating,
and the scheduler dedupes ``StartRun`` on it. Without a key a run gets a random UUID.
"""

from __future__ import annotations

import uuid

from processors.triggers.mapping import run_id_for_trigger

__all__ = ["API_SOURCE", "WEBHOOK_SOURCE", "new_command_id", "run_id_for"]

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
