"""Error bodies shared by every resource (documented in OpenAPI ``responses``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, Field

__all__ = [
    "ERRORS",
    "PG_INT_MAX",
    "ErrorMessage",
    "IsoDateTime",
    "StrictFraction",
    "ValidationErrorBody",
    "ValidationIssue",
    "VersionNumber",
    "errors",
]

PG_INT_MAX: Final = 2**31 - 1
"""Largest Postgres ``integer``: the read models store versions (and semver parts) as one."""

VersionNumber = Annotated[int, Field(strict=True, ge=1, le=PG_INT_MAX)]
"""A workflow version: an integer the read model can hold (``true`` is not 1, 2**31 is 422)."""


def _iso_text(value: Any) -> Any:
    # pydantic reads numbers (and numeric strings) as Unix timestamps; the document says
    # ISO 8601 text, so "12.0" is a mistake to report, not 1970-01-01T00:00:12Z.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError(f"Expected an ISO 8601 time (e.g. 2025-03-04T10:00:00Z), got {value!r}")
    return value


_NUMBER: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")

IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]
"""A time given as ISO 8601 text, never as a number."""

StrictFraction = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
"""A share in [0, 1]: a JSON number (``true`` is not 1.0), finite."""


class ErrorMessage(BaseModel):
    detail: str = Field(examples=["run '0b6e...' not found"])


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(
        description="Path of the offending field, starting with where it is (body, query, ...).",
        examples=[["body", "steps", "fetch", "needs", 0]],
    )
    msg: str = Field(examples=["Expected a step id of this workflow, but 'fetsh' is not one"])
    type: str = Field(examples=["workflow_invalid"])


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


def _error(description: str, model: type[BaseModel] = ErrorMessage) -> dict[str, Any]:
    return {"model": model, "description": description}


ERRORS: dict[str, dict[str, Any]] = {
    "401": _error("The webhook signature is missing or wrong"),
    "404": _error("The run, workflow or step does not exist (in the read model)"),
    "409": _error("The command was rejected by the scheduler, or an idempotency key was reused"),
    "422": _error("A field is invalid; `loc` is its path", ValidationErrorBody),
    "503": _error("Kafka or Postgres is unavailable; retry later"),
}
"""OpenAPI response docs by status; routes pick the ones they can return."""


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERRORS[str(code)] for code in codes}
