"""Apply one ``GraphMutation`` to a definition (pure; used by decide to validate, evolve to apply).

Mutation bodies (``GraphMutation.data``):

- ``add_step``: a step as written in a definition (``id`` optional, defaults to ``step_id``); the
  workflow's ``defaults`` are applied to it like to any step.
- ``remove_step``: ``{}``.
- ``update_params``: the step's new ``params`` (replaces them entirely).
- ``replace_node``: ``{"node": "http.request", "node_version": "^2"}`` (or ``{"node":
  "http.request@^2"}``).

This module checks that the result is structurally valid; whether the change is allowed for the
run's current state (e.g. only a pending step may be removed) is the scheduler's decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.models import GraphMutation, GraphMutationType
from workflows.model import WorkflowDefinition
from workflows.validation import (
    FieldError,
    WorkflowValidationError,
    build_definition,
    merge_step_defaults,
)

__all__ = ["apply_mutation"]


def _fail(path: str, message: str) -> WorkflowValidationError:
    return WorkflowValidationError([FieldError(path, message)], subject="graph mutation")


def apply_mutation(definition: WorkflowDefinition, mutation: GraphMutation) -> WorkflowDefinition:
    """The definition after ``mutation``; raises :class:`WorkflowValidationError` if malformed."""
    data = definition.to_json_dict()
    steps: list[dict[str, Any]] = data["steps"]
    step_id = mutation.step_id
    position = next((i for i, s in enumerate(steps) if s["id"] == step_id), None)
    body = mutation.data

    if mutation.type is GraphMutationType.ADD_STEP:
        if position is not None:
            raise _fail("mutation.step_id", f"step {step_id!r} already exists")
        if not isinstance(body, Mapping):
            raise _fail("mutation.data", "expected a step definition object")
        new_step = dict(body)
        new_step.setdefault("id", step_id)
        if new_step["id"] != step_id:
            raise _fail(
                "mutation.data.id",
                f"expected {step_id!r} (the mutation's step_id), got {new_step['id']!r}",
            )
        defaults = definition.defaults.model_dump(mode="json", exclude_none=True)
        steps.append(merge_step_defaults(new_step, defaults))
    else:
        if position is None:
            known = ", ".join(s["id"] for s in steps)
            raise _fail("mutation.step_id", f"unknown step {step_id!r} (known: {known})")
        if mutation.type is GraphMutationType.REMOVE_STEP:
            del steps[position]
        elif mutation.type is GraphMutationType.UPDATE_PARAMS:
            steps[position]["params"] = body
        elif mutation.type is GraphMutationType.REPLACE_NODE:
            steps[position]["node"] = _node_text(body)
    return build_definition(data)


def _node_text(body: Any) -> str:
    if not isinstance(body, Mapping) or not isinstance(body.get("node"), str):
        raise _fail("mutation.data", 'expected {"node": "<name>", "node_version": "<constraint>"}')
    node: str = body["node"]
    version = body.get("node_version")
    if version is None or "@" in node:
        return node
    if not isinstance(version, str):
        raise _fail("mutation.data.node_version", "expected a version constraint string")
    return f"{node}@{version}"
