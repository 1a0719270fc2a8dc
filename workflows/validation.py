"""Parse and validate workflow definitions and run inputs, reporting every problem with its path.

Paths look like ``steps[2].needs[0]``, ``steps[1].params.url``, ``inputs.count.type``; messages
say what is wrong and, where it helps, what would be right ("unknown step 'fecth' (known: fetch,
parse)"). Two phases: the pydantic model checks structure; :func:`check_definition` then checks
the graph as a whole (ids, needs, cycles, node catalog, expressions).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from foundation.errors import NonRetryableError
from foundation.parse_limits import ParseLimitError, load_yaml
from workflows.expressions import (
    SECRET_NAME,
    ExpressionSyntaxError,
    Reference,
    compile_expression,
    expression_references,
    iter_expressions,
    secret_name,
)
from workflows.meta import MAP_NODE, check_meta_step, is_meta_node, map_inner_node
from workflows.meta_children import (
    LOOP_UNTIL_ROOTS,
    check_child_run_step,
    is_child_run_node,
    loop_scoped_roots,
)
from workflows.model import (
    CacheSpec,
    Defaults,
    InputSpec,
    RetrySpec,
    StepDefinition,
    WorkflowDefinition,
)
from workflows.node_catalog import NodeCatalogView
from workflows.semver import NodeRef, parse_node_ref

__all__ = [
    "RUN_FIELDS",
    "FieldError",
    "WorkflowValidationError",
    "build_definition",
    "check_definition",
    "check_step_nodes",
    "json_type_name",
    "load_source",
    "merge_step_defaults",
    "parse_workflow",
    "type_mismatch",
    "validate_inputs",
]

RUN_FIELDS = ("id", "workflow_id", "workflow_version")
"""Names under ``run.`` in the expression context."""

ROOT_PATH = "$"


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class WorkflowValidationError(NonRetryableError):
    """A definition (or run inputs) is invalid; ``errors`` lists every problem found."""

    error_class = "WorkflowValidation"

    def __init__(self, errors: Sequence[FieldError], *, subject: str = "workflow") -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__(f"invalid {subject}: " + "; ".join(str(e) for e in self.errors))


# -- loading ------------------------------------------------------------------------------------


def load_source(source: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """YAML or JSON text (JSON is YAML) or an already-parsed mapping -> a plain dict."""
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, str | bytes):  # an already-parsed JSON body that is no object
        raise WorkflowValidationError(
            [FieldError(ROOT_PATH, f"expected a mapping at the top level, got {_kind(source)}")]
        )
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WorkflowValidationError(
                [FieldError(ROOT_PATH, f"not UTF-8 text: {exc}")]
            ) from exc
    try:
        data = load_yaml(source)
    except ParseLimitError as exc:
        raise WorkflowValidationError([FieldError(ROOT_PATH, str(exc))]) from exc
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise WorkflowValidationError(
            [FieldError(ROOT_PATH, f"not valid YAML/JSON{where}: {problem}")]
        ) from exc
    if not isinstance(data, dict):
        raise WorkflowValidationError(
            [FieldError(ROOT_PATH, f"expected a mapping at the top level, got {_kind(data)}")]
        )
    return data


def _kind(value: Any) -> str:
    return "nothing" if value is None else json_type_name(value)


# -- structure (pydantic) -----------------------------------------------------------------------


def merge_step_defaults(step: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A raw step with the workflow's raw ``defaults`` applied (retry/cache merged field by field).

    Applied before the model is built, so a step's explicit value always wins and the canonical
    form carries each step's effective policy.
    """
    merged = dict(step)
    for key in ("retry", "cache"):
        default = defaults.get(key)
        if isinstance(default, Mapping):
            own = merged.get(key)
            if own is None:
                merged[key] = dict(default)
            elif isinstance(own, Mapping):
                merged[key] = {**default, **own}
    for key in ("timeout", "queue_timeout"):
        if defaults.get(key) is not None and key not in merged:
            merged[key] = defaults[key]
    return merged


def build_definition(raw: Mapping[str, Any]) -> WorkflowDefinition:
    """Structural validation only; raises :class:`WorkflowValidationError`."""
    data = dict(raw)
    defaults = data.get("defaults")
    if isinstance(defaults, Mapping):
        try:
            Defaults.model_validate(defaults)
        except ValidationError as exc:
            raise WorkflowValidationError(_pydantic_errors(exc, prefix=("defaults",))) from exc
        steps = data.get("steps")
        if isinstance(steps, list):
            data["steps"] = [
                merge_step_defaults(step, defaults) if isinstance(step, Mapping) else step
                for step in steps
            ]
    try:
        return WorkflowDefinition.model_validate(data)
    except ValidationError as exc:
        raise WorkflowValidationError(_pydantic_errors(exc)) from exc


def _format_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or ROOT_PATH


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc`` (for "allowed fields" hints)."""
    loc = tuple(loc)
    if loc == ():
        return WorkflowDefinition
    if loc[0] == "steps" and len(loc) == 2:
        return StepDefinition
    if loc[0] == "inputs" and len(loc) == 2:
        return InputSpec
    if loc in (("defaults",),):
        return Defaults
    if loc[-1] == "retry":
        return RetrySpec
    if loc[-1] == "cache":
        return CacheSpec
    return None


def _pydantic_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[FieldError]:
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        kind = err["type"]
        message = str(err["msg"])
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
            message = f"unknown field {loc[-1]!r}{allowed}"
        elif kind == "missing":
            message = "required field is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        errors.append(FieldError(_format_path(loc), message))
    return errors


# -- the graph as a whole ------------------------------------------------------------------------


def check_definition(
    definition: WorkflowDefinition, *, node_catalog: NodeCatalogView | None = None
) -> list[FieldError]:
    """Every cross-field problem of a structurally valid definition (empty list = valid)."""
    errors: list[FieldError] = []
    if not definition.steps:
        errors.append(FieldError("steps", "a workflow needs at least one step"))
    errors += _check_inputs(definition)
    errors += _check_ids_and_needs(definition)
    errors += _check_cycles(definition)
    if node_catalog is not None:
        errors += _check_nodes(definition, node_catalog)
    errors += _check_expressions(definition)
    errors += _check_child_run_steps(definition)
    errors += _check_checkers(definition)
    return errors


def _check_checkers(definition: WorkflowDefinition) -> list[FieldError]:
    """``checker: true`` only where a worker runs the step: the worker reads the score."""
    return [
        FieldError(
            f"steps[{i}].checker",
            f"a checker step must run a node on a worker, but {step.node_name!r} is run by "
            "the scheduler; score its result in a step after it",
        )
        for i, step in enumerate(definition.steps)
        if step.checker and (is_meta_node(step.node_name) or is_child_run_node(step.node_name))
    ]


def _check_child_run_steps(definition: WorkflowDefinition) -> list[FieldError]:
    """meta.workflow / meta.loop params (workflows/meta_children.py), and a loop's ``until``."""
    errors: list[FieldError] = []
    for i, step in enumerate(definition.steps):
        if not is_child_run_node(step.node_name):
            continue
        for path, message in check_child_run_step(
            step.node_name, step.params, timeout=step.timeout, queue_timeout=step.queue_timeout
        ):
            errors.append(FieldError(f"steps[{i}].{path}", message))
        until = step.params.get("until") if isinstance(step.params, dict) else None
        if isinstance(until, str):
            errors += _check_expression(
                definition,
                f"steps[{i}].params.until",
                until,
                step.id,
                definition.upstream(step.id),
                secrets="when",
                extra_roots=LOOP_UNTIL_ROOTS,
            )
    return errors


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def type_mismatch(expected: str, value: Any) -> str | None:
    """None if ``value`` is a JSON value of the declared input type, else the problem."""
    actual = json_type_name(value)
    ok = {
        "string": actual == "string",
        "number": actual in ("integer", "number"),
        "integer": actual == "integer",
        "boolean": actual == "boolean",
        "object": actual == "object",
        "array": actual == "array",
    }[expected]
    return None if ok else f"expected {expected}, got {actual}"


def _check_inputs(definition: WorkflowDefinition) -> list[FieldError]:
    errors: list[FieldError] = []
    for name, spec in definition.inputs.items():
        if spec.default is not None:
            problem = type_mismatch(spec.type, spec.default)
            if problem:
                errors.append(FieldError(f"inputs.{name}.default", problem))
            if spec.required:
                errors.append(
                    FieldError(
                        f"inputs.{name}.required",
                        "an input with a default is never missing; drop 'required' or the default",
                    )
                )
    return errors


def _check_ids_and_needs(definition: WorkflowDefinition) -> list[FieldError]:
    errors: list[FieldError] = []
    first_index: dict[str, int] = {}
    for i, step in enumerate(definition.steps):
        if step.id in first_index:
            errors.append(
                FieldError(
                    f"steps[{i}].id",
                    f"duplicate step id {step.id!r} "
                    f"(first defined at steps[{first_index[step.id]}])",
                )
            )
        else:
            first_index[step.id] = i
    known = ", ".join(first_index)
    for i, step in enumerate(definition.steps):
        seen: set[str] = set()
        for j, need in enumerate(step.needs):
            path = f"steps[{i}].needs[{j}]"
            if need == step.id:
                errors.append(FieldError(path, f"step {step.id!r} cannot need itself"))
            elif need not in first_index:
                errors.append(FieldError(path, f"unknown step {need!r} (known: {known})"))
            elif need in seen:
                errors.append(FieldError(path, f"duplicate need {need!r}"))
            seen.add(need)
    return errors


def _check_cycles(definition: WorkflowDefinition) -> list[FieldError]:
    index = {step.id: i for i, step in reversed(list(enumerate(definition.steps)))}
    graph: dict[str, list[str]] = {}
    for step in definition.steps:  # a duplicate id is reported elsewhere; keep the first
        graph.setdefault(step.id, [n for n in step.needs if n in index and n != step.id])
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for need in graph.get(node, []):
            if state.get(need) == 1:
                cycle = stack[stack.index(need) :]
                start = min(range(len(cycle)), key=lambda k: index[cycle[k]])
                rotated = cycle[start:] + cycle[:start]
                if rotated not in cycles:
                    cycles.append(rotated)
            elif need not in state:
                visit(need)
        stack.pop()
        state[node] = 2

    for step in definition.steps:
        if step.id not in state:
            visit(step.id)
    return [
        FieldError(
            f"steps[{index[cycle[0]]}].needs",
            "cycle: " + " -> ".join([*cycle, cycle[0]]),
        )
        for cycle in cycles
    ]


def check_step_nodes(
    definition: WorkflowDefinition, catalog: NodeCatalogView, step_ids: Collection[str]
) -> list[FieldError]:
    """Catalog problems of the named steps' nodes only (a graph mutation checks what it adds)."""
    return _check_nodes(definition, catalog, step_ids)


def _check_nodes(
    definition: WorkflowDefinition,
    catalog: NodeCatalogView,
    only: Collection[str] | None = None,
) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, step in enumerate(definition.steps):
        if only is not None and step.id not in only:
            continue
        ref, path = step.ref, f"steps[{i}].node"
        if is_child_run_node(ref.name):
            continue  # run by the scheduler itself: not in the catalog
        if is_meta_node(ref.name):
            # Run by the scheduler, never looked up; a map's inner node is, at its own path.
            inner = map_inner_node(step.params) if ref.name == MAP_NODE else None
            if inner is None:
                continue
            ref, path = parse_node_ref(inner), f"steps[{i}].params.node"
        problem = _node_problem(ref, catalog)
        if problem:
            errors.append(FieldError(path, problem))
    return errors


def _node_problem(ref: NodeRef, catalog: NodeCatalogView) -> str | None:
    versions = list(catalog.versions(ref.name))
    if not versions:
        names = list(catalog.names())
        close = difflib.get_close_matches(ref.name, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names[:20])}"
        return f"unknown node {ref.name!r} ({hint})"
    if ref.constraint.best(versions) is None:
        return (
            f"no version of {ref.name!r} satisfies {ref.constraint.raw!r} "
            f"(available: {', '.join(versions)})"
        )
    return None


def _check_expressions(definition: WorkflowDefinition) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, step in enumerate(definition.steps):
        upstream = definition.upstream(step.id)
        if step.when is not None:
            errors += _check_expression(
                definition, f"steps[{i}].when", step.when, step.id, upstream, secrets="when"
            )
        if is_meta_node(step.node_name):
            errors += _check_meta(definition, i, step, upstream)
            continue
        try:
            params = list(iter_expressions(step.params, f"steps[{i}].params"))
        except ExpressionSyntaxError as exc:
            errors.append(FieldError(f"steps[{i}].params", str(exc)))
            params = []
        for path, expr in params:
            extra = loop_scoped_roots(step.node_name, _params_path(path, f"steps[{i}].params"))
            errors += _check_expression(
                definition, path, expr, step.id, upstream, extra_roots=extra
            )
        if step.cache.enabled and any(secret_name(expr) for _, expr in params):
            errors.append(
                FieldError(
                    f"steps[{i}].cache.enabled",
                    "a step that uses secrets cannot be cached: the cache key holds the "
                    "placeholder, not the value or the grant, so another workflow with the same "
                    "params would be served this one's output (set cache: {enabled: false})",
                )
            )
        if (
            step.cache.enabled
            and step.node_name == "database.query"
            and isinstance(step.params, dict)
            and "connection" in step.params
        ):
            errors.append(
                FieldError(
                    f"steps[{i}].cache.enabled",
                    "a database.query step naming a connection cannot be cached: the cache key "
                    "holds the connection name, not the grant, so another workflow with the same "
                    "params would be served this one's rows (set cache: {enabled: false})",
                )
            )
    try:
        outputs = list(iter_expressions(definition.outputs, "outputs"))
    except ExpressionSyntaxError as exc:
        errors.append(FieldError("outputs", str(exc)))
        outputs = []
    for path, expr in outputs:
        errors += _check_expression(definition, path, expr, None, None, secrets="outputs")
    return errors


def _check_meta(
    definition: WorkflowDefinition, index: int, step: StepDefinition, upstream: frozenset[str]
) -> list[FieldError]:
    """A meta step's params (workflows.meta), with the generic expression check."""

    def check(path: str, expression: str, extra_roots: frozenset[str]) -> list[tuple[str, str]]:
        found = _check_expression(
            definition, path, expression, step.id, upstream, extra_roots=extra_roots
        )
        return [(e.path, e.message) for e in found]

    issues = check_meta_step(
        index,
        step_id=step.id,
        node_name=step.node_name,
        params=step.params,
        step_ids=definition.step_ids,
        needs_of={s.id: s.needs for s in definition.steps},
        check_expression=check,
    )
    return [FieldError(path, message) for path, message in issues]


_SECRETS_FORBIDDEN = {
    "when": "secrets cannot be used in 'when': conditions are evaluated by the scheduler, "
    "which never sees secret values",
    "outputs": "secrets cannot be used in outputs: run outputs are stored in the run log",
}


def _params_path(path: str, prefix: str) -> tuple[str, ...]:
    """``steps[1].params.inputs.x`` -> ("inputs", "x"): where in the params an expression is."""
    rest = path.removeprefix(prefix).lstrip(".")
    return tuple(part for part in rest.replace("[", ".").split(".") if part)


def _secret_problem(expression: str, where: str | None) -> str | None:
    """Secrets are placeholders resolved by the worker, never JMESPath: only ``secrets.NAME``,
    alone in its braces, inside step params."""
    if where is not None:
        return _SECRETS_FORBIDDEN[where]
    if secret_name(expression) is not None:
        return None
    text = expression.strip()
    if text.startswith("secrets.") and not SECRET_NAME.fullmatch(text.removeprefix("secrets.")):
        name = text.removeprefix("secrets.")
        return (
            f"invalid secret name {name!r}: use upper-case letters, digits and _, starting "
            "with a letter (e.g. secrets.API_TOKEN)"
        )
    return (
        "secrets can only be used alone in a template, as '{{ secrets.NAME }}': the worker "
        "substitutes them as text and never evaluates them as JMESPath"
    )


def _check_expression(
    definition: WorkflowDefinition,
    path: str,
    expression: str,
    step_id: str | None,
    upstream: frozenset[str] | None,
    *,
    secrets: str | None = None,
    extra_roots: frozenset[str] = frozenset(),
) -> list[FieldError]:
    """``secrets`` names where secrets are forbidden ("when", "outputs"); None = step params.
    ``extra_roots``: names the context has there besides inputs/steps/run (a meta.loop's
    ``loop``, a map's ``item`` and ``index``)."""
    try:
        compile_expression(expression)
        refs = expression_references(expression)
    except ExpressionSyntaxError as exc:
        return [FieldError(path, str(exc))]
    errors: list[FieldError] = []
    for ref in refs:
        if ref.root in extra_roots:
            problem = None
        elif ref.root == "secrets":
            problem = _secret_problem(expression, secrets)
        else:
            problem = _reference_problem(definition, ref, step_id, upstream)
        if problem and FieldError(path, problem) not in errors:
            errors.append(FieldError(path, problem))
    return errors


def _reference_problem(
    definition: WorkflowDefinition,
    ref: Reference,
    step_id: str | None,
    upstream: frozenset[str] | None,
) -> str | None:
    if ref.root == "inputs":
        if ref.name is None or ref.name in definition.inputs:
            return None
        declared = ", ".join(definition.inputs) or "none"
        return f"unknown input {ref.name!r} (declared: {declared})"
    if ref.root == "steps":
        if ref.name is None:
            return None
        if not definition.has_step(ref.name):
            return f"unknown step {ref.name!r} (known: {', '.join(definition.step_ids)})"
        if ref.name == step_id:
            return f"step {step_id!r} cannot reference its own output or status"
        if upstream is not None and ref.name not in upstream:
            return f"step {ref.name!r} is not upstream of {step_id!r}; add it to needs"
        return None
    if ref.root == "run":
        if ref.name is None or ref.name in RUN_FIELDS:
            return None
        return f"unknown run field {ref.name!r} (known: {', '.join(RUN_FIELDS)})"
    return f"unknown name {ref.root!r}: expressions start with inputs., steps. or run."


# -- entry points -------------------------------------------------------------------------------


def parse_workflow(
    source: str | bytes | Mapping[str, Any], *, node_catalog: NodeCatalogView | None = None
) -> WorkflowDefinition:
    """Parse YAML/JSON text or a mapping into a validated definition.

    Raises :class:`WorkflowValidationError` listing every problem. With ``node_catalog`` the
    nodes must exist in a version that satisfies each step's constraint.
    """
    definition = build_definition(load_source(source))
    errors = check_definition(definition, node_catalog=node_catalog)
    if errors:
        raise WorkflowValidationError(errors)
    return definition


def validate_inputs(definition: WorkflowDefinition, inputs: Any) -> dict[str, Any]:
    """Run inputs checked against the declaration, defaults applied (declared order)."""
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, Mapping):
        raise WorkflowValidationError(
            [FieldError("inputs", f"expected an object, got {json_type_name(inputs)}")],
            subject="inputs",
        )
    errors: list[FieldError] = []
    declared = ", ".join(definition.inputs) or "none"
    for name in inputs:
        if name not in definition.inputs:
            errors.append(
                FieldError(f"inputs.{name}", f"unknown input {name!r} (declared: {declared})")
            )
    result: dict[str, Any] = {}
    for name, spec in definition.inputs.items():
        if name in inputs and inputs[name] is not None:
            problem = type_mismatch(spec.type, inputs[name])
            if problem:
                errors.append(FieldError(f"inputs.{name}", problem))
            result[name] = inputs[name]
        elif spec.default is not None:
            result[name] = json.loads(json.dumps(spec.default))  # a copy: never share defaults
        elif spec.required:
            errors.append(FieldError(f"inputs.{name}", "required input is missing"))
    if errors:
        raise WorkflowValidationError(errors, subject="inputs")
    return result
