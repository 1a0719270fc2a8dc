"""CloudEvents sent to ``POST /v1/hooks/{workflow_id}`` (HTTP protocol binding; ADR 0053).

- **Structured mode**: ``Content-Type: application/cloudevents+json``; the body is the event.
- **Binary mode**: a ``ce-specversion`` header; the attributes are ``ce-*`` headers, the body is
  the data and ``Content-Type`` its ``datacontenttype``.

Parsing and validation are :mod:`processors.triggers.formats`' (the same rules as on the triggers
topic). Here only the HTTP parts: which request is a CloudEvent, a 422 whose ``loc`` names the
header or body field at fault, and the idempotency key. The path names the workflow (and its
signature secret), so ``subject`` and the type map do not route here. The event's ``source`` +
``id`` is the request's idempotency key: a redelivered event starts one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from api.bodies import media_type
from api.errors import FieldIssue, RequestInvalidError
from processors.triggers.formats import (
    CLOUDEVENTS_JSON,
    HTTP_BINDING,
    CloudEvent,
    TriggerFormatError,
    cloud_event_from_headers,
    cloud_event_from_json,
    json_value,
)

__all__ = ["HookEvent", "hook_cloud_event"]

_ISSUE: Final = "cloudevent_invalid"
_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "subject", "dataschema", "time"}
)


@dataclass(frozen=True, slots=True)
class HookEvent:
    event: CloudEvent
    inputs_loc: tuple[str, ...]
    """Where the data sits in the request, for input errors: ``body.data`` or ``body``."""

    @property
    def payload(self) -> Any:
        return self.event.payload

    @property
    def key(self) -> str:
        return self.event.idempotency_key


def hook_cloud_event(
    headers: Mapping[str, str], raw: bytes, idempotency_key: str | None
) -> HookEvent | None:
    """The request as a CloudEvent, ``None`` when it is not one; 422 when it is a bad one."""
    structured = media_type(headers.get("content-type")) == CLOUDEVENTS_JSON
    if not structured and HTTP_BINDING.header("specversion") not in headers:
        return None
    try:
        if structured:
            event = cloud_event_from_json(json_value(raw, "the CloudEvent body"))
        else:
            # Starlette decoded the header bytes as latin-1; formats wants them as sent.
            named = {name.lower(): value.encode("latin-1") for name, value in headers.items()}
            event = cloud_event_from_headers(named, raw, HTTP_BINDING)
    except TriggerFormatError as exc:
        issue = FieldIssue("", str(exc), _ISSUE)
        raise RequestInvalidError([issue], _loc(exc.field, structured)) from exc
    if idempotency_key is not None and idempotency_key != event.idempotency_key:
        raise RequestInvalidError(
            [
                FieldIssue(
                    "Idempotency-Key",
                    f"Expected no Idempotency-Key with a CloudEvent, or its source + ':' + id "
                    f"({event.idempotency_key!r}), but got {idempotency_key!r}",
                    "idempotency_key_conflict",
                )
            ],
            ("header",),
        )
    return HookEvent(event, ("body", "data") if structured else ("body",))


def _loc(field: str, structured: bool) -> tuple[str, ...]:
    if structured:
        return ("body", field) if field else ("body",)
    if field in _ATTRIBUTES:
        return ("header", HTTP_BINDING.header(field))
    if field in ("datacontenttype", HTTP_BINDING.content_type_header):
        return ("header", HTTP_BINDING.content_type_header)
    if field.startswith(HTTP_BINDING.header_prefix):
        return ("header", field)
    return ("body",)  # the data
