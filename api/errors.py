"""HTTP errors of the API and their JSON shapes.

Every error body is ``{"detail": ...}`` like FastAPI's own: a string for 404/409/401/503, and for
422 a list of ``{"loc": [...], "msg": ..., "type": ...}`` whose ``loc`` is the field path inside
the request (``["body", "steps", "fetch", "needs", 0]``), so clients can point at the bad field.
Backing-service failures become 503 with a message that names the service; they never leak as 500.

``ApiError`` is a :class:`foundation.errors.RefluxError`: its ``error_class`` is the class name,
and the answers a client may simply retry (503, 429) are the retryable ones.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from foundation.errors import RefluxError, RetryableError, ServiceUnavailableError
from streams.producer import DeliveryError

__all__ = [
    "ApiError",
    "ConflictError",
    "FieldIssue",
    "NotFoundError",
    "ReplayFailedError",
    "RequestInvalidError",
    "UnauthorizedError",
    "UnavailableError",
    "install_error_handlers",
    "path_to_loc",
    "validation_detail",
]

log = logging.getLogger(__name__)

_SEGMENT: Final = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class ApiError(RefluxError):
    error_class = "ApiError"
    status_code: int = 500

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


class NotFoundError(ApiError):
    error_class = "NotFoundError"
    status_code = 404


class ConflictError(ApiError):
    error_class = "ConflictError"
    status_code = 409


class UnauthorizedError(ApiError):
    error_class = "UnauthorizedError"
    status_code = 401


class UnavailableError(ApiError, RetryableError):
    error_class = "UnavailableError"
    status_code = 503


class ReplayFailedError(ApiError):
    """The stored events of a run cannot be folded: a bug or an incompatible log, never the
    client's fault."""

    error_class = "ReplayFailedError"
    status_code = 500


@dataclass(frozen=True, slots=True)
class FieldIssue:
    """One problem with one field; ``path`` is dotted (``steps.fetch.needs[0]``)."""

    path: str
    message: str
    type: str


class RequestInvalidError(ApiError):
    error_class = "RequestInvalidError"
    status_code = 422

    def __init__(self, issues: Sequence[FieldIssue], prefix: Sequence[str | int] = ("body",)):
        super().__init__(validation_detail(issues, prefix))
        self.issues = tuple(issues)


def path_to_loc(path: str) -> list[str | int]:
    """``"steps[1].needs[0]"`` -> ``["steps", 1, "needs", 0]``; ``""`` and the root ``"$"``
    -> ``[]``."""
    loc: list[str | int] = []
    if path.startswith("$"):
        path = path[1:]
    for name, index in _SEGMENT.findall(path):
        loc.append(int(index) if index else name)
    return loc


def validation_detail(
    issues: Iterable[FieldIssue], prefix: Sequence[str | int] = ("body",)
) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *path_to_loc(issue.path)], "msg": issue.message, "type": issue.type}
        for issue in issues
    ]


def _json(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    # e.g. WWW-Authenticate on a 401 (api.auth.guard)
    return _json(exc.status_code, exc.detail, getattr(exc, "headers", None))


_TOO_LARGE: Final = frozenset({"MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"})
"""Kafka error names for a record over the producer's or the broker's size limit."""


async def _kafka_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    failures = getattr(exc, "failures", ())
    if failures and all(failure.code in _TOO_LARGE for failure in failures):
        # Not an outage: retrying the same request cannot help, and nothing was accepted.
        return _json(
            413,
            "Expected a request whose command fits a Kafka record, but it is larger than Kafka "
            f"accepts ({failures[0].reason}); send less data (large inputs belong in object "
            "storage, referenced by URL)",
        )
    log.warning("Kafka publish failed: %s", exc)
    return _json(
        503,
        "Kafka is unavailable: the request was not confirmed by the broker, so it may not have "
        f"been accepted; retry it (with the same Idempotency-Key where there is one). ({exc})",
    )


async def _service_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("service unavailable: %s", exc)
    return _json(503, str(exc))


async def _postgres_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("Postgres unavailable: %s", exc)
    return _json(503, f"Postgres is unavailable: {type(exc).__name__}: {exc}")


async def _read_model_missing(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("read model missing: %s", exc)
    return _json(
        503,
        "The read models are not there yet (is the projector running and has it migrated the "
        f"schema?): {str(exc).splitlines()[0]}",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DeliveryError, _kafka_unavailable)
    app.add_exception_handler(ServiceUnavailableError, _service_unavailable)
    app.add_exception_handler(PoolTimeout, _postgres_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _postgres_unavailable)
    app.add_exception_handler(psycopg.errors.UndefinedTable, _read_model_missing)
