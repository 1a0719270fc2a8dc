"""A running run's graph: what ``POST /runs/{id}/mutations`` checks before publishing, and what
``GET /runs/{id}/graph`` shows (docs/decisions/0022-graph-mutation-who-why.md).

The split: the API rejects (422, naming the field) what is wrong whatever the run's state -- a
malformed body, a step that does not parse, a node or version the catalog does not hold, params
the node's input schema refuses. The scheduler stays the authority for what depends on the run's
state (409 with its reason): changing a step that already ran, a dependency on a missing step, a
cycle, removing a step others need, an id that exists (add) or does not (the others). The API's
view of the graph comes from the read model and may be a moment behind; the scheduler's is not.

The graph shown is the projection's ``runs.definition`` (``RunStarted``'s definition rewritten by
each ``GraphMutated``, migration 004) normalised with :func:`workflows.validation.build_definition`,
so it equals what the scheduler's ``fold`` of the run log holds (``RunState.graph``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from api.errors import FieldIssue, RequestInvalidError
from api.models.graph import (
    GraphMutationPublic,
    GraphStepPublic,
    MutationBatchCreate,
    MutationOperation,
    RunGraphPublic,
)
from processors.scheduler.state import RunState
from projections.postgres.queries import RunGraphRow, RunMutationRow, StepRow
from schemas.models import GraphMutation, GraphMutationType
from workflows.model import WorkflowDefinition
from workflows.mutations import apply_mutation
from workflows.node_catalog import NodeCatalogView
from workflows.params_schema import param_issues
from workflows.semver import parse_node_ref
from workflows.validation import WorkflowValidationError, build_definition, check_step_nodes

__all__ = [
    "InputSchemaLookup",
    "StepProgress",
    "check_mutation",
    "check_mutations",
    "current_graph",
    "graph_view",
    "params_issues",
    "progress_of_rows",
    "progress_of_state",
]

InputSchemaLookup = Callable[[str, str], Mapping[str, Any] | None]
"""``(node name, constraint) -> the input JSON Schema`` of the version the catalog would pick,
or ``None`` when the catalog holds none (a built-in that has not registered, an old manifest)."""

_STEP_PATH: Final = re.compile(r"^steps\[(\d+)\]")


def _invalid(issues: list[FieldIssue]) -> RequestInvalidError:
    return RequestInvalidError(issues)


def current_graph(row: RunGraphRow | None) -> WorkflowDefinition | None:
    """The run's current definition from the read model (``None``: not projected with one)."""
    if row is None or row.definition is None:
        return None
    return build_definition(row.definition)


def check_mutation(
    body: MutationOperation,
    graph: WorkflowDefinition | None,
    catalog: NodeCatalogView,
    input_schema: InputSchemaLookup,
) -> GraphMutation:
    """The ``GraphMutation`` to publish; 422 naming ``body.data...`` for what is wrong in itself.

    ``graph`` is the run's current definition (``None``: unknown, then only the body is checked).
    """
    kind = GraphMutationType(body.type)
    mutation = GraphMutation(type=kind, step_id=body.step_id, data=body.data)
    if kind is GraphMutationType.REMOVE_STEP:
        if body.data:
            raise _invalid([FieldIssue("data", "expected {} for remove_step", "value_error")])
        return mutation
    if kind is GraphMutationType.REPLACE_NODE:
        _check_replace_node(body.data, catalog)
    if graph is None:
        return mutation
    try:
        mutated = apply_mutation(graph, mutation)
    except WorkflowValidationError as exc:
        issues = [
            FieldIssue(_data_path(error.path, len(graph.steps)), error.message, "mutation_invalid")
            for error in exc.errors
            # Whether the step exists is the run's state: the scheduler answers that (409).
            if not error.path.startswith("mutation.step_id")
        ]
        if issues:
            raise _invalid(issues) from exc
        return mutation
    step_index = next(i for i, s in enumerate(mutated.steps) if s.id == body.step_id)
    step = mutated.steps[step_index]
    issues = []
    if kind in (GraphMutationType.ADD_STEP, GraphMutationType.REPLACE_NODE):
        for error in check_step_nodes(mutated, catalog, {body.step_id}):
            issues.append(FieldIssue("data.node", error.message, "node_unknown"))
    if not issues and kind is not GraphMutationType.REPLACE_NODE:
        schema = input_schema(step.ref.name, step.ref.constraint.raw)
        if schema is not None:
            prefix = "data.params" if kind is GraphMutationType.ADD_STEP else "data"
            issues += params_issues(schema, step.params, prefix, step.node)
    if issues:
        raise _invalid(issues)
    return mutation


def check_mutations(
    body: MutationBatchCreate,
    graph: WorkflowDefinition | None,
    catalog: NodeCatalogView,
    input_schema: InputSchemaLookup,
) -> list[GraphMutation]:
    """Every operation of an atomic list, as :func:`check_mutation` checks one, each against
    the graph the previous ones leave; one 422 names every refused field
    (``mutations[1].data.params.url``). An operation that cannot be applied to the read
    model's graph (a step that is not there: the run's state, the scheduler's call) leaves the
    rest checked on their bodies only, as when the graph is unknown; one refused only for its
    params is applied, so the operations after it are checked against the graph it makes."""
    mutations: list[GraphMutation] = []
    issues: list[FieldIssue] = []
    for index, operation in enumerate(body.mutations):
        try:
            mutation = check_mutation(operation, graph, catalog, input_schema)
        except RequestInvalidError as exc:
            issues += [
                FieldIssue(f"mutations[{index}].{issue.path}", issue.message, issue.type)
                for issue in exc.issues
            ]
            # Refused, but its shape may still apply (bad params): the next ones see it.
            mutation = GraphMutation(
                type=GraphMutationType(operation.type),
                step_id=operation.step_id,
                data=operation.data,
            )
        mutations.append(mutation)
        if graph is not None:
            try:
                graph = apply_mutation(graph, mutation)
            except WorkflowValidationError:
                graph = None
    if issues:
        raise _invalid(issues)
    return mutations


def _check_replace_node(data: Mapping[str, Any], catalog: NodeCatalogView) -> None:
    node = data.get("node")
    if not isinstance(node, str):
        raise _invalid([FieldIssue("data.node", "expected a node name string", "value_error")])
    version = data.get("node_version")
    if version is not None and not isinstance(version, str):
        raise _invalid(
            [FieldIssue("data.node_version", "expected a version constraint", "value_error")]
        )
    unknown = set(data) - {"node", "node_version"}
    if unknown:
        raise _invalid(
            [
                FieldIssue(f"data.{name}", "not a replace_node field", "extra_forbidden")
                for name in sorted(unknown)
            ]
        )
    text = node if version is None or "@" in node else f"{node}@{version}"
    try:
        parse_node_ref(text)
    except ValueError as exc:
        path = "data.node_version" if version is not None and "@" not in node else "data.node"
        raise _invalid([FieldIssue(path, str(exc), "value_error")]) from exc


def _data_path(path: str, added_index: int) -> str:
    """``steps[N].x`` of the mutated step -> ``data.x``; ``mutation.data.x`` -> ``data.x``."""
    if path.startswith("mutation."):
        return path.removeprefix("mutation.")
    match = _STEP_PATH.match(path)
    if match and int(match.group(1)) == added_index:
        rest = path[match.end() :]
        return "data" + rest
    return path


def params_issues(
    schema: Mapping[str, Any], params: Any, prefix: str, node: str
) -> list[FieldIssue]:
    """What the node's input JSON Schema refuses in ``params``, each named by its path under
    ``prefix`` (``data.params.url``). Real JSON Schema validation (``jsonschema``, the schema's
    draft); templates, which are rendered at dispatch, pass whatever the schema says, and a
    parameter may be given by its Python field name (workflows/params_schema.py)."""
    return [
        FieldIssue(
            _join(prefix, issue.path),
            f"{issue.message} (the input schema of {node})",
            _ISSUE_TYPES.get(issue.keyword, f"param_{issue.keyword}"),
        )
        for issue in param_issues(schema, params)
    ]


_ISSUE_TYPES: Final = {
    "required": "missing_param",
    "additionalProperties": "unknown_param",
    "type": "param_type",
}


def _join(prefix: str, path: tuple[str | int, ...]) -> str:
    out = prefix
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


@dataclass(frozen=True, slots=True)
class StepProgress:
    """Where a step of the graph is: from the projection's row or a replayed ``StepState``."""

    status: str
    attempt: int
    node_version: str | None


def progress_of_rows(steps: list[StepRow]) -> dict[str, StepProgress]:
    return {s.step_id: StepProgress(s.status, s.attempt, s.node_version) for s in steps}


def progress_of_state(state: RunState) -> dict[str, StepProgress]:
    return {
        step_id: StepProgress(str(s.status), s.attempt, s.node_version)
        for step_id, s in state.steps.items()
    }


def graph_view(
    row: RunGraphRow,
    graph: WorkflowDefinition | None,
    progress: Mapping[str, StepProgress],
    mutations: list[RunMutationRow],
) -> RunGraphPublic:
    """``row`` gives the run's status and seq (a replay passes its own: see ``get_graph``)."""
    public_steps: list[GraphStepPublic] = []
    for step in graph.steps if graph is not None else ():
        found = progress.get(step.id)
        public_steps.append(
            GraphStepPublic(
                step_id=step.id,
                node=step.node,
                needs=list(step.needs),
                params=step.params,
                when=step.when,
                status=found.status if found is not None else "pending",
                attempt=found.attempt if found is not None else 0,
                node_version=found.node_version if found is not None else None,
            )
        )
    return RunGraphPublic(
        run_id=row.run_id,
        status=row.status,
        last_seq=row.last_seq,
        definition=graph.to_json_dict() if graph is not None else {},
        steps=public_steps,
        mutations=[
            GraphMutationPublic(
                seq=m.seq,
                type=m.type,  # type: ignore[arg-type]  # the table's CHECK constraint
                step_id=m.step_id,
                data=m.data,
                mutation_id=m.mutation_id,
                command_id=m.command_id,
                requested_by=m.requested_by,
                reason=m.reason,
                at=m.at,
            )
            for m in mutations
        ],
    )
