"""Meta nodes ``meta.map`` and ``meta.switch``: their params models and validation (ADR 0024).

A meta node is a step the scheduler runs itself: it is never looked up in the node catalog and
never dispatched as such. Its ``params`` have a schema (the models below); problems are reported
as :class:`~workflows.validation.FieldError` with the field path (``steps[2].params.items``).

- ``meta.map``: run one node per item of a collection, ``items`` (a ``{{ expression }}`` over
  inputs and upstream outputs, or a literal array). The inner ``params`` are rendered per item
  with ``item`` and ``index`` in the expression context. At most ``concurrency`` items run at
  once; ``on_failure`` is ``fail_fast`` (the first item that fails for good fails the step) or
  ``collect`` (the step succeeds with per-item results and errors). Output::

      {"results": [<output of item 0 or null>, ...], "errors": [{"index": i, "error": {...}}],
       "succeeded": n, "failed": m}

- ``meta.switch``: evaluate ``value``; the steps listed under the matching case (the value's
  text: a string as is, anything else as canonical JSON) run, the steps of the other cases are
  skipped (and so, by the usual skip propagation, everything downstream of them). ``default``
  lists the steps run when no case matches. Every listed step must need the switch step.
  Output: ``{"value": <value>, "case": <matched case or null>, "default": <bool>}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.base import canonical_json
from workflows.expressions import iter_expressions
from workflows.meta_waits import WAIT_NODES, check_wait_step
from workflows.semver import parse_node_ref

__all__ = [
    "MAP_NODE",
    "MAX_MAP_CONCURRENCY",
    "META_NODES",
    "SWITCH_NODE",
    "MapParams",
    "SwitchParams",
    "case_key",
    "is_meta_node",
    "map_form_issues",
    "map_inner_node",
    "map_params",
    "switch_params",
]

MAP_NODE: Final = "meta.map"
SWITCH_NODE: Final = "meta.switch"
META_NODES: Final = frozenset({MAP_NODE, SWITCH_NODE}) | WAIT_NODES
"""Map, switch, and the waits ``meta.wait`` / ``meta.signal`` (workflows/meta_waits.py)."""
MAX_MAP_CONCURRENCY: Final = 1_000
MAP_ITEM_ROOTS: Final = frozenset({"item", "index"})
"""Names a map's inner params may use besides inputs/steps/run."""


def is_meta_node(node_name: str) -> bool:
    """Map, switch and the waits; ``meta.`` is the namespace of every scheduler-run node."""
    return node_name in META_NODES


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MapParams(_Frozen):
    items: Any
    """A ``{{ expression }}`` giving an array (or a literal array)."""
    node: str | None = None
    """The node run per item, ``name@constraint`` (not a meta node). Exactly one of ``node``
    and ``workflow``."""
    params: Any = None
    """Params of the node, rendered per item; ``item`` and ``index`` are in the context."""
    workflow: str | None = Field(default=None, min_length=1)
    """A registered workflow run per item as a child run (ADR 0024 addendum): the map's items
    are sub-graphs, each with its own run log."""
    version: int | None = Field(default=None, ge=1)
    """The child workflow's version (None: the latest when the map starts, then pinned)."""
    inputs: Any = None
    """The child run's inputs, rendered per item (``item``, ``index`` in the context)."""
    concurrency: int = Field(default=16, ge=1, le=MAX_MAP_CONCURRENCY)
    """Items running at the same time at most (across workers; child runs in flight)."""
    on_failure: Literal["fail_fast", "collect"] = "fail_fast"
    chunk_size: int | None = Field(default=None, ge=1, le=2_000)
    """Items per chunk invocation; by default derived from ``concurrency`` (node form only)."""

    @field_validator("node")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        if value is None:
            return None
        ref = parse_node_ref(value)
        if ref.name.startswith("meta."):
            raise ValueError(f"a map runs a node, not the meta node {ref.name!r}")
        return str(ref)

    @property
    def over_workflow(self) -> bool:
        return self.workflow is not None

    @property
    def node_params(self) -> Any:
        """The node form's per-item params template (``{}`` when absent)."""
        return {} if self.params is None else self.params

    @property
    def child_inputs(self) -> Any:
        """The workflow form's per-item inputs template (``{}`` when absent)."""
        return {} if self.inputs is None else self.inputs


_NODE_ONLY: Final = ("params", "chunk_size")
_WORKFLOW_ONLY: Final = ("version", "inputs")


def map_form_issues(params: MapParams) -> list[tuple[str, str]]:
    """``(field, message)`` for a map that names both or neither of ``node`` / ``workflow``, or
    mixes the two forms' fields."""
    if params.node is None and params.workflow is None:
        return [("node", "exactly one of 'node' (a node per item) or 'workflow' is required")]
    if params.node is not None and params.workflow is not None:
        return [("workflow", "exactly one of 'node' and 'workflow' may be given, not both")]
    issues: list[tuple[str, str]] = []
    if params.workflow is not None:
        for name in _NODE_ONLY:
            if getattr(params, name) is not None:
                issues.append((name, f"{name!r} is for a map over a node; use 'inputs'"))
        if params.inputs is not None and not isinstance(params.inputs, Mapping | str):
            issues.append(("inputs", "expected an object of the child workflow's inputs"))
    else:
        for name in _WORKFLOW_ONLY:
            if getattr(params, name) is not None:
                issues.append((name, f"{name!r} is for a map over a workflow"))
    return issues


class SwitchParams(_Frozen):
    value: Any
    """A ``{{ expression }}`` (or a literal) whose text picks the case."""
    cases: dict[str, tuple[str, ...]] = Field(min_length=1)
    """Case -> the step ids run when the value matches it."""
    default: tuple[str, ...] = ()
    """Step ids run when no case matches (none: every listed step is skipped)."""


def map_params(params: Any) -> MapParams:
    return MapParams.model_validate(params)


def map_inner_node(params: Any) -> str | None:
    """The node a map runs per item, if its params name one that parses (else None: the
    params check reports it)."""
    try:
        return map_params(params).node
    except (ValidationError, TypeError):
        return None


def switch_params(params: Any) -> SwitchParams:
    return SwitchParams.model_validate(params)


def case_key(value: Any) -> str:
    """The case a switch value selects: a string as is, anything else as canonical JSON
    (``1`` -> ``"1"``, ``true`` -> ``"true"``, ``null`` -> ``"null"``)."""
    return value if isinstance(value, str) else canonical_json(value)


# -- validation (called by workflows.validation.check_definition) ---------------------------------

Issue = tuple[str, str]
"""(path, message); workflows.validation turns them into FieldError."""

ExpressionCheck = Callable[[str, str, frozenset[str]], list[Issue]]
"""``(path, expression, extra roots) -> issues``: the generic expression check."""


def _pydantic_issues(exc: ValidationError, prefix: str) -> list[Issue]:
    issues: list[Issue] = []
    for err in exc.errors(include_url=False):
        path = prefix
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field {err['loc'][-1]!r}"
        elif err["type"] == "missing":
            message = "required field is missing"
        issues.append((path, message))
    return issues


def _iter_templates(value: Any, path: str) -> list[tuple[str, str]]:
    return list(iter_expressions(value, path))


def check_meta_step(
    index: int,
    *,
    step_id: str,
    node_name: str,
    params: Any,
    step_ids: list[str],
    needs_of: Mapping[str, tuple[str, ...]],
    check_expression: ExpressionCheck,
) -> list[Issue]:
    """Problems of a meta step's params; paths start at ``steps[index].params``."""
    prefix = f"steps[{index}].params"
    if not isinstance(params, Mapping):
        return [(prefix, f"expected an object for {node_name}'s params")]
    if node_name == MAP_NODE:
        return _check_map(prefix, params, check_expression)
    if node_name in WAIT_NODES:
        issues = check_wait_step(prefix, node_name, params, _pydantic_issues)
        for path, expr in _iter_templates(dict(params), prefix):
            issues += check_expression(path, expr, frozenset())
        return issues
    return _check_switch(
        prefix,
        step_id=step_id,
        params=params,
        step_ids=step_ids,
        needs_of=needs_of,
        check=check_expression,
    )


def _check_map(prefix: str, params: Mapping[str, Any], check: ExpressionCheck) -> list[Issue]:
    try:
        parsed = map_params(params)
    except ValidationError as exc:
        return _pydantic_issues(exc, prefix)
    issues: list[Issue] = [(f"{prefix}.{field}", msg) for field, msg in map_form_issues(parsed)]
    if issues:
        return issues
    items = parsed.items
    if isinstance(items, str):
        exprs = _iter_templates(items, f"{prefix}.items")
        if not exprs:
            issues.append((f"{prefix}.items", "expected a '{{ expression }}' giving an array"))
        for path, expr in exprs:
            issues += check(path, expr, frozenset())
    elif not isinstance(items, list | tuple):
        issues.append((f"{prefix}.items", "expected a '{{ expression }}' or an array"))
    for path, expr in _iter_templates(parsed.params, f"{prefix}.params"):
        issues += check(path, expr, MAP_ITEM_ROOTS)
    for path, expr in _iter_templates(parsed.inputs, f"{prefix}.inputs"):
        issues += check(path, expr, MAP_ITEM_ROOTS)
    return issues


def _check_switch(
    prefix: str,
    *,
    step_id: str,
    params: Mapping[str, Any],
    step_ids: list[str],
    needs_of: Mapping[str, tuple[str, ...]],
    check: ExpressionCheck,
) -> list[Issue]:
    try:
        parsed = switch_params(params)
    except ValidationError as exc:
        return _pydantic_issues(exc, prefix)
    issues: list[Issue] = []
    for path, expr in _iter_templates(parsed.value, f"{prefix}.value"):
        issues += check(path, expr, frozenset())
    branches: list[tuple[str, tuple[str, ...]]] = [
        (f"{prefix}.cases.{case}", ids) for case, ids in parsed.cases.items()
    ]
    branches.append((f"{prefix}.default", parsed.default))
    known = ", ".join(step_ids)
    for path, ids in branches:
        for j, target in enumerate(ids):
            where = f"{path}[{j}]"
            if target == step_id:
                issues.append((where, f"switch {step_id!r} cannot choose itself"))
            elif target not in needs_of:
                issues.append((where, f"unknown step {target!r} (known: {known})"))
            elif step_id not in needs_of[target]:
                issues.append(
                    (
                        where,
                        f"step {target!r} must list {step_id!r} in its needs to be chosen by it",
                    )
                )
    return issues
