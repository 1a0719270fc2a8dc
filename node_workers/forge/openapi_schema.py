"""OpenAPI schema objects -> self-contained JSON Schema 2020-12 (the artifact's schemas).

An artifact's schemas must stand alone (the worker validates against them with no OpenAPI
document around), so every ``$ref`` to ``#/components/schemas/NAME`` becomes ``#/$defs/NAME``
and the referenced schemas (transitively) are copied into ``$defs``. OpenAPI 3.0's dialect is
rewritten into 2020-12: ``nullable`` becomes a type union, boolean ``exclusiveMinimum`` /
``exclusiveMaximum`` become numbers, ``example`` becomes ``examples``; the OpenAPI-only keywords
(``discriminator``, ``xml``, ``externalDocs``) are dropped. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from foundation.errors import NonRetryableError

__all__ = [
    "OpenApiError",
    "OperationNotFoundError",
    "SchemaConverter",
    "resolve_ref",
    "sample_value",
]

_COMPONENT_SCHEMAS: Final = "#/components/schemas/"
_OPENAPI_ONLY: Final = frozenset({"discriminator", "xml", "externalDocs"})
# Keywords whose value is one schema, a list of schemas, or a map of name -> schema: the only
# places the walk descends, so a property *named* "nullable" or "example" is never rewritten.
_ONE: Final = frozenset(
    {
        "items",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "propertyNames",
        "additionalProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "contentSchema",
        "additionalItems",
    }
)
_LIST: Final = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_MAP: Final = frozenset({"properties", "patternProperties", "dependentSchemas", "$defs"})


class OpenApiError(NonRetryableError):
    """The document cannot be turned into a node; the message names the field path
    (``paths./pets/{petId}.get.responses.200: ...``) and, where it helps, what there is."""

    error_class = "OpenApiUnsupported"


class OperationNotFoundError(OpenApiError):
    """No operation has the operationId asked for; the message lists the ones there are."""

    error_class = "OperationNotFound"


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def resolve_ref(document: dict[str, Any], ref: str, where: str) -> Any:
    """The object a local ``$ref`` (``#/components/...``) points at; :class:`OpenApiError`
    naming ``where`` for an external or dangling one."""
    if not ref.startswith("#/"):
        raise OpenApiError(
            f"{where}.$ref: Expected a local reference ('#/components/...'), but got {ref!r} "
            "(external references are not supported: bundle the document first)"
        )
    node: Any = document
    for token in ref[2:].split("/"):
        key = _unescape(token)
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise OpenApiError(f"{where}.$ref: {ref!r} points at nothing in the document")
    return node


@dataclass
class SchemaConverter:
    """Converts the schemas of one artifact schema (input or output), collecting the component
    schemas they reference; :meth:`finish` adds them as ``$defs``."""

    document: dict[str, Any]
    openapi_30: bool
    defs: dict[str, Any] = field(default_factory=dict)
    _pending: list[str] = field(default_factory=list)

    def convert(self, schema: Any, where: str) -> Any:
        if isinstance(schema, bool):
            return schema
        if not isinstance(schema, dict):
            raise OpenApiError(
                f"{where}: Expected a schema object, but got {type(schema).__name__}"
            )
        if "$ref" in schema:
            ref = self._ref(str(schema["$ref"]), where)
            if self.openapi_30:  # 3.0: a $ref's siblings are ignored (only nullable is honoured)
                out: dict[str, Any] = {"$ref": ref}
                return {"anyOf": [out, {"type": "null"}]} if schema.get("nullable") else out
        out = {}
        for key, value in schema.items():
            if key in _OPENAPI_ONLY or key == "nullable" or key.startswith("x-"):
                continue
            if key == "$ref":
                out[key] = self._ref(str(value), where)
            elif key in _ONE:
                out[key] = self.convert(value, f"{where}.{key}")
            elif key in _LIST and isinstance(value, list):
                out[key] = [self.convert(v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
            elif key in _MAP and isinstance(value, dict):
                out[key] = {k: self.convert(v, f"{where}.{key}.{k}") for k, v in value.items()}
            elif key == "example":
                out.setdefault("examples", [value])
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                if value and bound in schema:
                    out[key] = schema[bound]
            else:
                out[key] = value
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if schema.get(key) is True:  # 3.0's boolean form: the bound itself is exclusive
                out.pop(bound, None)
        if self.openapi_30 and schema.get("nullable") is True:
            return _nullable(out)
        return out

    def _ref(self, ref: str, where: str) -> str:
        if not ref.startswith(_COMPONENT_SCHEMAS):
            raise OpenApiError(
                f"{where}.$ref: Expected a reference to '#/components/schemas/...', but got {ref!r}"
            )
        name = _unescape(ref[len(_COMPONENT_SCHEMAS) :].split("/", 1)[0])
        if name not in self.defs and name not in self._pending:
            resolve_ref(self.document, _COMPONENT_SCHEMAS + name.replace("/", "~1"), where)
            self._pending.append(name)
        return "#/$defs/" + ref[len(_COMPONENT_SCHEMAS) :]

    def finish(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with the 2020-12 dialect and every referenced component in ``$defs``."""
        while self._pending:
            name = self._pending.pop(0)
            self.defs[name] = None  # placeholder: a cycle must not queue the name again
            target = resolve_ref(self.document, _COMPONENT_SCHEMAS + name, "components.schemas")
            self.defs[name] = self.convert(target, f"components.schemas.{name}")
        out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        if self.defs:
            out["$defs"] = dict(sorted(self.defs.items()))
        return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        out = {**schema, "type": [kind, "null"]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    if isinstance(kind, list):
        return {**schema, "type": kind if "null" in kind else [*kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def sample_value(schema: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """A value that fits ``schema`` (a converted one), for a required parameter or a response
    that has no example: examples first, then defaults, then the simplest value of the type."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "$ref" in schema and str(schema["$ref"]).startswith("#/$defs/"):
        name = _unescape(str(schema["$ref"])[len("#/$defs/") :].split("/", 1)[0])
        return sample_value(defs.get(name), defs, depth + 1)
    for key in ("const",):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("allOf", "oneOf", "anyOf"):
        if schema.get(key):
            if key == "allOf":
                merged: dict[str, Any] = {}
                for part in schema[key]:
                    value = sample_value(part, defs, depth + 1)
                    if isinstance(value, dict):
                        merged.update(value)
                return merged
            return sample_value(schema[key][0], defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        required = schema.get("required", [])
        props = schema.get("properties", {})
        return {name: sample_value(props.get(name, {}), defs, depth + 1) for name in required}
    if kind == "array":
        return [sample_value(schema.get("items", {}), defs, depth + 1)] * schema.get("minItems", 0)
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "string":
        return _sample_string(schema)
    return None


def _sample_string(schema: dict[str, Any]) -> str:
    formats = {
        "date": "2024-01-31",
        "date-time": "2024-01-31T12:00:00Z",
        "email": "someone@example.com",
        "uuid": "00000000-0000-4000-8000-000000000000",
        "uri": "https://example.com/",
    }
    text = formats.get(str(schema.get("format")), "x")
    return text.ljust(int(schema.get("minLength", 0)), "x")
