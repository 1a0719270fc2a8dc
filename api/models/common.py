"""Error bodies shared by every resource (documented in OpenAPI ``responses``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["ERRORS", "ErrorMessage", "ValidationErrorBody", "ValidationIssue", "errors"]


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
