"""Typed errors of the SDK client: one class per kind of refusal the API gives.

The API answers errors as ``{"detail": ...}`` (api/errors.py): a string for most statuses, and
for 422 a list of ``{"loc": [...], "msg": ..., "type": ...}`` whose ``loc`` names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from foundation.errors import RefluxError

__all__ = [
    "Conflict",
    "FieldProblem",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "RefluxApiError",
    "Unauthorized",
    "Unavailable",
    "raise_for_response",
]


class RefluxApiError(RefluxError):
    """The API refused a request: ``status`` is the HTTP status, ``detail`` the API's detail."""

    error_class = "RefluxApiError"

    def __init__(self, status: int, detail: Any, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(f"{method} {path} -> {status}: {_describe(detail)}".strip())


class NotFound(RefluxApiError):  # noqa: N818  the API's status names
    error_class = "NotFound"


class Conflict(RefluxApiError):  # noqa: N818  the API's status names
    error_class = "Conflict"


class Unauthorized(RefluxApiError):  # noqa: N818  the API's status names
    error_class = "Unauthorized"


class Forbidden(RefluxApiError):  # noqa: N818  the API's status names
    error_class = "Forbidden"


class Unavailable(RefluxApiError):  # noqa: N818  the API's status names
    error_class = "Unavailable"


class RateLimited(RefluxApiError):  # noqa: N818  the API's status names
    """429: ``retry_after`` is the API's ``Retry-After`` in seconds (None when it gave none)."""

    error_class = "RateLimited"

    def __init__(
        self,
        status: int,
        detail: Any,
        *,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, detail, method=method, path=path)
        self.retry_after = retry_after


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: ``path`` like ``body.steps[1].needs[0]``."""

    path: str
    message: str
    type: str = ""


class Invalid(RefluxApiError):  # noqa: N818  the API's status names
    """422 (or 400): ``problems`` lists each field path and what is wrong with it."""

    error_class = "Invalid"

    def __init__(self, status: int, detail: Any, *, method: str = "", path: str = "") -> None:
        super().__init__(status, detail, method=method, path=path)
        self.problems: list[FieldProblem] = _problems(detail)

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.problems]


_BY_STATUS: dict[int, type[RefluxApiError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Invalid,
    503: Unavailable,
}


def format_loc(loc: list[Any]) -> str:
    """``["body", "steps", 1, "needs", 0]`` -> ``body.steps[1].needs[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problems(detail: Any) -> list[FieldProblem]:
    if not isinstance(detail, list):
        return [FieldProblem("", str(detail))]
    return [
        FieldProblem(
            format_loc(list(item.get("loc") or [])),
            str(item.get("msg", "")),
            str(item.get("type", "")),
        )
        if isinstance(item, dict)
        else FieldProblem("", str(item))
        for item in detail
    ]


def _describe(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{p.path}: {p.message}" if p.path else p.message for p in _problems(detail)
        )
    return str(detail)


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: rare from this API; the caller backs off its own way


def raise_for_response(response: httpx.Response) -> None:
    """Raise the typed error of a 4xx/5xx answer; do nothing for a success."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text
    where = {"method": response.request.method, "path": response.request.url.path}
    if response.status_code == 429:
        raise RateLimited(429, detail, retry_after=_retry_after(response), **where)
    cls = _BY_STATUS.get(response.status_code, RefluxApiError)
    raise cls(response.status_code, detail, **where)
