"""``ai.meta``: an LLM plans a sub-graph for a goal; the scheduler validates and splices it.

Pure (no I/O): ``decide`` and ``evolve`` call the small hooks below (ADR 0027).

Lifecycle of an ``ai.meta`` step ``M``:

1. ``_schedule`` renders M's params and :func:`invocation_params` adds what only the scheduler
   knows: ``catalog`` (the allowed catalog nodes with their params' JSON schemas, for the
   prompt) and, when the previous attempt's plan was rejected, ``feedback`` (its validation
   errors and the rejected plan), so the LLM can correct itself.
2. The ``ai.meta`` worker asks the LLM and returns ``{"plan": <parsed JSON or null>, ...}``.
3. On that result :func:`check_plan` validates the plan *as part of the run's graph* with
   :func:`~workflows.validation.check_definition` and the node catalog, exactly what a
   definition or a graph mutation goes through. Errors carry paths into the plan
   (``plan.steps[1].node``).

   - invalid: the attempt fails with the retryable error class ``InvalidPlan`` (message: the
     errors, one per line, and the rejected plan), so the step's retry policy retries it with
     the feedback; after its last attempt the step (and the run) fail with that error;
   - valid: one ``GraphMutated`` ``add_step`` per planned step. Ids are namespaced
     ``<M>__<id>`` (and so are ``needs`` and ``steps.<id>`` references in templates); steps
     without needs get M's own needs, so they start at once and may read M's upstream outputs.

4. M stays ``running`` while its sub-graph runs (adding the first planned step drops M's timers
   and forgets its invocation: :func:`on_step_added`, called by ``evolve``). When every planned
   step is done, :func:`settle` completes M with ``StepSucceeded``: its output is the output of
   the planned step named by the param ``output_step``, else ``{leaf id: output}`` of the
   plan's leaves. Steps that need M therefore wait for the plan's work.

The sub-graph of M is derived from the graph alone (steps whose id starts with ``M__``), so
replaying the log rebuilds it without any extra state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from processors.scheduler.state import StepState
from schemas.models import ErrorInfo, GraphMutation, GraphMutationType
from schemas.statuses import (
    ACTIVE_STEP_STATUSES,
    DONE_STEP_STATUSES,
    FAILED_STEP_STATUSES,
    StepStatus,
)
from workflows.model import StepDefinition, WorkflowDefinition
from workflows.mutations import apply_mutation
from workflows.node_catalog import NodeCatalogView
from workflows.semver import VersionConstraint
from workflows.validation import FieldError, WorkflowValidationError, check_definition

__all__ = [
    "AI_META_NODE",
    "INVALID_PLAN",
    "SEPARATOR",
    "SUBGRAPH_FAILED",
    "Completion",
    "ManifestView",
    "PlanCheck",
    "catalog_for_prompt",
    "check_plan",
    "feedback_from",
    "has_ai_meta",
    "invalid_plan_error",
    "invocation_params",
    "is_ai_meta",
    "namespaced",
    "on_step_added",
    "owner_of",
    "settle",
    "subgraph_ids",
]

AI_META_NODE = "ai.meta"
SEPARATOR = "__"
"""Planned step ``x`` of meta step ``m`` becomes ``m__x`` in the run's graph."""
INVALID_PLAN = "InvalidPlan"
SUBGRAPH_FAILED = "SubgraphFailed"
DEFAULT_MAX_STEPS = 20
_PLAN_EXCERPT = 2_000
"""Characters of a rejected plan kept in the error (and shown to the LLM on the retry)."""
_FORBIDDEN_IN_PLANS = frozenset({AI_META_NODE})
"""A plan may not plan again (unbounded recursion); the meta.* nodes are scheduler-run."""


@runtime_checkable
class ManifestView(Protocol):
    """A catalog that can also give a node version's manifest (input schema, description)."""

    def manifest(self, name: str, version: str) -> Mapping[str, Any] | None: ...


# -- recognising ai.meta steps and their sub-graphs ----------------------------------------------


def is_ai_meta(definition: StepDefinition) -> bool:
    return definition.node_name == AI_META_NODE


def has_ai_meta(graph: WorkflowDefinition) -> bool:
    """Cheap (a string prefix per step): ``decide`` asks it on every advance of every run."""
    prefix = AI_META_NODE + "@"
    return any(step.node.startswith(prefix) for step in graph.steps)


def namespaced(meta_id: str, local_id: str) -> str:
    return f"{meta_id}{SEPARATOR}{local_id}"


def subgraph_ids(graph: WorkflowDefinition, meta_id: str) -> list[str]:
    """The planned steps spliced for ``meta_id`` (graph order); empty before a plan is accepted."""
    if not graph.has_step(meta_id) or not is_ai_meta(graph.step(meta_id)):
        return []
    prefix = meta_id + SEPARATOR
    return [sid for sid in graph.step_ids if sid.startswith(prefix)]


def owner_of(graph: WorkflowDefinition, step_id: str) -> str | None:
    """The ai.meta step whose plan ``step_id`` belongs to, if any (the longest matching prefix).

    Only the prefixes before each ``__`` of the id are looked up: evolve asks this for every
    added step, so it must not scan the graph."""
    owner: str | None = None
    at = step_id.find(SEPARATOR)
    while at != -1:
        candidate = step_id[:at]
        if candidate and graph.has_step(candidate) and is_ai_meta(graph.step(candidate)):
            owner = candidate
        at = step_id.find(SEPARATOR, at + 1)
    return owner


# -- the invocation: catalog and feedback ---------------------------------------------------------


# "x-reflux-field-name": workflows.params_schema.FIELD_NAME_KEY, spelled out so the pure core
# does not import jsonschema for a constant.
_NOT_FOR_PROMPTS: Final = frozenset({"title", "x-reflux-field-name"})


def _strip_titles(schema: Any) -> Any:
    """JSON schema without pydantic's ``title`` noise (fewer tokens, same meaning), nor the
    manifest's Python field names of aliased params (the plan uses the documented alias)."""
    if isinstance(schema, Mapping):
        return {k: _strip_titles(v) for k, v in schema.items() if k not in _NOT_FOR_PROMPTS}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def _allowed(name: str, allowed: Sequence[str] | None) -> bool:
    if name in _FORBIDDEN_IN_PLANS or name.startswith("meta."):
        return False
    return allowed is None or name in allowed


def catalog_for_prompt(
    catalog: NodeCatalogView | None, allowed: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The nodes a plan may use: ``{node: "name@^major", version, description, params_schema}``
    for the highest version of each allowed catalog node (schemas when the catalog has them)."""
    if catalog is None:
        return [{"node": name} for name in allowed or () if _allowed(name, None)]
    out: list[dict[str, Any]] = []
    for name in catalog.names():
        if not _allowed(name, allowed):
            continue
        best = VersionConstraint.parse("*").best(list(catalog.versions(name)))
        if best is None:
            continue
        entry: dict[str, Any] = {"node": f"{name}@^{best.split('.')[0]}", "version": best}
        manifest = catalog.manifest(name, best) if isinstance(catalog, ManifestView) else None
        if manifest:
            entry["description"] = str(manifest.get("description") or "")
            entry["params_schema"] = _strip_titles(manifest.get("input_schema"))
        out.append(entry)
    return out


def feedback_from(error: ErrorInfo | None, attempt: int) -> dict[str, Any] | None:
    """What the next attempt tells the LLM about the rejected plan of ``attempt`` (or None)."""
    if error is None or error.error_class != INVALID_PLAN:
        return None
    errors: list[str] = []
    plan: str | None = None
    for line in error.message.splitlines():
        if line.startswith("- "):
            errors.append(line[2:])
        elif line.startswith("rejected plan: "):
            plan = line.removeprefix("rejected plan: ")
    return {"attempt": attempt, "errors": errors, "plan": plan}


def invocation_params(
    params: Any,
    *,
    attempt: int,
    previous_error: ErrorInfo | None,
    catalog: NodeCatalogView | None,
) -> Any:
    """M's rendered params plus ``catalog`` and, after a rejected plan, ``feedback``."""
    if not isinstance(params, Mapping):
        return params  # the worker's params validation reports it
    allowed = params.get("nodes")
    names = [n for n in allowed if isinstance(n, str)] if isinstance(allowed, list) else None
    out = {k: v for k, v in params.items() if k not in ("catalog", "feedback")}
    out["catalog"] = catalog_for_prompt(catalog, names)
    feedback = feedback_from(previous_error, attempt - 1) if attempt > 1 else None
    if feedback is not None:
        out["feedback"] = feedback
    return out


# -- validating a plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanCheck:
    mutations: list[GraphMutation] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


_STEP_REF = re.compile(r"(?<![A-Za-z0-9_.])steps\.([a-z_][a-z0-9_]*)")


_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)


def _rename_expression(text: str, renames: Mapping[str, str]) -> str:
    return _STEP_REF.sub(lambda m: f"steps.{renames.get(m.group(1), m.group(1))}", text)


def _rename_templates(value: Any, renames: Mapping[str, str]) -> Any:
    """``steps.<local>`` -> ``steps.<M>__<local>`` inside ``{{ }}`` only: literal text that
    happens to say "steps.x" (an e-mail body) is data, not a reference."""
    if isinstance(value, str):
        return _TEMPLATE.sub(lambda m: _rename_expression(m.group(0), renames), value)
    if isinstance(value, Mapping):
        return {k: _rename_templates(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_templates(v, renames) for v in value]
    return value


def _renamed_step(step: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    body = dict(step)
    if "params" in body:
        body["params"] = _rename_templates(body["params"], renames)
    if isinstance(body.get("when"), str):  # a bare expression, no braces
        body["when"] = _rename_expression(body["when"], renames)
    return body


def _unspace(text: str, meta_id: str) -> str:
    return text.replace(meta_id + SEPARATOR, "")


_STEP_PATH = re.compile(r"^steps\[(\d+)\]")


def _plan_error(error: FieldError, meta_id: str, first: int) -> FieldError:
    """An error on the merged graph, in the plan's own terms (``plan.steps[k]``, local ids)."""
    path = error.path
    found = _STEP_PATH.match(path)
    if found and int(found.group(1)) >= first:
        path = f"plan.steps[{int(found.group(1)) - first}]" + path[found.end() :]
    return FieldError(path, _unspace(error.message, meta_id))


def _node_name(node: Any) -> str | None:
    return node.split("@", 1)[0].strip() if isinstance(node, str) else None


def check_plan(
    graph: WorkflowDefinition,
    meta_id: str,
    output: Any,
    *,
    params: Any,
    catalog: NodeCatalogView | None,
) -> PlanCheck:
    """Validate the worker's ``output`` (``{"plan": {...}}``) for meta step ``meta_id``.

    ``params``: M's rendered params (``nodes``, ``max_steps``, ``output_step``). Returns the
    ``add_step`` mutations that splice the plan, or the errors (paths into the plan).
    """
    opts = params if isinstance(params, Mapping) else {}
    plan = output.get("plan") if isinstance(output, Mapping) else None
    if not isinstance(plan, Mapping):
        got = "nothing" if plan is None else type(plan).__name__
        hint = ""
        if isinstance(output, Mapping) and output.get("parse_error"):
            hint = f" ({output['parse_error']})"
        message = f'expected a JSON object {{"steps": [...]}}, got {got}{hint}'
        return PlanCheck(errors=[FieldError("plan", message)])
    spliced = subgraph_ids(graph, meta_id)
    if spliced:  # a re-drive of a meta step whose plan already runs: redo its failed steps
        names = ", ".join(s.removeprefix(meta_id + SEPARATOR) for s in spliced)
        message = f"step {meta_id!r} already spliced a plan ({names}); re-drive its steps instead"
        return PlanCheck(errors=[FieldError("plan", message)])
    errors = _shape_errors(plan, opts)
    if errors:
        return PlanCheck(errors=errors)
    return _splice(graph, meta_id, plan["steps"], catalog)


def _shape_errors(plan: Mapping[str, Any], opts: Mapping[str, Any]) -> list[FieldError]:
    """What can be said of the plan on its own: fields, ids, allowed nodes, needs' shape."""
    errors: list[FieldError] = []
    unknown = sorted(set(plan) - {"steps"})
    if unknown:
        errors.append(FieldError("plan", f"unknown field(s) {unknown} (allowed: steps)"))
    steps = plan.get("steps")
    if not isinstance(steps, list) or not steps:
        return [*errors, FieldError("plan.steps", "expected a non-empty list of steps")]
    max_steps = opts.get("max_steps", DEFAULT_MAX_STEPS)
    if isinstance(max_steps, int) and len(steps) > max_steps:
        message = f"{len(steps)} steps, but max_steps is {max_steps}"
        errors.append(FieldError("plan.steps", message))
    nodes = opts.get("nodes")
    allowed = [n for n in nodes if isinstance(n, str)] if isinstance(nodes, list) else None
    local_ids: list[str] = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            errors.append(FieldError(f"plan.steps[{i}]", "expected a step object"))
            continue
        sid = step.get("id")
        if not isinstance(sid, str) or not sid:
            errors.append(FieldError(f"plan.steps[{i}].id", "required: a step id string"))
        else:
            local_ids.append(sid)
        name = _node_name(step.get("node"))
        if name is not None and not _allowed(name, allowed):
            which = (
                "an ai.meta plan cannot plan again"
                if name in _FORBIDDEN_IN_PLANS
                else f"allowed: {', '.join(allowed or [])}"
            )
            message = f"node {name!r} is not allowed ({which})"
            errors.append(FieldError(f"plan.steps[{i}].node", message))
        needs = step.get("needs", [])
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            errors.append(FieldError(f"plan.steps[{i}].needs", "expected a list of step ids"))
    output_step = opts.get("output_step")
    if isinstance(output_step, str) and output_step not in local_ids:
        message = (
            f"no step has id {output_step!r}: the step's output_step names the planned step "
            "whose output is the result"
        )
        errors.append(FieldError("plan.steps", message))
    return errors


def _splice(
    graph: WorkflowDefinition,
    meta_id: str,
    steps: list[Mapping[str, Any]],
    catalog: NodeCatalogView | None,
) -> PlanCheck:
    """Splice on a copy of the graph, one add_step at a time (exactly what evolve will fold),
    then check the whole graph like any definition; only errors the plan brought count."""
    local_ids = [str(step["id"]) for step in steps]
    meta_needs = list(graph.step(meta_id).needs)
    renames = {sid: namespaced(meta_id, sid) for sid in local_ids}
    first = len(graph.steps)
    errors: list[FieldError] = []
    mutations: list[GraphMutation] = []
    merged = graph
    for i, step in enumerate(steps):
        body = _renamed_step(step, renames)
        body["id"] = renames[step["id"]]
        needs: list[str] = list(step.get("needs", []))
        for j, need in enumerate(needs):
            if need not in renames:
                message = f"unknown plan step {need!r} (plan steps: {', '.join(local_ids)})"
                errors.append(FieldError(f"plan.steps[{i}].needs[{j}]", message))
        own = [renames.get(n, n) for n in needs]
        body["needs"] = own if own else meta_needs  # a root starts when M could
        mutation = GraphMutation(type=GraphMutationType.ADD_STEP, step_id=body["id"], data=body)
        try:
            merged = apply_mutation(merged, mutation)
        except WorkflowValidationError as exc:
            errors += [_mutation_error(err, meta_id, first, i) for err in exc.errors]
            continue
        mutations.append(mutation)
    if errors:
        return PlanCheck(errors=_dedupe(errors))
    before = {str(e) for e in check_definition(graph, node_catalog=catalog)}
    new = [e for e in check_definition(merged, node_catalog=catalog) if str(e) not in before]
    if new:
        return PlanCheck(errors=_dedupe([_plan_error(e, meta_id, first) for e in new]))
    return PlanCheck(mutations=mutations)


def _mutation_error(error: FieldError, meta_id: str, first: int, index: int) -> FieldError:
    if error.path == "mutation.step_id":
        return FieldError(f"plan.steps[{index}].id", _unspace(error.message, meta_id))
    if error.path.startswith("mutation.data"):
        path = f"plan.steps[{index}]" + error.path.removeprefix("mutation.data")
        return FieldError(path, _unspace(error.message, meta_id))
    return _plan_error(error, meta_id, first)


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    seen: list[FieldError] = []
    for error in errors:
        if error not in seen:
            seen.append(error)
    return seen


def invalid_plan_error(errors: Sequence[FieldError], output: Any, attempt: int) -> ErrorInfo:
    """The retryable ``InvalidPlan`` failure of an attempt: errors one per line (what the next
    attempt's ``feedback`` reads back), then the rejected plan, cut to a bounded excerpt."""
    plan = output.get("plan") if isinstance(output, Mapping) else None
    if plan is None and isinstance(output, Mapping):
        plan = output.get("content")
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > _PLAN_EXCERPT:
        text = text[:_PLAN_EXCERPT] + "..."
    lines = [f"the plan of attempt {attempt} was rejected ({len(errors)} error(s)):"]
    lines += [f"- {error}" for error in errors]
    lines.append(f"rejected plan: {text}")
    return ErrorInfo(error_class=INVALID_PLAN, message="\n".join(lines), retryable=True)


# -- evolve's hook and the completion --------------------------------------------------------------


def on_step_added(graph: WorkflowDefinition, step_id: str) -> str | None:
    """The meta step whose attempt ends as a planner when ``step_id`` is spliced in (evolve
    then drops its timers and forgets its invocation: the LLM answered, the sub-graph runs)."""
    return owner_of(graph, step_id)


@dataclass(frozen=True)
class Completion:
    """What :func:`settle` asks ``decide`` to write for one meta step."""

    meta_id: str
    succeeded: bool
    output: Any = None
    output_from: str | None = None
    """The planned step whose output (or claim-checked ``output_ref``) becomes M's output."""
    error: ErrorInfo | None = None


def settle(
    graph: WorkflowDefinition,
    steps: Mapping[str, StepState],
    meta_params: Mapping[str, Any],
) -> list[Completion]:
    """Meta steps whose sub-graph is finished: succeeded (all done) or failed (a planned step
    failed for good and nothing of the plan still runs). ``meta_params``: each meta step's
    rendered params (for ``output_step``)."""
    out: list[Completion] = []
    for meta_id in graph.step_ids:
        meta = steps.get(meta_id)
        if meta is None or not is_ai_meta(graph.step(meta_id)):
            continue
        subs = subgraph_ids(graph, meta_id)
        if not subs:
            continue
        statuses = [steps[s].status for s in subs if s in steps]
        waiting = meta.status is StepStatus.RUNNING or (
            meta.status in FAILED_STEP_STATUSES
            and meta.error is not None
            and meta.error.error_class == SUBGRAPH_FAILED
        )
        if not waiting:
            continue
        if all(s in DONE_STEP_STATUSES for s in statuses):
            params = meta_params.get(meta_id)
            output_step = params.get("output_step") if isinstance(params, Mapping) else None
            if isinstance(output_step, str):
                out.append(Completion(meta_id, True, output_from=namespaced(meta_id, output_step)))
                continue
            needed = {n for s in subs for n in graph.step(s).needs}
            leaves = [s for s in subs if s not in needed]
            output = {_unspace(s, meta_id): steps[s].output for s in leaves}
            out.append(Completion(meta_id, True, output=output))
        elif (
            meta.status is StepStatus.RUNNING
            and any(s in FAILED_STEP_STATUSES for s in statuses)
            and not any(s in ACTIVE_STEP_STATUSES for s in statuses)
        ):
            failed = next(s for s in subs if steps[s].status in FAILED_STEP_STATUSES)
            out.append(
                Completion(
                    meta_id,
                    False,
                    error=ErrorInfo(
                        error_class=SUBGRAPH_FAILED,
                        message=f"planned step {failed!r} of {meta_id!r} failed",
                        retryable=False,
                    ),
                )
            )
    return out
