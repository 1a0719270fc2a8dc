"""Decoding request bodies the API reads itself (workflow definitions in JSON or YAML, webhook
payloads), with errors in the same 422 shape as FastAPI's own."""

from __future__ import annotations

from typing import Any, Final

from api.errors import FieldIssue, RequestInvalidError
from foundation.parse_limits import ParseLimitError, load_json

__all__ = ["YAML_TYPES", "decode_body", "media_type"]

YAML_TYPES: Final = frozenset(
    {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
)


def media_type(content_type: str | None) -> str:
    """``"application/yaml; charset=utf-8"`` -> ``"application/yaml"``; missing -> JSON."""
    if not content_type:
        return "application/json"
    return content_type.split(";", 1)[0].strip().lower()


def decode_body(raw: bytes, content_type: str | None) -> Any:
    """The JSON value of ``raw``; 422 naming the problem otherwise."""
    kind = media_type(content_type)
    if kind != "application/json" and not kind.endswith("+json"):
        accepted = "application/json (or application/yaml where a definition is expected)"
        raise RequestInvalidError(
            [FieldIssue("", f"Expected content-type {accepted}, but got {kind!r}", "content_type")]
        )
    try:
        return load_json(raw)
    except ParseLimitError as exc:
        raise RequestInvalidError([FieldIssue("", str(exc), exc.kind)]) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalidError(
            [FieldIssue("", f"Expected a JSON body, but it does not parse: {exc}", "json_invalid")]
        ) from exc
