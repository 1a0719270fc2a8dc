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

Secrets (docs/secrets.md): ``{{ secrets.NAME }}`` is not an expression over the context. The
scheduler never has secret values, so rendering *keeps the placeholder text* (the values of the
other expressions in the same string are rendered around it) and the worker resolves it just
before the node runs. Because the worker resolves every placeholder it finds, rendered *data*
(run inputs, step outputs) must never contain placeholder text: it would make the worker resolve
a secret the definition never asked for (template injection). A render whose result holds more
placeholders than the definition wrote fails with :class:`SecretInjectionError`.
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

from foundation.errors import NonRetryableError

__all__ = [
    "SECRET_NAME",
    "SECRET_PLACEHOLDER",
    "ExpressionSyntaxError",
    "Reference",
    "SecretInjectionError",
    "TemplateError",
    "compile_expression",
    "evaluate",
    "evaluate_when",
    "expression_references",
    "is_truthy",
    "iter_expressions",
    "render_params",
    "render_template",
    "secret_name",
    "secret_placeholders",
    "template_expressions",
]

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

SECRET_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
"""What a secret may be called: it names a file and an environment variable, so no dots,
slashes or lowercase (``API_TOKEN``, ``DB_PASSWORD_2``)."""

SECRET_PLACEHOLDER = re.compile(r"\{\{\s*secrets\.([A-Z][A-Z0-9_]*)\s*\}\}")
"""``{{ secrets.NAME }}`` as text: what the scheduler keeps and the worker resolves (group 1 is
the name). The one definition both sides use, so they can never disagree on what counts."""

_SECRET_EXPRESSION = re.compile(r"secrets\.([A-Z][A-Z0-9_]*)")

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


class SecretInjectionError(TemplateError):
    """Rendered data would carry ``{{ secrets.NAME }}`` text the definition did not write.

    The worker resolves every placeholder in its params, so letting such data through would hand
    a secret to whoever controls a run input or an upstream response. Non-retryable: the same
    data renders the same way.
    """

    error_class = "SecretInjection"


class ExpressionSyntaxError(NonRetryableError):
    """An expression does not parse; the message says where."""

    error_class = "ExpressionSyntaxError"


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


def secret_name(expression: str) -> str | None:
    """``NAME`` if the (stripped) expression is exactly ``secrets.NAME``, else ``None``."""
    match = _SECRET_EXPRESSION.fullmatch(expression.strip())
    return match.group(1) if match else None


def secret_placeholders(text: str) -> list[str]:
    """Names of the ``{{ secrets.NAME }}`` placeholders in ``text``, in order (with repeats)."""
    return SECRET_PLACEHOLDER.findall(text)


def _refuse_placeholders(value: Any, path: str) -> None:
    """Rendered data must not contain placeholder text (keys are never resolved, only values)."""
    if isinstance(value, str):
        names = secret_placeholders(value)
        if names:
            raise SecretInjectionError(path, _injection_message(names))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_placeholders(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_placeholders(item, f"{path}[{index}]")


def _injection_message(names: list[str]) -> str:
    listed = ", ".join(sorted(set(names)))
    return (
        f"rendered data contains secret placeholder text ({listed}) that the definition did "
        "not write; refusing it, because the worker would resolve it as a secret"
    )


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
    """Render one string: exactly one ``{{ expr }}`` (and nothing else) keeps the JSON type.

    ``{{ secrets.NAME }}`` placeholders are kept as written (the worker resolves them); the
    other expressions of the string are rendered around them. Raises
    :class:`SecretInjectionError` when the rendered result holds placeholders it did not write.
    """
    try:
        exprs = template_expressions(text)
    except ExpressionSyntaxError as exc:
        raise TemplateError(path, str(exc)) from exc
    if len(exprs) == 1 and not _TEMPLATE.sub("", text).strip():
        if secret_name(exprs[0]) is not None:
            return text
        value = evaluate(exprs[0], context, path)
        _refuse_placeholders(value, path)
        return value

    kept: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        name = secret_name(expression)
        if name is not None:
            kept.append(name)
            return match.group(0)
        value = evaluate(expression, context, path)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    rendered = _TEMPLATE.sub(substitute, text)
    # Placeholders cannot overlap (their text has no braces inside), so equal name lists mean
    # the only placeholders left are the ones the definition wrote, where it wrote them.
    found = secret_placeholders(rendered)
    if found != kept:
        extra = list(found)
        for name in kept:
            if name in extra:
                extra.remove(name)
        raise SecretInjectionError(path, _injection_message(extra or found))
    return rendered


def render_params(params: Any, context: Mapping[str, Any], path: str = "params") -> Any:
    """Render every template in a JSON value; non-template values are returned unchanged."""
    if isinstance(params, str):
        return render_template(params, context, path) if "{{" in params else params
    if isinstance(params, Mapping):
        return {key: render_params(item, context, f"{path}.{key}") for key, item in params.items()}
    if isinstance(params, list | tuple):
        return [render_params(item, context, f"{path}[{i}]") for i, item in enumerate(params)]
    return params
