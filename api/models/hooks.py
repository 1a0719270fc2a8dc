"""Webhook trigger answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["HookAccepted"]


class HookAccepted(BaseModel):
    run_id: str = Field(description="uuid5(TRIGGER_NAMESPACE, 'webhook:' + idempotency_key)")
    workflow_id: str
    workflow_version: int
    idempotency_key: str
    status: Literal["accepted"] = "accepted"
