"""Params checked against a node version's input JSON Schema (its manifest's ``input_schema``).

Used by the API before it publishes a graph mutation (docs/decisions/0022, addendum). The schema
is validated with ``jsonschema`` for the draft it declares (``$schema``), Draft 2020-12 when it
declares none (what pydantic's ``model_json_schema`` writes). Three deliberate departures from a
plain ``validate(params, schema)``:

- **Templates are known only at run time.** A value that is a string holding ``{{`` is rendered
  at dispatch and may become any type, so every keyword passes on a template value: the
  validator class is extended so that each keyword's function returns no error when the
  instance it looks at is a template (its type, enum, pattern, length, ``$ref``, ... are not
  checked, and an ``anyOf`` branch holding one passes). A template still counts as present for
  ``required``, and the keys around it (unknown parameters) are checked. Params that are
  themselves one template (``"{{ inputs.params }}"``) pass whole.
- **A parameter may be given by its Python field name.** Node models accept both the alias the
  schema documents (``json`` of ``http.request``) and the field's name (``json_body``); the
  manifest marks an aliased property with :data:`FIELD_NAME_KEY` and the check reads the Python
  name as the alias (top-level parameters only).
- **``format`` is an annotation, not checked**: the worker's model validates formats (URLs,
  e-mail addresses) on the rendered params.

Type checks are the schema's: ``"5"`` for an ``integer`` is refused here even though the
worker's model would coerce it -- the schema is the published contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for

__all__ = ["FIELD_NAME_KEY", "ParamIssue", "is_template", "param_issues"]

_KeywordFn = Callable[[Validator, Any, Any, Mapping[str, Any]], Iterator[ValidationError] | None]

FIELD_NAME_KEY: Final = "x-reflux-field-name"
"""Set by ``Node.manifest()`` on an input property whose name is a pydantic alias: the Python
field name the node's model also accepts."""


@dataclass(frozen=True, slots=True)
class ParamIssue:
    """One refusal: ``path`` inside the params (``("headers", "x")``), the validator's message,
    and the JSON Schema keyword that failed (``type``, ``required``, ``additionalProperties``)."""

    path: tuple[str | int, ...]
    message: str
    keyword: str


def is_template(value: Any) -> bool:
    """A value rendered at dispatch (``{{ steps.a.output }}``, or text with one inside)."""
    return isinstance(value, str) and "{{" in value


def param_issues(schema: Mapping[str, Any], params: Any) -> list[ParamIssue]:
    """What ``schema`` refuses in ``params``, templates aside (see the module docstring).

    A schema that is not valid JSON Schema checks nothing: a node's broken manifest must not
    block every mutation of steps that use it (the worker still validates).
    """
    if is_template(params):
        return []
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except SchemaError:
        return []
    instance, original_names = _by_alias(schema, params)
    issues: list[ParamIssue] = []
    for error in _template_blind(cls)(dict(schema)).iter_errors(instance):
        for issue in _issues_of(error):
            path = issue.path
            if path and isinstance(path[0], str) and path[0] in original_names:
                path = (original_names[path[0]], *path[1:])
            issues.append(ParamIssue(path, issue.message, issue.keyword))
    return issues


def _by_alias(schema: Mapping[str, Any], params: Any) -> tuple[Any, dict[str, str]]:
    """``params`` with Python field names renamed to the schema's aliases, and the renames."""
    properties = schema.get("properties")
    if not isinstance(params, Mapping) or not isinstance(properties, Mapping):
        return params, {}
    aliases = {
        prop[FIELD_NAME_KEY]: alias
        for alias, prop in properties.items()
        if isinstance(prop, Mapping) and isinstance(prop.get(FIELD_NAME_KEY), str)
    }
    renamed: dict[str, Any] = {}
    original: dict[str, str] = {}
    for key, value in params.items():
        alias = aliases.get(key)
        if alias is not None and alias not in params:
            renamed[alias] = value
            original[alias] = key
        else:
            renamed[key] = value
    return renamed, original


def _issues_of(error: ValidationError) -> Iterable[ParamIssue]:
    path = tuple(error.absolute_path)
    keyword = str(error.validator)
    if keyword == "required" and isinstance(error.instance, Mapping):
        # One error per missing name; point at the missing parameter itself.
        for name in _names(error.validator_value):
            if name not in error.instance and error.message.startswith(repr(name)):
                yield ParamIssue((*path, name), "a required parameter", keyword)
                return
    where = error.schema if isinstance(error.schema, Mapping) else {}
    if keyword == "additionalProperties" and isinstance(error.instance, Mapping):
        known = _names((where.get("properties") or {}).keys())
        patterns = where.get("patternProperties") or {}
        if not patterns:  # with patterns, which key is extra is the validator's business
            listed = ", ".join(sorted(known))
            for name in error.instance:
                if name not in known:
                    yield ParamIssue((*path, name), f"not a parameter (known: {listed})", keyword)
            return
    if error.context:
        # anyOf/oneOf: the complaint of the alternative that fits the value's type best, not
        # "is not valid under any of the given schemas" (nor "is not of type 'null'").
        fitting = [e for e in error.context if e.relative_path or e.validator != "type"]
        best = best_match(fitting or error.context)
        if fitting:
            yield ParamIssue(tuple(best.absolute_path), best.message, str(best.validator))
        else:
            types = [repr(e.validator_value) for e in error.context]
            message = f"{error.instance!r} is not of type {' or '.join(types)}"
            yield ParamIssue(path, message, "type")
        return
    yield ParamIssue(path, error.message, keyword)


def _names(values: Any) -> list[str]:
    return [v for v in values if isinstance(v, str)] if isinstance(values, Iterable) else []


_BLIND: dict[type[Validator], type[Validator]] = {}


def _template_blind(cls: type[Validator]) -> type[Validator]:
    """``cls`` whose every keyword passes on a template value (one class per draft, cached)."""
    found = _BLIND.get(cls)
    if found is None:
        keywords = {name: _skip_templates(fn) for name, fn in cls.VALIDATORS.items()}
        found = extend(cls, keywords)  # type: ignore[no-untyped-call]  # untyped in the stubs
        _BLIND[cls] = found
    return found


def _skip_templates(fn: _KeywordFn) -> _KeywordFn:
    def keyword(
        validator: Validator, value: Any, instance: Any, schema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        if is_template(instance):
            return iter(())
        return fn(validator, value, instance, schema) or iter(())

    return keyword
