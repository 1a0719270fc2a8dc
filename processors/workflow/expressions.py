"""Expressions and templates: JMESPath over the run context, never ``eval``.

The context every expression sees::

    {"inputs": {...},
     "steps": {"<step id>": {"output": ..., "status": "succeeded|failed|skipped|...",
                             "attempt": 1}},
     "run": {"id": ..., "workflow_id": ..., "workflow_version": ...}}

A string that is exactly ``"{{ expr }}"`` renders to the raw JSON value of ``expr``; any other
string has each ``{{ expr }}`` replaced by the value as text (strings as-is, everything else as
JSON). ``when`` is a bare expression (no braces) tested for JMESPath truthiness: ``false``,
``null``, ``""``, ``[]`` and ``{}`` are false; every number, ``0`` included, is true.

References are found by walking the JMESPath AST, so validation can say "unknown input 'x'" or
"step 'a' is not upstream of 'b'" before a run ever starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath.parser import ParsedResult

from reflux.errors import NonRetryableError

__all__ = [
    "ExpressionSyntaxError",
    "Reference",
    "TemplateError",
    "compile_expression",
    "evaluate",
    "evaluate_when",
    "expression_references",
    "is_truthy",
    "iter_expressions",
    "render_params",
    "render_template",
    "template_expressions",
]

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

# AST nodes whose first child is evaluated against the current node and the rest against its
# result: for these only the leading field chain names something in the root context.
_PATHISH = {
    "field",
    "subexpression",
    "index_expression",
    "projection",
    "filter_projection",
    "value_projection",
    "flatten",
}


class TemplateError(NonRetryableError):
    """An expression failed at run time (bad type for a function, unloadable payload...).

    Non-retryable: the same inputs give the same failure, so the step fails at once.
    """

    error_class = "TemplateError"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.detail = message


class ExpressionSyntaxError(ValueError):
    """An expression does not parse; the message says where."""


@dataclass(frozen=True)
class Reference:
    """A root-relative reference: ``inputs.x`` -> ("inputs", "x"), ``run`` -> ("run", None)."""

    root: str
    name: str | None = None


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> ParsedResult:
    """Parse once per distinct text; raises :class:`ExpressionSyntaxError`."""
    text = expression.strip()
    if not text:
        raise ExpressionSyntaxError("empty expression")
    try:
        return jmespath.compile(text)
    except jmespath_errors.JMESPathError as exc:
        raise ExpressionSyntaxError(f"invalid expression {text!r}: {_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    """jmespath's message without its multi-line caret drawing, plus the position."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for prefix in ("Invalid jmespath expression: ", "Bad jmespath expression: "):
        first = first.removeprefix(prefix)
    first = first.rstrip(":").strip() or type(exc).__name__
    position = getattr(exc, "lex_position", None)
    return f"{first.lower()} at position {position}" if position is not None else first


def expression_references(expression: str) -> list[Reference]:
    """Root-context references of an expression, in order of appearance (deduplicated)."""
    chains: list[tuple[str, ...]] = []
    _walk(compile_expression(expression).parsed, chains)
    refs: list[Reference] = []
    for chain in chains:
        ref = Reference(chain[0], chain[1] if len(chain) > 1 else None)
        if ref not in refs:
            refs.append(ref)
    return refs


def _walk(node: Mapping[str, Any], out: list[tuple[str, ...]]) -> None:
    kind = node["type"]
    children = node.get("children", [])
    if kind in _PATHISH:
        chain = _chain(node)
        if chain:
            out.append(tuple(chain[:2]))
        elif children:
            _walk(children[0], out)
        return
    if kind == "pipe":
        _walk(children[0], out)  # the right side sees the left's result, not the root
        return
    if kind == "expref":
        return  # &expr is applied to elements by sort_by/max_by..., not to the root
    for child in children:
        _walk(child, out)


def _chain(node: Mapping[str, Any]) -> list[str]:
    """Leading literal field names of a path expression (``steps.a.output[0]`` -> steps, a...)."""
    kind = node["type"]
    children = node.get("children", [])
    if kind == "field":
        return [str(node["value"])]
    if kind == "subexpression":
        chain = _chain(children[0])
        if not chain:
            return []
        for child in children[1:]:
            if child["type"] == "field":
                chain.append(str(child["value"]))
            else:
                chain.extend(_chain(child["children"][0]) if child["type"] in _PATHISH else [])
                break
        return chain
    if kind in _PATHISH and children:
        return _chain(children[0])
    return []


def template_expressions(text: str) -> list[str]:
    """The ``{{ expr }}`` parts of a string; raises on an unclosed ``{{``."""
    exprs = [m.group(1).strip() for m in _TEMPLATE.finditer(text)]
    if "{{" in _TEMPLATE.sub("", text):
        raise ExpressionSyntaxError("unclosed '{{' in template (expected '{{ expr }}')")
    return exprs


def iter_expressions(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every ``(path, expression)`` in a JSON value's templates (keys are never templates)."""
    if isinstance(value, str):
        for expr in template_expressions(value):
            yield path, expr
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from iter_expressions(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from iter_expressions(item, f"{path}[{index}]")


def evaluate(expression: str, context: Mapping[str, Any], path: str) -> Any:
    """The JSON value of an expression; runtime failures become :class:`TemplateError`."""
    try:
        compiled = compile_expression(expression)
    except ExpressionSyntaxError as exc:
        raise TemplateError(path, str(exc)) from exc
    try:
        return compiled.search(context)
    except jmespath_errors.JMESPathError as exc:
        raise TemplateError(path, f"{expression!r} failed: {_one_line(exc)}") from exc


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness (unlike Python, 0 is true)."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def evaluate_when(expression: str, context: Mapping[str, Any], path: str = "when") -> bool:
    return is_truthy(evaluate(expression, context, path))


def render_template(text: str, context: Mapping[str, Any], path: str) -> Any:
    """Render one string: exactly one ``{{ expr }}`` (and nothing else) keeps the JSON type."""
    try:
        exprs = template_expressions(text)
    except ExpressionSyntaxError as exc:
        raise TemplateError(path, str(exc)) from exc
    if len(exprs) == 1 and not _TEMPLATE.sub("", text).strip():
        return evaluate(exprs[0], context, path)

    def substitute(match: re.Match[str]) -> str:
        value = evaluate(match.group(1).strip(), context, path)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TEMPLATE.sub(substitute, text)


def render_params(params: Any, context: Mapping[str, Any], path: str = "params") -> Any:
    """Render every template in a JSON value; non-template values are returned unchanged."""
    if isinstance(params, str):
        return render_template(params, context, path) if "{{" in params else params
    if isinstance(params, Mapping):
        return {key: render_params(item, context, f"{path}.{key}") for key, item in params.items()}
    if isinstance(params, list | tuple):
        return [render_params(item, context, f"{path}[{i}]") for i, item in enumerate(params)]
    return params
