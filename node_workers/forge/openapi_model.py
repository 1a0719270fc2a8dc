"""What the OpenAPI forge reads out of one operation: the code generator's whole input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Auth", "Operation", "Parameter"]


@dataclass(frozen=True)
class Parameter:
    name: str
    location: str
    """path, query, header or cookie."""
    required: bool
    schema: Any
    """Converted to JSON Schema 2020-12."""
    examples: tuple[Any, ...]
    explode: bool = True
    """A query array is sent as repeated keys (``form``, explode) or comma-joined."""


@dataclass(frozen=True)
class Auth:
    kind: str
    """apiKey, bearer or basic."""
    location: str
    """header, query or cookie (bearer and basic: header)."""
    name: str
    """The header, query key or cookie carrying the credential."""
    secret: str
    """The secret the code reads with ``ctx.secret`` (basic: ``user:password``)."""
    scheme_name: str


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    summary: str
    title: str
    base_url: str
    egress: str
    parameters: tuple[Parameter, ...]
    has_body: bool
    body_required: bool
    success_status: int
    output_wrapped: bool
    """The response is not always a JSON object: the node returns ``{"body": ...}``."""
    has_output: bool
    """False when the success response has no content: the node returns ``{}``."""
    auth: Auth | None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
