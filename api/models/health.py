"""Liveness and readiness answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

__all__ = ["CheckResult", "Health", "Readiness"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class CheckResult(BaseModel):
    ok: bool
    detail: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, CheckResult]
